//! importlyd: a daemon that feeds media URLs from a SQLite queue to the Importly API.
//! See ARCHITECTURE.md for the map of modules and how a row flows through them.

pub mod admin;
pub mod apikey;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod estimate;
pub mod guard;
pub mod health;
pub mod importly;
pub mod limits;
pub mod scheduler;
pub mod service;
pub mod sim;
pub mod store;
pub mod wakeup;
pub mod webhook;
