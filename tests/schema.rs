//! Issue 11, the schema as outside programs meet it: times written in any form SQLite parses
//! are stored canonical (so text comparison orders them right), row ids are never reused,
//! purged external_ids stay purged, and the migration that brings all this keeps an
//! existing database's rows, logs and constraints.

mod common;

use std::path::Path;

use common::*;
use std::time::SystemTime;

use importlyd::importly::JobKind;
use importlyd::store::Store;

/// A config for the binary's operator commands (no daemon, no simulator).
fn config_in(dir: &Path) -> std::path::PathBuf {
    write_config(dir, &daemon_config_at(dir, "http://127.0.0.1:9"))
}

async fn insert_due(db: &Db, url: &str, due: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO imports (url, next_attempt_at) VALUES (?, ?) RETURNING id")
        .bind(url)
        .bind(due)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("insert {url} due {due}: {e}"))
}

/// Row `id`'s `column` as the text the table holds (`Row` reads it typed).
async fn stored(db: &Db, id: i64, column: &str) -> String {
    scalar(db, &format!("SELECT {column} FROM imports WHERE id = {id}")).await
}

async fn scalar(db: &Db, sql: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn times_in_any_parseable_form_are_stored_canonical_and_sort_right() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(&dir.path().join("q.db")).await;

    // As text, '2025-11-25 10:00' < '2025-11-25T09:30...' < '2025-11-25T11:00:00+02:00';
    // as times, 11:00+02:00 (09:00Z) comes first and 10:00 last.
    let ten = insert_due(&db, "https://e.com/ten", "2025-11-25 10:00").await;
    let nine = insert_due(&db, "https://e.com/nine", "2025-11-25T11:00:00+02:00").await;
    let half = insert_due(&db, "https://e.com/half", "2025-11-25T09:30:00.000Z").await;
    let noon = insert_due(&db, "https://e.com/noon", "2025-11-25T12:00:00+02:00").await;
    assert_eq!(
        stored(&db, ten, "next_attempt_at").await,
        "2025-11-25T10:00:00.000Z"
    );
    assert_eq!(
        stored(&db, nine, "next_attempt_at").await,
        "2025-11-25T09:00:00.000Z"
    );
    assert_eq!(
        stored(&db, half, "next_attempt_at").await,
        "2025-11-25T09:30:00.000Z"
    );
    assert_eq!(
        stored(&db, noon, "next_attempt_at").await,
        "2025-11-25T10:00:00.000Z"
    );
    let order: Vec<i64> = sqlx::query_scalar("SELECT id FROM imports ORDER BY next_attempt_at, id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(order, vec![nine, half, ten, noon]);

    // The other time columns too, at INSERT and at UPDATE.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO imports (url, created_at, updated_at) \
         VALUES ('https://e.com/c', '2025-11-25 08:00:00', '2025-11-25T08:00:00-01:00') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        stored(&db, id, "created_at").await,
        "2025-11-25T08:00:00.000Z"
    );
    assert_eq!(
        stored(&db, id, "updated_at").await,
        "2025-11-25T09:00:00.000Z"
    );
    sqlx::query(
        "UPDATE imports SET next_attempt_at = '2025-11-26 00:00+01:00', \
           completed_at = '2025-11-26T01:02:03.45+00:00', state = 'completed' WHERE id = ?",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        stored(&db, id, "next_attempt_at").await,
        "2025-11-25T23:00:00.000Z"
    );
    assert_eq!(
        stored(&db, id, "completed_at").await,
        "2025-11-26T01:02:03.450Z"
    );

    // What julianday() cannot parse is still refused, by the named constraint.
    for bad in ["tomorrow", "2025-13-45 10:00", ""] {
        let err =
            sqlx::query("INSERT INTO imports (url, next_attempt_at) VALUES ('https://e.com/x', ?)")
                .bind(bad)
                .execute(&db.pool)
                .await
                .expect_err("a time julianday() cannot parse is refused");
        assert!(
            err.to_string().contains("next_attempt_at_must_be_a_time"),
            "{bad:?}: {err}"
        );
    }
    db.close().await;
}

