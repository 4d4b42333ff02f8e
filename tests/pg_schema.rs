//! Issue 13, the PostgreSQL schema (migrations_pg/) as users and daemons meet it, on a real
//! server: bad rows are refused at INSERT from psql under the same CHECK constraint names as
//! SQLite, a good row gets the documented defaults, duplicates and purged external_ids are
//! skipped, the per-state counts follow every change, an INSERT from psql wakes a LISTENer,
//! and migrating twice is a no-op.
//!
//! Skipped loudly without PostgreSQL binaries (failed under CI=true); see common/pg.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::pg::{self, TestDb};
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgPool, Row as _};

/// A fresh database with migrations_pg applied, or `None`: skipped.
async fn migrated(hint: &str) -> Option<(TestDb, PgPool)> {
    let db = pg::database(hint).await?;
    let pool = db.pool().await;
    sqlx::migrate!("./migrations_pg")
        .run(&pool)
        .await
        .expect("migrations_pg apply");
    Some((db, pool))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `sql` from psql and expects success; returns psql's stdout (the command tag).
fn psql_ok(db: &TestDb, sql: &str) -> String {
    let out = db.psql(sql);
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn count_rows(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn bad_rows_are_refused_at_insert_naming_the_sqlite_constraint() {
    let Some((db, pool)) = migrated("bad_rows").await else {
        return;
    };
    let cases = [
        (
            "url",
            "('ftp://example.com/a.mp4')",
            "url_must_be_http_or_https",
        ),
        (
            "url",
            "('https://example.com/a b.mp4')",
            "url_must_be_http_or_https",
        ),
        (
            "url",
            "(E'https://example.com/a\\n.mp4')",
            "url_must_be_http_or_https",
        ),
        (
            "url",
            "(E'https://example.com/a\\t.mp4')",
            "url_must_be_http_or_https",
        ),
        ("url", "('https://')", "url_must_be_http_or_https"),
        (
            "url, kind",
            "('https://example.com/a.mp4', 'video')",
            "kind_must_be_import_or_metadata",
        ),
        (
            "url, options",
            "('https://example.com/a.mp4', '[1]')",
            "options_must_be_json_object",
        ),
        (
            "url, options",
            "('https://example.com/a.mp4', 'null')",
            "options_must_be_json_object",
        ),
        (
            "url, state",
            "('https://example.com/a.mp4', 'bogus')",
            "state_must_be_known",
        ),
        (
            "url, attempts",
            "('https://example.com/a.mp4', -1)",
            "attempts_must_not_be_negative",
        ),
        (
            "url, state",
            "('https://example.com/a.mp4', 'running')",
            "running_row_needs_job_id",
        ),
        (
            "url, next_attempt_at",
            "('https://example.com/a.mp4', 'infinity')",
            "next_attempt_at_must_be_a_time",
        ),
    ];
    for (columns, values, constraint) in cases {
        let sql = format!("INSERT INTO imports ({columns}) VALUES {values}");
        // As a user meets it: psql fails and its ERROR line names the constraint.
        let out = db.psql(&sql);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{sql} was accepted by psql");
        assert!(
            stderr.contains(&format!("violates check constraint \"{constraint}\"")),
            "{sql}: psql's error does not name {constraint}: {stderr}"
        );
        // As a client library meets it: a check violation (23514) with the constraint's name,
        // which sqlx reports as ErrorKind::CheckViolation.
        let err = sqlx::query(AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
            .expect_err(&sql);
        let db_err = err
            .as_database_error()
            .unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db_err.code().as_deref(), Some("23514"), "{sql}: {err}");
        assert_eq!(db_err.constraint(), Some(constraint), "{sql}: {err}");
        assert!(matches!(
            db_err.kind(),
            sqlx::error::ErrorKind::CheckViolation
        ));
    }

    // Text that is not JSON at all fails jsonb's input before any CHECK (documented in the
    // migration): still refused at INSERT, under a data error.
    let out =
        db.psql("INSERT INTO imports (url, options) VALUES ('https://example.com/a', 'nope')");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid input syntax for type json"),
        "{}",
        text(&out.stderr)
    );
    // The http(s) prefix is case-insensitive, as in SQLite.
    psql_ok(
        &db,
        "INSERT INTO imports (url) VALUES ('HTTPS://example.com/A.mp4')",
    );
    psql_ok(
        &db,
        "INSERT INTO imports (url) VALUES ('Http://example.com/b')",
    );
    assert_eq!(count_rows(&pool, "SELECT count(*) FROM imports").await, 2);
}

#[tokio::test]
async fn a_plain_insert_from_psql_is_pending_due_now_with_empty_options() {
    let Some((db, pool)) = migrated("defaults").await else {
        return;
    };
    // The interface's own examples, word for word.
    let out = psql_ok(
        &db,
        "INSERT INTO imports (url) VALUES ('https://example.com/a.mp4');",
    );
    assert!(out.contains("INSERT 0 1"), "{out}");
    psql_ok(
        &db,
        r#"INSERT INTO imports (url, options, external_id)
             VALUES ('https://example.com/b.mp4', '{"videoQuality":"720p"}', 'asset-42');"#,
    );

    let row = sqlx::query(
        "SELECT kind, state, attempts, options::text AS options, owner, claimed_at IS NULL AS unclaimed,
                next_attempt_at <= now() AS due,
                now() - next_attempt_at < interval '1 minute' AS due_just_now,
                created_at = next_attempt_at AS created_when_due, importly_job_id
         FROM imports WHERE url = 'https://example.com/a.mp4'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("kind"), "import");
    assert_eq!(row.get::<String, _>("state"), "pending");
    assert_eq!(row.get::<i32, _>("attempts"), 0);
    assert_eq!(row.get::<String, _>("options"), "{}");
    assert_eq!(row.get::<Option<i64>, _>("owner"), None);
    assert!(row.get::<bool, _>("unclaimed"));
    assert!(row.get::<bool, _>("due"), "a new row is due at once");
    assert!(row.get::<bool, _>("due_just_now"));
    assert!(row.get::<bool, _>("created_when_due"));
    assert_eq!(row.get::<Option<String>, _>("importly_job_id"), None);

    let quality: String = sqlx::query_scalar(
        "SELECT options->>'videoQuality' FROM imports WHERE external_id = 'asset-42'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(quality, "720p");

    // Ids come from the sequence, in insert order.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM imports ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
}

#[tokio::test]
async fn duplicate_and_purged_external_ids_are_skipped() {
    let Some((db, pool)) = migrated("external_ids").await else {
        return;
    };
    let insert = "INSERT INTO imports (url, external_id) VALUES ($1, $2) \
                  ON CONFLICT (external_id) DO NOTHING RETURNING id";
    let first: Option<i64> = sqlx::query_scalar(insert)
        .bind("https://example.com/a.mp4")
        .bind("asset-1")
        .fetch_optional(&pool)
        .await
        .unwrap();
    assert!(first.is_some());
    let again: Option<i64> = sqlx::query_scalar(insert)
        .bind("https://example.com/other.mp4")
        .bind("asset-1")
        .fetch_optional(&pool)
        .await
        .unwrap();
    assert_eq!(again, None, "a duplicate external_id inserts nothing");
    // Without ON CONFLICT a duplicate is the unique violation it always was.
    let out = db
        .psql("INSERT INTO imports (url, external_id) VALUES ('https://example.com/x', 'asset-1')");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("imports_external_id_key"),
        "{}",
        text(&out.stderr)
    );

    // A purged external_id is skipped silently: psql succeeds with INSERT 0 0, from a plain
    // INSERT as from ON CONFLICT ... RETURNING, and the other rows of the statement go in.
    psql_ok(
        &db,
        "INSERT INTO purged_external_ids (external_id) VALUES ('gone')",
    );
    let out = psql_ok(
        &db,
        "INSERT INTO imports (url, external_id) VALUES ('https://example.com/g.mp4', 'gone')",
    );
    assert!(out.contains("INSERT 0 0"), "{out}");
    let skipped: Option<i64> = sqlx::query_scalar(insert)
        .bind("https://example.com/g.mp4")
        .bind("gone")
        .fetch_optional(&pool)
        .await
        .unwrap();
    assert_eq!(skipped, None);
    let out = psql_ok(
        &db,
        "INSERT INTO imports (url, external_id) VALUES \
           ('https://example.com/g.mp4', 'gone'), ('https://example.com/h.mp4', 'kept'), \
           ('https://example.com/i.mp4', NULL)",
    );
    assert!(out.contains("INSERT 0 2"), "{out}");
    assert_eq!(
        count_rows(
            &pool,
            "SELECT count(*) FROM imports WHERE external_id = 'gone'"
        )
        .await,
        0
    );
    // The skipped rows were never counted.
    assert_eq!(
        count_rows(&pool, &format!("SELECT sum(n)::bigint FROM {TOTALS}")).await,
        3
    );
    // Forgetting the purge lets it in again.
    psql_ok(
        &db,
        "DELETE FROM purged_external_ids WHERE external_id = 'gone'",
    );
    let out = psql_ok(
        &db,
        "INSERT INTO imports (url, external_id) VALUES ('https://example.com/g.mp4', 'gone')",
    );
    assert!(out.contains("INSERT 0 1"), "{out}");
}

/// The counts as the migration documents reading them: the folded totals plus the deltas the
/// triggers insert.
const TOTALS: &str = "(SELECT state, kind, n, credits FROM imports_counts \
     UNION ALL SELECT state, kind, n, credits FROM imports_counts_delta) AS t";

/// The counts as a map, keys with nothing in them left out (deletes and moves leave zero
/// rows behind, as in SQLite).
async fn counts(pool: &PgPool) -> BTreeMap<(String, String), (i64, i64)> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT state, kind, sum(n)::bigint AS n, sum(credits)::bigint AS credits FROM {TOTALS} \
         GROUP BY state, kind HAVING sum(n) <> 0 OR sum(credits) <> 0"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            (r.get("state"), r.get("kind")),
            (r.get("n"), r.get("credits")),
        )
    })
    .collect()
}

