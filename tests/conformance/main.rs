//! The store's conformance suite: every test here runs against both implementations of
//! the store interface, SQLite (a file in a temp dir) and PostgreSQL (a fresh database on
//! the test support's private cluster, or on `IMPORTLYD_TEST_DATABASE_URL`), the way
//! River's driver test suite runs one set of tests against each driver.
//!
//! A test is an `async fn(Backend)` in one of the modules below, listed in that module's
//! `conformance!` invocation, which makes `<module>::<test>::sqlite` and
//! `<module>::<test>::postgres`; a test of what only PostgreSQL has (several daemons,
//! owners, leases, the shared budget) is listed in `conformance_pg!` instead, which makes
//! only `<module>::<test>::postgres`, so no SQLite test passes without checking anything. A test may only use the store interface and
//! [`Backend::exec`]/[`Backend::scalar`] with SQL both databases accept (no placeholders;
//! times as ISO-8601 literals, which PostgreSQL reads as `timestamptz`).

#[path = "../common/mod.rs"]
mod common;

mod cluster;
mod daemons;
mod limits;
mod metadata;
mod ops;
mod queue;

use std::time::Duration;

use importlyd::config::DatabaseConfig;
use importlyd::store::{DaemonInfo, Store};
use sqlx::Row as _;

/// The store under test, opened and migrated, plus a second connection for raw SQL.
pub struct Backend {
    pub store: Store,
    pub name: &'static str,
    pub db: DatabaseConfig,
    raw: Raw,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database, dropped (last: after the pools) with the backend.
    _pg: Option<common::pg::TestDb>,
}

enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// The lease conformance tests register their daemons with.
pub const LEASE: Duration = Duration::from_secs(30);

impl Backend {
    pub async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let db = DatabaseConfig::sqlite(&path);
        let store = Store::open(&db).await.expect("open SQLite");
        let raw = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&path)
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await
            .expect("raw SQLite connection");
        Backend {
            store,
            name: "sqlite",
            db,
            raw: Raw::Sqlite(raw),
            _dir: Some(dir),
            _pg: None,
        }
    }

    /// `None` (the test support said why, loudly) when no PostgreSQL server can be had
    /// outside CI.
    pub async fn postgres(hint: &str) -> Option<Backend> {
        let test_db = common::pg::database(hint).await?;
        let db = DatabaseConfig::postgres(&test_db.url);
        let store = Store::open(&db).await.expect("open PostgreSQL");
        let raw = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&test_db.url)
            .await
            .expect("raw PostgreSQL connection");
        Some(Backend {
            store,
            name: "postgres",
            db,
            raw: Raw::Postgres(raw),
            _dir: None,
            _pg: Some(test_db),
        })
    }

    /// Another handle on the same database, as a second process would open it.
    pub async fn open_again(&self) -> Store {
        Store::open(&self.db).await.expect("open again")
    }

    /// The store, registered as a daemon (claims carry its id on PostgreSQL).
    pub async fn as_daemon(&self) -> &Store {
        self.store
            .register_daemon(DaemonInfo::this_process(), LEASE)
            .await
            .expect("register");
        &self.store
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.raw, Raw::Postgres(_))
    }

    /// Runs SQL both databases accept, as another program would.
    pub async fn exec(&self, sql: &str) -> u64 {
        match &self.raw {
            Raw::Sqlite(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Postgres(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .unwrap_or_else(|e| panic!("{}: {sql}: {e}", self.name))
    }

    /// Like [`Backend::exec`], returning the error instead.
    pub async fn try_exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.raw {
            Raw::Sqlite(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Postgres(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    /// The first column of the first row of a query returning one integer (cast it:
    /// `count(*)` is already one; write `CAST(x AS BIGINT)` otherwise).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let q = sqlx::AssertSqlSafe(sql.to_owned());
        match &self.raw {
            Raw::Sqlite(p) => sqlx::query(q)
                .fetch_one(p)
                .await
                .map(|r| r.get::<i64, _>(0)),
            Raw::Postgres(p) => sqlx::query(q)
                .fetch_one(p)
                .await
                .map(|r| r.get::<i64, _>(0)),
        }
        .unwrap_or_else(|e| panic!("{}: {sql}: {e}", self.name))
    }

    /// One text column (cast it: `CAST(x AS TEXT)`), `None` for NULL or no row.
    pub async fn text(&self, sql: &str) -> Option<String> {
        let q = sqlx::AssertSqlSafe(sql.to_owned());
        match &self.raw {
            Raw::Sqlite(p) => sqlx::query(q)
                .fetch_optional(p)
                .await
                .map(|r| r.and_then(|r| r.get::<Option<String>, _>(0))),
            Raw::Postgres(p) => sqlx::query(q)
                .fetch_optional(p)
                .await
                .map(|r| r.and_then(|r| r.get::<Option<String>, _>(0))),
        }
        .unwrap_or_else(|e| panic!("{}: {sql}: {e}", self.name))
    }
}

/// `conformance!(a, b, c)` in a module makes `a::sqlite`, `a::postgres`, ... of the
/// `async fn a(b: Backend)` in that module.
#[macro_export]
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test]
                async fn sqlite() {
                    super::$test($crate::Backend::sqlite().await).await;
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(b) = $crate::Backend::postgres(stringify!($test)).await {
                        super::$test(b).await;
                    }
                }
            }
        )*
    };
}

/// `conformance_pg!(a, b)`: as [`conformance!`], making only `a::postgres`, ... (tests of what
/// only the PostgreSQL store has).
#[macro_export]
macro_rules! conformance_pg {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test]
                async fn postgres() {
                    if let Some(b) = $crate::Backend::postgres(stringify!($test)).await {
                        super::$test(b).await;
                    }
                }
            }
        )*
    };
}