/// The daemon's claim compares `next_attempt_at` with now as text: a row due an hour ago
/// written with a +14:00 offset must be claimed, one due in an hour written with -12:00 not.
#[tokio::test]
async fn the_claim_sees_offset_times_as_the_instants_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let db = Db::create(&path).await;
    let past = scalar(
        &db,
        "SELECT strftime('%Y-%m-%dT%H:%M:%S+14:00', 'now', '-1 hour', '+14 hours')",
    )
    .await;
    let future = scalar(
        &db,
        "SELECT strftime('%Y-%m-%dT%H:%M:%S-12:00', 'now', '+1 hour', '-12 hours')",
    )
    .await;
    let due = insert_due(&db, "https://e.com/due", &past).await;
    let later = insert_due(&db, "https://e.com/later", &future).await;
    let store = Store::open_sqlite(&path).await.unwrap();
    let claimed = store
        .claim_due(JobKind::Import, 10, SystemTime::now(), u32::MAX)
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![due], "due {past}, later {future} (row {later})");
    store.close().await;
    db.close().await;
}

#[tokio::test]
async fn an_id_freed_by_purge_is_never_given_to_a_new_row() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let db = Db::create(&dir.path().join("importlyd.db")).await;
    let ids = db
        .insert_many(
            &(1..=5)
                .map(|i| format!("https://e.com/{i}"))
                .collect::<Vec<_>>(),
        )
        .await;
    let newest = *ids.iter().max().unwrap();
    // The three newest rows finished long ago; purge deletes them.
    sqlx::query(
        "UPDATE imports SET state = 'completed', completed_at = '2020-01-01T00:00:00.000Z', \
           updated_at = '2020-01-01T00:00:00.000Z' WHERE id > ?",
    )
    .bind(ids[1])
    .execute(&db.pool)
    .await
    .unwrap();
    let out = cli(&config, &["purge", "--older-than", "1d"]).await.ok();
    assert!(out.stdout.contains("deleted 3 rows"), "{out:?}");
    let fresh = db.insert("https://e.com/new").await;
    assert!(
        fresh > newest,
        "new row got id {fresh}, an id of a purged row (<= {newest})"
    );
    // Plain DELETE too: ids only ever grow.
    sqlx::query("DELETE FROM imports WHERE id = ?")
        .bind(fresh)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(db.insert("https://e.com/newer").await > fresh);
    db.close().await;
}

