//! `importlyd` commands: argument parsing, exit codes and output. Each command is a thin
//! layer over the store (operator commands) or the scheduler (`run`).

mod demo;
mod enqueue;
mod logging;
mod report;
mod run;
mod systemd;
mod ticket;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};
use crate::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "importlyd",
    version,
    about = "Feeds media URLs from a SQLite queue to the Importly API"
)]
pub struct Cli {
    /// TOML config file; every key has a default.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT (SIGHUP reloads).
    Run,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Queue URLs: as arguments, or from a file (one URL a line, or CSV url,options,external_id).
    Enqueue {
        urls: Vec<String>,
        /// JSON object merged into each request body (arguments only).
        #[arg(long)]
        options: Option<String>,
        /// `import` (default) or `metadata`.
        #[arg(long)]
        kind: Option<String>,
        /// Read rows from this file, or `-` for standard input.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Counts per state, budgets, pauses, oldest pending row, last error.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List rows.
    List {
        #[arg(long)]
        state: Option<String>,
        /// Only rows changed within this long (e.g. 24h, 7d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Everything known about one row.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Delete old finished rows and their logs.
    Purge {
        /// Only completed rows (the default deletes failed and cancelled ones too).
        #[arg(long)]
        completed: bool,
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
    },
    /// A support ticket for a row (or one file per failed row with --failed --dir).
    Ticket {
        id: Option<i64>,
        #[arg(long, value_enum, default_value_t = TicketFormat::Text)]
        format: TicketFormat,
        /// Every failed row.
        #[arg(long)]
        failed: bool,
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Where --failed writes its tickets.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Failed rows back to pending with a fresh attempt count.
    Retry {
        ids: Vec<i64>,
        #[arg(long)]
        failed: bool,
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
    },
    /// Cancel pending rows.
    Cancel {
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Lift a 401/402 pause now instead of waiting for the next probe.
    Resume,
    /// Start the simulator on loopback, queue sample rows, run until done, print a summary.
    Demo {
        /// How many sample rows.
        #[arg(long, default_value_t = 30)]
        rows: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TicketFormat {
    Text,
    Markdown,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30s, 24h, 30d)"))
}

/// An error with its exit status: 2 for usage and configuration, 1 for the rest.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        let code = if e.is::<ConfigError>() || e.is::<crate::apikey::KeyError>() {
            2
        } else {
            1
        };
        Failure {
            code,
            message: format!("{e:#}"),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Failure {
        Failure::usage(e.to_string())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Failure {
        let code = match &e {
            crate::store::StoreError::Invalid(_) => 2,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

pub type CmdResult = Result<(), Failure>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the scheduler is one task and its HTTP calls are I/O, so a second worker
    // only adds cross-thread wake-ups (measured: 15% more CPU per row). SQLite's own worker
    // threads (sqlx) still do the disk work beside it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("importlyd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("importlyd: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cli: Cli) -> CmdResult {
    let cfg_path = cli.config.clone();
    if let Command::Demo { rows } = cli.command {
        return demo::demo(rows).await;
    }
    let cfg = Config::load(cfg_path.as_deref())?;
    match cli.command {
        Command::Run => run::run(cfg, cfg_path).await,
        Command::Migrate => {
            let store = open(&cfg).await?;
            store.close().await;
            println!("schema of {} is up to date", cfg.database.path.display());
            Ok(())
        }
        Command::Enqueue {
            urls,
            options,
            kind,
            file,
        } => enqueue::enqueue(&open(&cfg).await?, urls, options, kind, file).await,
        Command::Status { json } => report::status(&open(&cfg).await?, &cfg, json).await,
        Command::List {
            state,
            since,
            limit,
            json,
        } => report::list(&open(&cfg).await?, state, since.map(ago), limit, json).await,
        Command::Show { id, json } => report::show(&open(&cfg).await?, id, json).await,
        Command::Purge {
            completed,
            older_than,
        } => report::purge(&open(&cfg).await?, completed, ago(older_than)).await,
        Command::Ticket {
            id,
            format,
            failed,
            since,
            dir,
        } => {
            let store = open(&cfg).await?;
            ticket::command(&store, &cfg, id, format, failed, since.map(ago), dir).await
        }
        Command::Retry { ids, failed, since } => {
            report::retry(&open(&cfg).await?, ids, failed, since.map(ago)).await
        }
        Command::Cancel { ids } => report::cancel(&open(&cfg).await?, ids).await,
        Command::Resume => report::resume(&open(&cfg).await?).await,
        Command::Demo { .. } => Ok(()),
    }
}

/// Opens the database, creating and migrating it if needed, so every command works on a
/// fresh path (inserting never needs the daemon).
async fn open(cfg: &Config) -> Result<Store, Failure> {
    Ok(Store::open(&cfg.database.path).await?)
}

/// The ISO time `d` ago.
fn ago(d: Duration) -> String {
    crate::clock::iso(
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}
