//! The dashboard's routes (`GET /` and its assets). A stub: the dashboard is built on top of
//! the API in `super::api` and replaces this module. Its routes sit behind the same
//! authentication as the API (see `super::auth`).

use axum::Router;

use super::AdminState;

pub fn router() -> Router<AdminState> {
    Router::new()
}