#[tokio::test]
async fn a_purged_external_id_is_not_imported_again_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let db = Db::create(&dir.path().join("importlyd.db")).await;
    let csv = dir.path().join("batch.csv");
    std::fs::write(
        &csv,
        "https://e.com/a.mp4,,asset-a\nhttps://e.com/b.mp4,,asset-b\nhttps://e.com/c.mp4,,asset-c\n",
    )
    .unwrap();
    let csv_arg = csv.to_str().unwrap();
    cli(&config, &["enqueue", "--file", csv_arg]).await.ok();
    assert_eq!(db.rows().await.len(), 3);
    // a and b completed long ago and are purged; c is still pending.
    sqlx::query(
        "UPDATE imports SET state = 'completed', updated_at = '2020-01-01T00:00:00.000Z' \
         WHERE external_id IN ('asset-a', 'asset-b')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    cli(&config, &["purge", "--older-than", "1d"]).await.ok();
    assert_eq!(db.rows().await.len(), 1);

    // The same CSV again: nothing new, through every client.
    let again = cli(&config, &["enqueue", "--file", csv_arg]).await.ok();
    assert!(again.stdout.contains("queued 0 rows"), "{again:?}");
    for sql in [
        "INSERT INTO imports (url, external_id) VALUES ('https://e.com/a.mp4', 'asset-a')",
        "INSERT INTO imports (url, external_id) VALUES ('https://e.com/a.mp4', 'asset-a') \
         ON CONFLICT (external_id) DO NOTHING",
        "INSERT OR IGNORE INTO imports (url, external_id) VALUES ('https://e.com/b.mp4', 'asset-b')",
    ] {
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(done.rows_affected(), 0, "{sql}");
    }
    let returned: Option<i64> = sqlx::query_scalar(
        "INSERT INTO imports (url, external_id) VALUES ('https://e.com/a.mp4', 'asset-a') \
         ON CONFLICT (external_id) DO NOTHING RETURNING id",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(returned, None);
    let urls: Vec<String> = db.rows().await.into_iter().map(|r| r.url).collect();
    assert_eq!(urls, vec!["https://e.com/c.mp4"]);
    // Rows without an external_id, or with a new one, are not affected.
    db.insert("https://e.com/a.mp4").await;
    sqlx::query("INSERT INTO imports (url, external_id) VALUES ('https://e.com/d.mp4', 'asset-d')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(db.rows().await.len(), 3);

    // Forgetting it (the README's recipe) lets it in again.
    sqlx::query("DELETE FROM purged_external_ids WHERE external_id = 'asset-a'")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = cli(&config, &["enqueue", "--file", csv_arg]).await.ok();
    assert!(out.stdout.contains("queued 1 row"), "{out:?}");
    let a: i64 = sqlx::query_scalar("SELECT count(*) FROM imports WHERE external_id = 'asset-a'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(a, 1);
    db.close().await;
}

/// A database made by the previous schema (migrations 0001-0003), with rows and their logs,
/// upgraded by opening it: rows, logs and constraint names kept, times made canonical, ids
/// continue above the largest, and the foreign key still cascades.
#[tokio::test]
async fn the_upgrade_keeps_rows_logs_and_constraints() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().into_string().unwrap();
        if ["0001_", "0002_", "0003_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            std::fs::copy(f.path(), old.join(&name)).unwrap();
        }
    }
    let path = dir.path().join("q.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    for (id, url, due) in [
        (3, "https://e.com/3", "2025-11-25 10:00"),
        (7, "https://e.com/7", "2025-11-25T09:00:00.000Z"),
    ] {
        sqlx::query(
            "INSERT INTO imports (id, url, next_attempt_at, external_id) VALUES (?, ?, ?, ?)",
        )
        .bind(id)
        .bind(url)
        .bind(due)
        .bind(format!("ext-{id}"))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO import_attempts (import_id, attempt, method, endpoint, started_at, \
             finished_at, outcome, daemon_version) \
             VALUES (?, 1, 'POST', '/import', '2025-11-25T09:00:00.000Z', \
                     '2025-11-25T09:00:01.000Z', 'server_error', '0')",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let store = Store::open_sqlite(&path).await.expect("the upgrade runs");
    store.close().await;
    let db = Db::connect(&path).await;
    let rows = db.rows().await;
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, 7]);
    assert_eq!(
        stored(&db, 3, "next_attempt_at").await,
        "2025-11-25T10:00:00.000Z"
    );
    assert_eq!(rows[0].external_id.as_deref(), Some("ext-3"));
    assert_eq!(
        db.all_attempts().await.len(),
        2,
        "the logs survive the rebuild"
    );
    let violations: Vec<(String,)> =
        sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(violations.is_empty(), "{violations:?}");

    // The constraints, by name.
    for (sql, name) in [
        (
            "INSERT INTO imports (url) VALUES ('ftp://e.com/a')",
            "url_must_be_http_or_https",
        ),
        (
            "INSERT INTO imports (url, kind) VALUES ('https://e.com/a', 'x')",
            "kind_must_be_import_or_metadata",
        ),
        (
            "INSERT INTO imports (url, options) VALUES ('https://e.com/a', '[]')",
            "options_must_be_json_object",
        ),
        (
            "INSERT INTO imports (url, state) VALUES ('https://e.com/a', 'x')",
            "state_must_be_known",
        ),
        (
            "INSERT INTO imports (url, attempts) VALUES ('https://e.com/a', -1)",
            "attempts_must_not_be_negative",
        ),
        (
            "INSERT INTO imports (url, next_attempt_at) VALUES ('https://e.com/a', 'x')",
            "next_attempt_at_must_be_a_time",
        ),
        (
            "INSERT INTO imports (url, state) VALUES ('https://e.com/a', 'running')",
            "running_row_needs_job_id",
        ),
        (
            "INSERT INTO imports (url, external_id) VALUES ('https://e.com/a', 'ext-3')",
            "UNIQUE",
        ),
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .expect_err(sql);
        assert!(err.to_string().contains(name), "{sql}: {err}");
    }
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'imports' \
         AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        vec![
            "imports_by_state",
            "imports_by_state_id",
            "imports_completed_by_kind",
            "imports_due",
            "imports_errors_by_updated",
            "imports_failed_by_error",
            "imports_metadata_by_url",
            "imports_pending_by_created",
            "imports_waiting_for_preflight"
        ]
    );

    // Ids continue above the largest; deleting a row (foreign keys on, as the daemon has
    // them) still takes its log with it.
    assert!(db.insert("https://e.com/new").await > 7);
    db.close().await;
    let store = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(
        store
            .purge(
                importlyd::clock::parse_iso("9999-01-01T00:00:00.000Z").unwrap(),
                false
            )
            .await
            .unwrap(),
        0
    );
    store.close().await;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .foreign_keys(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    sqlx::query("DELETE FROM imports WHERE id = 3")
        .execute(&pool)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM import_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "the deleted row's log went with it");
    pool.close().await;
}