/// The same, counted from the table itself.
async fn recount(pool: &PgPool) -> BTreeMap<(String, String), (i64, i64)> {
    sqlx::query(
        "SELECT state, kind, count(*) AS n, coalesce(sum(credits_used), 0)::bigint AS credits
         FROM imports GROUP BY state, kind",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            (r.get("state"), r.get("kind")),
            (r.get("n"), r.get("credits")),
        )
    })
    .collect()
}

#[tokio::test]
async fn imports_counts_follow_inserts_state_changes_and_deletes() {
    let Some((db, pool)) = migrated("counts").await else {
        return;
    };
    let steps = [
        "INSERT INTO imports (url) SELECT 'https://example.com/' || g FROM generate_series(1, 5) g",
        "INSERT INTO imports (url, kind) VALUES ('https://example.com/m', 'metadata')",
        "UPDATE imports SET state = 'submitting' WHERE url IN ('https://example.com/1', 'https://example.com/2')",
        "UPDATE imports SET state = 'running', importly_job_id = 'job-1' WHERE url = 'https://example.com/1'",
        "UPDATE imports SET state = 'completed', credits_used = 3 WHERE url = 'https://example.com/1'",
        // credits_used alone, same state and kind: both sides of the trigger are one key.
        "UPDATE imports SET credits_used = 5 WHERE url = 'https://example.com/1'",
        "UPDATE imports SET kind = 'metadata' WHERE url = 'https://example.com/3'",
        // Writes that change no counted column, or write the same values, change nothing.
        "UPDATE imports SET last_error = 'x', updated_at = now(), state = state",
        "UPDATE imports SET state = 'failed' WHERE state = 'pending'",
        "DELETE FROM imports WHERE url IN ('https://example.com/1', 'https://example.com/m')",
        // An operator's retry of everything failed, then a purge of the rest.
        "UPDATE imports SET state = 'pending', attempts = 0 WHERE state = 'failed'",
        "DELETE FROM imports WHERE state = 'pending'",
    ];
    for sql in steps {
        psql_ok(&db, sql);
        assert_eq!(counts(&pool).await, recount(&pool).await, "after {sql}");
    }
    let expected: BTreeMap<(String, String), (i64, i64)> =
        [(("submitting".into(), "import".into()), (1, 0))].into();
    assert_eq!(counts(&pool).await, expected);
}

#[tokio::test]
async fn an_insert_or_a_retry_from_psql_notifies_the_listeners() {
    let Some((db, pool)) = migrated("notify").await else {
        return;
    };
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen("importlyd_imports").await.unwrap();

    psql_ok(
        &db,
        "INSERT INTO imports (url) VALUES ('https://example.com/a.mp4')",
    );
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s of the INSERT")
        .unwrap();
    assert_eq!(n.channel(), "importlyd_imports");
    assert_eq!(n.payload(), "");

    // A daemon's own progress (pending -> submitting -> running -> completed) wakes nobody:
    // the next notification to arrive is a marker sent after it.
    for sql in [
        "UPDATE imports SET state = 'submitting', owner = 1",
        "UPDATE imports SET state = 'running', importly_job_id = 'job-1'",
        "UPDATE imports SET state = 'failed', owner = NULL, next_attempt_at = now()",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    psql_ok(
        &db,
        "SELECT pg_notify('importlyd_imports', 'after progress')",
    );
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("the marker")
        .unwrap();
    assert_eq!(n.payload(), "after progress", "a state change notified");

    // An operator making failed rows due again wakes the daemons, once per statement
    // however many rows it changed (PostgreSQL folds a transaction's identical notifications).
    psql_ok(
        &db,
        "INSERT INTO imports (url, state) SELECT 'https://example.com/' || g, 'failed' \
         FROM generate_series(1, 50) g",
    );
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification for the INSERT")
        .unwrap();
    assert_eq!(n.payload(), "");
    psql_ok(
        &db,
        "UPDATE imports SET state = 'pending' WHERE state = 'failed'",
    );
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s of the retry")
        .unwrap();
    assert_eq!(n.payload(), "");
    // A pending row's due time moved notifies; a pending row's other columns do not.
    psql_ok(
        &db,
        "UPDATE imports SET last_error = 'x' WHERE state = 'pending'",
    );
    psql_ok(
        &db,
        "SELECT pg_notify('importlyd_imports', 'after last_error')",
    );
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("the marker")
        .unwrap();
    assert_eq!(
        n.payload(),
        "after last_error",
        "the retry sent more than one, or last_error notified"
    );
    psql_ok(
        &db,
        "UPDATE imports SET next_attempt_at = now() - interval '1 minute' WHERE state = 'pending'",
    );
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification for a due time moved")
        .unwrap();
    assert_eq!(n.payload(), "");

    // A rolled-back INSERT sends nothing (notifications are delivered at commit): the next
    // one to arrive is a marker sent after it.
    psql_ok(
        &db,
        "BEGIN; INSERT INTO imports (url) VALUES ('https://example.com/b.mp4'); ROLLBACK;",
    );
    psql_ok(&db, "SELECT pg_notify('importlyd_imports', 'marker')");
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("the marker")
        .unwrap();
    assert_eq!(
        n.payload(),
        "marker",
        "a notification for a rolled-back INSERT"
    );
}

#[tokio::test]
async fn migrating_twice_is_a_no_op() {
    let Some((db, pool)) = migrated("twice").await else {
        return;
    };
    psql_ok(
        &db,
        "INSERT INTO imports (url) VALUES ('https://example.com/a.mp4')",
    );
    let objects = "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace";
    let before = count_rows(&pool, objects).await;
    // Again on the same pool, and from a second pool as another daemon would.
    sqlx::migrate!("./migrations_pg").run(&pool).await.unwrap();
    let other = db.pool().await;
    sqlx::migrate!("./migrations_pg").run(&other).await.unwrap();
    assert_eq!(count_rows(&pool, objects).await, before);
    assert_eq!(
        count_rows(&pool, "SELECT count(*) FROM _sqlx_migrations WHERE success").await,
        sqlx::migrate!("./migrations_pg").iter().count() as i64
    );
    assert_eq!(count_rows(&pool, "SELECT count(*) FROM imports").await, 1);
}

/// The contract says "the same tables, columns and CHECK constraint names" on both backends:
/// checked against SQLite's migrations, so a column added to one side only is caught.
#[tokio::test]
async fn the_schema_has_sqlites_tables_columns_and_constraint_names() {
    let Some((_db, pool)) = migrated("same_as_sqlite").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.path().join("q.db"))
                .create_if_missing(true),
        )
        .await
        .unwrap();
    sqlx::migrate!("./migrations").run(&lite).await.unwrap();

    // SQLite-only: `buckets` (PostgreSQL shares `budgets` instead).
    let shared = [
        "imports",
        "import_attempts",
        "pauses",
        "metadata_cache",
        "purged_external_ids",
        "audit",
        "imports_counts",
    ];
    // PostgreSQL-only columns, for the cluster.
    let extra: BTreeSet<String> = ["owner".into(), "claimed_at".into()].into();
    for table in shared {
        let lite_cols: BTreeSet<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{table}')"
        )))
        .fetch_all(&lite)
        .await
        .unwrap()
        .into_iter()
        .collect();
        let pg_cols: BTreeSet<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| table != "imports" || !extra.contains(c))
        .collect();
        assert!(!lite_cols.is_empty(), "{table} in SQLite");
        assert_eq!(pg_cols, lite_cols, "columns of {table}");
    }

    // Named CHECK constraints of imports: SQLite's from its CREATE TABLE text.
    let create: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'imports'",
    )
    .fetch_one(&lite)
    .await
    .unwrap();
    let lite_names: BTreeSet<String> = create
        .split("CONSTRAINT")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next().map(str::to_owned))
        .collect();
    let pg_names: BTreeSet<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'imports'::regclass AND contype = 'c'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(lite_names.len(), 7, "{lite_names:?}");
    assert_eq!(pg_names, lite_names);
}