/// The per-state totals `status` reads (`imports_counts`, kept by the triggers of migration
/// 0006) agree with a full count after every kind of write an outside program or the daemon
/// makes: inserts (skipped duplicates and purged ids included), state, kind and credit
/// changes, deletes.
#[tokio::test]
async fn the_counts_table_follows_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(&dir.path().join("q.db")).await;
    async fn agree(db: &Db, after: &str) {
        let kept: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT state, kind, n, credits FROM imports_counts WHERE n <> 0 ORDER BY 1, 2",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let counted: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT state, kind, count(*), coalesce(sum(credits_used), 0) FROM imports \
             GROUP BY state, kind ORDER BY 1, 2",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(kept, counted, "after {after}");
    }
    let writes = [
        "INSERT INTO imports (url, external_id) VALUES ('https://a.example/1', 'e1'), \
         ('https://a.example/2', 'e2'), ('https://a.example/3', NULL)",
        "INSERT INTO imports (url, external_id) VALUES ('https://a.example/1', 'e1') \
         ON CONFLICT (external_id) DO NOTHING",
        "INSERT INTO imports (url, kind) VALUES ('https://a.example/m', 'metadata')",
        "UPDATE imports SET state = 'running', importly_job_id = 'j1' WHERE id = 1",
        "UPDATE imports SET state = 'completed', credits_used = 7 WHERE id = 1",
        "UPDATE imports SET credits_used = 9 WHERE id = 1",
        "UPDATE imports SET kind = 'metadata' WHERE id = 2",
        "UPDATE imports SET state = 'failed', last_error = 'x' WHERE id IN (2, 3)",
        "UPDATE imports SET updated_at = '2025-01-01T00:00:00.000Z'",
        "INSERT INTO purged_external_ids (external_id, purged_at) VALUES ('gone', '2025-01-01')",
        "INSERT INTO imports (url, external_id) VALUES ('https://a.example/g', 'gone')",
        "DELETE FROM imports WHERE id = 1",
        "DELETE FROM imports",
    ];
    for sql in writes {
        sqlx::query(sql)
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        agree(&db, sql).await;
    }
    db.close().await;
}

/// An outside `INSERT OR REPLACE` deletes the old row without firing delete triggers
/// (SQLite fires them for REPLACE only with `recursive_triggers` on), so the counts drift;
/// `importlyd migrate` counts them afresh.
#[tokio::test]
async fn migrate_repairs_counts_skewed_by_an_outside_replace() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let db = Db::create(&dir.path().join("importlyd.db")).await;
    let kept = "SELECT CAST(coalesce(sum(n), 0) AS TEXT) FROM imports_counts";
    sqlx::query("INSERT INTO imports (url, external_id) VALUES ('https://a.example/1', 'e1')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT OR REPLACE INTO imports (url, external_id) VALUES ('https://a.example/2', 'e1')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        scalar(&db, "SELECT CAST(count(*) AS TEXT) FROM imports").await,
        "1"
    );
    assert_eq!(
        scalar(&db, kept).await,
        "2",
        "the REPLACE skewed the counts"
    );
    cli(&config, &["migrate"]).await.ok();
    assert_eq!(scalar(&db, kept).await, "1", "migrate counted afresh");
    db.close().await;
}

/// `purge --older-than` prunes the audit log by the same cut, and records itself.
#[tokio::test]
async fn purge_prunes_the_audit_log_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let db = Db::create(&dir.path().join("importlyd.db")).await;
    sqlx::query(
        "INSERT INTO audit (at, action, target, source, ok) VALUES \
         ('2020-01-01T00:00:00.000Z', 'retry', 'row 1', 'cli', 1), \
         (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'cancel', 'row 2', 'api', 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = cli(&config, &["purge", "--older-than", "30d"]).await.ok();
    assert!(
        out.stdout.contains("deleted 1 audit entries"),
        "{}",
        out.stdout
    );
    let kept: Vec<String> = sqlx::query_scalar("SELECT action FROM audit ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        kept,
        ["cancel", "purge"],
        "the old entry is gone, the purge recorded"
    );
    db.close().await;
}
