//! Conformance: the operator verbs (`enqueue`, `list`, `status`, `retry`, `cancel`, `purge`,
//! `export`, `wait`'s reads), the audit log and the admin API's and dashboard's reads, on
//! both stores. Rows in states the verbs under test do not make are put there with raw SQL,
//! as another program would (times as canonical ISO literals, which both databases read).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use importlyd::importly::JobKind;
use importlyd::store::{EnqueueRow, ListFilter, PageFilter, Row, State, Store, state};
use serde_json::{Value, json};

use crate::{Backend, conformance, conformance_pg};

conformance!(
    enqueue_returns_ids_and_skips_known_external_ids,
    a_bad_row_refuses_the_whole_batch_naming_its_constraint,
    enqueue_chunk_names_bad_rows_and_counts_duplicates,
    row_reads_every_column_in_canonical_form,
    list_filters_by_state_since_and_limit,
    page_walks_by_cursor_with_state_and_search,
    status_counts_follow_every_change,
    recount_repairs_skewed_counts,
    queue_shape_counts_ahead_running_and_the_mean_job_time,
    retry_resets_failed_rows_only,
    cancel_cancels_pending_rows_only,
    purge_deletes_old_finished_rows_and_remembers_their_external_ids,
    purge_audit_and_metadata_cache_by_age,
    audit_log_newest_first,
    failure_groups_biggest_first,
    finished_per_minute_buckets_by_utc_minute,
    failed_ids_and_latest_failed,
    export_streams_every_row_in_id_order,
    odd_times_users_write_read_as_the_epoch_and_garbled_logs_are_errors,
    select_ids_progress_of_and_unsuccessful_among,
);

conformance_pg!(
    counts_fold_and_stay_exact_under_concurrent_writers,
    an_open_insert_blocks_no_claim_and_no_count,
    status_counts_and_queue_shape_never_scan_the_table,
);

fn url(u: &str) -> EnqueueRow {
    EnqueueRow {
        url: u.to_owned(),
        ..EnqueueRow::default()
    }
}

fn ext(u: &str, external_id: &str) -> EnqueueRow {
    EnqueueRow {
        url: u.to_owned(),
        external_id: Some(external_id.to_owned()),
        ..EnqueueRow::default()
    }
}

/// Inserts one row with raw SQL: `columns`/`values` after the url.
async fn insert(b: &Backend, u: &str, columns: &str, values: &str) -> i64 {
    let (columns, values) = if columns.is_empty() {
        (String::new(), String::new())
    } else {
        (format!(", {columns}"), format!(", {values}"))
    };
    b.scalar(&format!(
        "INSERT INTO imports (url{columns}) VALUES ('{u}'{values}) RETURNING id"
    ))
    .await
}

/// A row in `state`, last changed at `at`, with `error` as its last_error.
async fn in_state(b: &Backend, u: &str, state: &str, error: Option<&str>, at: &str) -> i64 {
    let error = error.map_or("NULL".to_owned(), |e| format!("'{e}'"));
    let job = if state == "running" {
        "'job-x'"
    } else {
        "NULL"
    };
    insert(
        b,
        u,
        "state, last_error, updated_at, importly_job_id",
        &format!("'{state}', {error}, '{at}', {job}"),
    )
    .await
}

fn ids(rows: &[Row]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A time the store wrote and read back: whole milliseconds (what the canonical text
/// `2026-12-07T10:00:00.123Z` holds), after 2021 (not the epoch a garbled value reads as).
fn assert_canonical(t: &SystemTime) {
    let text = iso(*t);
    assert_eq!(importlyd::clock::parse_iso(&text), Some(*t), "{text}");
    assert!(text.as_str() > "2021", "{text}");
}

/// The canonical text of a time the store read back.
fn iso(t: SystemTime) -> String {
    importlyd::clock::iso(t)
}

/// Rows per state, counted from the table itself.
async fn table_counts(b: &Backend) -> BTreeMap<State, i64> {
    let mut out = BTreeMap::new();
    for state in State::ALL {
        let n = b
            .scalar(&format!(
                "SELECT count(*) FROM imports WHERE state = '{state}'"
            ))
            .await;
        out.insert(state, n);
    }
    out
}

async fn table_credits(b: &Backend) -> i64 {
    b.scalar(
        "SELECT CAST(coalesce(sum(credits_used), 0) AS BIGINT) FROM imports \
         WHERE state = 'completed'",
    )
    .await
}

/// `status_counts` agrees with a count of the table.
async fn counts_agree(b: &Backend, store: &Store, after: &str) {
    let c = store.status_counts().await.unwrap();
    assert_eq!(c.counts, table_counts(b).await, "{}: after {after}", b.name);
    assert_eq!(
        c.credits_used,
        table_credits(b).await,
        "{}: after {after}",
        b.name
    );
}

async fn enqueue_returns_ids_and_skips_known_external_ids(b: Backend) {
    let s = &b.store;
    let ids = s
        .enqueue(&[
            url("https://e.com/a.mp4"),
            EnqueueRow {
                url: "https://e.com/b.mp4".into(),
                kind: Some(JobKind::Metadata),
                options: Some(r#"{"videoQuality":"720p"}"#.into()),
                external_id: Some("asset-1".into()),
            },
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let a = s.row(ids[0]).await.unwrap().expect("row a");
    assert_eq!(
        (a.url.as_str(), a.kind.as_str(), a.state.as_str()),
        ("https://e.com/a.mp4", "import", "pending")
    );
    assert_eq!(json(&a.options), json!({}));
    assert_eq!(a.attempts, 0);
    assert_eq!(a.external_id, None);
    assert_eq!(
        (&a.importly_job_id, &a.result, &a.completed_at),
        (&None, &None, &None)
    );
    assert_canonical(&a.created_at);
    assert_canonical(&a.next_attempt_at);
    let m = s.row(ids[1]).await.unwrap().expect("row b");
    assert_eq!(m.kind, "metadata");
    assert_eq!(json(&m.options), json!({"videoQuality": "720p"}));
    assert_eq!(m.external_id.as_deref(), Some("asset-1"));

    // Again: the known external_id is skipped, the rest goes in.
    let again = s
        .enqueue(&[
            ext("https://e.com/other.mp4", "asset-1"),
            url("https://e.com/c.mp4"),
        ])
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0] > ids[1]);
    assert_eq!(
        s.row(again[0]).await.unwrap().unwrap().url,
        "https://e.com/c.mp4"
    );
    // Twice in one batch: the first wins.
    let twice = s
        .enqueue(&[
            ext("https://e.com/first.mp4", "twice"),
            ext("https://e.com/second.mp4", "twice"),
        ])
        .await
        .unwrap();
    assert_eq!(twice.len(), 1);
    assert_eq!(
        s.row(twice[0]).await.unwrap().unwrap().url,
        "https://e.com/first.mp4"
    );
    assert_eq!(b.scalar("SELECT count(*) FROM imports").await, 4);
    assert_eq!(
        s.ids_by_external_id(&["asset-1".into(), "twice".into(), "nope".into()])
            .await
            .unwrap(),
        vec![ids[1], twice[0]]
    );
    assert_eq!(s.enqueue(&[]).await.unwrap(), Vec::<i64>::new());
}

async fn a_bad_row_refuses_the_whole_batch_naming_its_constraint(b: Backend) {
    let bad = |u: &str, kind: Option<JobKind>, options: Option<&str>| EnqueueRow {
        url: u.to_owned(),
        kind,
        options: options.map(str::to_owned),
        external_id: None,
    };
    let cases = [
        (
            bad("ftp://e.com/a.mp4", None, None),
            "url_must_be_http_or_https",
        ),
        (
            bad("https://e.com/a b.mp4", None, None),
            "url_must_be_http_or_https",
        ),
        // A kind the schema does not know (`kind_must_be_import_or_metadata`) can no longer
        // be named here: `EnqueueRow::kind` is a `JobKind`. The CHECK itself is pinned for
        // SQL inserts by tests/schema.rs and tests/pg_schema.rs.
        (
            bad("https://e.com/o", None, Some("[1]")),
            "options_must_be_json_object",
        ),
        (
            bad("https://e.com/o", None, Some("not json")),
            "options_must_be_json_object",
        ),
    ];
    for (row, constraint) in cases {
        let what = format!("{}: {:?}", b.name, row);
        let e = b
            .store
            .enqueue(&[url("https://e.com/good.mp4"), row.clone()])
            .await
            .expect_err(&what);
        let msg = e.to_string();
        assert!(msg.contains(constraint), "{what}: {msg}");
        assert!(msg.starts_with("row 2 ("), "{what}: {msg}");
        assert!(msg.contains(&row.url), "{what}: {msg}");
        assert_eq!(b.scalar("SELECT count(*) FROM imports").await, 0, "{what}");
    }
    counts_agree(&b, &b.store, "refused batches").await;
}

async fn enqueue_chunk_names_bad_rows_and_counts_duplicates(b: Backend) {
    let s = &b.store;
    insert(&b, "https://e.com/old.mp4", "external_id", "'dup-db'").await;
    b.exec(
        "INSERT INTO purged_external_ids (external_id, purged_at) \
         VALUES ('gone', '2020-01-01T00:00:00.000Z')",
    )
    .await;
    let chunk = [
        ext("https://e.com/1.mp4", "e1"),
        ext("ftp://e.com/2.mp4", "e2"), // bad url
        ext("https://e.com/3.mp4", "e3"),
        EnqueueRow {
            options: Some("not json".into()),
            ..ext("https://e.com/4.mp4", "e4")
        }, // bad options
        ext("https://e.com/5.mp4", "e1"), // duplicate in the chunk
        ext("https://e.com/6.mp4", "dup-db"), // duplicate of the database
        ext("https://e.com/7 .mp4", "e7"), // bad url (a kind cannot be bad: a JobKind)
        ext("https://e.com/8.mp4", "gone"), // purged
        url("https://e.com/9.mp4"),
    ];
    let out = s.enqueue_chunk(&chunk).await.unwrap();
    assert_eq!(out.inserted.len(), 3, "{}: {out:?}", b.name);
    assert!(out.inserted.windows(2).all(|w| w[0] < w[1]), "{out:?}");
    assert_eq!(out.duplicates, 3, "{}: {out:?}", b.name);
    let bad: Vec<usize> = out.bad.iter().map(|(i, _)| *i).collect();
    assert_eq!(bad, [1, 3, 6], "{}: {out:?}", b.name);
    for ((_, why), constraint) in out.bad.iter().zip([
        "url_must_be_http_or_https",
        "options_must_be_json_object",
        "url_must_be_http_or_https",
    ]) {
        assert!(why.contains(constraint), "{}: {why}", b.name);
    }
    let urls: Vec<String> = s
        .list(&ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.url)
        .collect();
    assert_eq!(
        urls,
        [
            "https://e.com/old.mp4",
            "https://e.com/1.mp4",
            "https://e.com/3.mp4",
            "https://e.com/9.mp4"
        ]
    );

    // A clean chunk goes in whole, duplicates counted.
    let clean = s
        .enqueue_chunk(&[
            ext("https://e.com/f1.mp4", "f1"),
            ext("https://e.com/x.mp4", "e1"),
            ext("https://e.com/f2.mp4", "f2"),
            ext("https://e.com/g.mp4", "gone"),
        ])
        .await
        .unwrap();
    assert_eq!(clean.inserted.len(), 2);
    assert!(clean.inserted[0] < clean.inserted[1]);
    assert_eq!(clean.duplicates, 2);
    assert!(clean.bad.is_empty());
    let named = s
        .ids_by_external_id(&["e1".into(), "dup-db".into(), "f2".into(), "gone".into()])
        .await
        .unwrap();
    assert_eq!(named.len(), 3);
    assert!(named.windows(2).all(|w| w[0] < w[1]));
    assert!(named.contains(&out.inserted[0]) && named.contains(&clean.inserted[1]));
    counts_agree(&b, s, "chunks").await;
}

async fn row_reads_every_column_in_canonical_form(b: Backend) {
    let id = insert(
        &b,
        "https://e.com/a.mp4",
        "kind, options, external_id, state, attempts, next_attempt_at, importly_job_id, \
         media_url, credits_used, result, last_error, created_at, updated_at, completed_at",
        "'import', '{\"a\":1}', 'x-1', 'completed', 2, '2026-12-07T10:00:00.123Z', 'job-1', \
         'https://cdn.e.com/a.mp4', 7, '{\"ok\":true}', 'earlier error', \
         '2026-12-07T09:00:00.000Z', '2026-12-07T10:05:00.500Z', '2026-12-07T10:05:00.501Z'",
    )
    .await;
    let r = b.store.row(id).await.unwrap().expect("the row");
    assert_eq!(r.id, id);
    assert_eq!(r.url, "https://e.com/a.mp4");
    assert_eq!(r.kind, "import");
    assert_eq!(json(&r.options), json!({"a": 1}));
    assert_eq!(r.external_id.as_deref(), Some("x-1"));
    assert_eq!(r.state, "completed");
    assert_eq!(r.attempts, 2);
    assert_eq!(iso(r.next_attempt_at), "2026-12-07T10:00:00.123Z");
    assert_eq!(r.importly_job_id.as_deref(), Some("job-1"));
    assert_eq!(r.media_url.as_deref(), Some("https://cdn.e.com/a.mp4"));
    assert_eq!(r.credits_used, Some(7));
    assert_eq!(r.result.as_deref().map(json), Some(json!({"ok": true})));
    assert_eq!(r.last_error.as_deref(), Some("earlier error"));
    assert_eq!(iso(r.created_at), "2026-12-07T09:00:00.000Z");
    assert_eq!(iso(r.updated_at), "2026-12-07T10:05:00.500Z");
    assert_eq!(
        r.completed_at.map(iso).as_deref(),
        Some("2026-12-07T10:05:00.501Z")
    );
    assert!(b.store.row(id + 1000).await.unwrap().is_none());
}

async fn list_filters_by_state_since_and_limit(b: Backend) {
    let t = |h: u32| format!("2026-12-07T0{h}:00:00.000Z");
    let r1 = in_state(&b, "https://e.com/1", "pending", None, &t(1)).await;
    let r2 = in_state(&b, "https://e.com/2", "failed", Some("x"), &t(2)).await;
    let r3 = in_state(&b, "https://e.com/3", "failed", Some("y"), &t(3)).await;
    let r4 = in_state(&b, "https://e.com/4", "completed", None, &t(4)).await;
    let list = |state: Option<&str>, since: Option<String>, limit: Option<u32>| ListFilter {
        state: state.map(|s| s.parse().unwrap()),
        since: since.map(|t| instant(&t)),
        limit,
    };
    let s = &b.store;
    let got = |f: ListFilter| async move { ids(&s.list(&f).await.unwrap()) };
    assert_eq!(got(list(None, None, None)).await, [r1, r2, r3, r4]);
    assert_eq!(got(list(Some("failed"), None, None)).await, [r2, r3]);
    assert_eq!(
        got(list(None, Some("2026-12-07T02:30:00.000Z".into()), None)).await,
        [r3, r4]
    );
    // At or after: the boundary row is in.
    assert_eq!(got(list(None, Some(t(2)), None)).await, [r2, r3, r4]);
    assert_eq!(
        got(list(
            Some("failed"),
            Some("2026-12-07T02:30:00.000Z".into()),
            None
        ))
        .await,
        [r3]
    );
    assert_eq!(got(list(None, None, Some(2))).await, [r1, r2]);
    assert_eq!(
        got(list(Some("cancelled"), None, None)).await,
        Vec::<i64>::new()
    );
}

async fn page_walks_by_cursor_with_state_and_search(b: Backend) {
    let at = "2026-12-07T01:00:00.000Z";
    let a = insert(&b, "https://e.com/Alpha.mp4", "external_id", "'ext-100%'").await;
    let bc = in_state(
        &b,
        "https://e.com/b_c.mp4",
        "failed",
        Some("Unsupported media"),
        at,
    )
    .await;
    let bxc = in_state(&b, "https://e.com/bxc.mp4", "failed", Some("timeout"), at).await;
    let d = insert(
        &b,
        "https://e.com/d.mp4",
        "external_id, state",
        "'x\\y', 'completed'",
    )
    .await;
    let page = |state: Option<&str>, q: Option<&str>, after: Option<i64>, limit: u32| PageFilter {
        state: state.map(|s| s.parse().unwrap()),
        q: q.map(str::to_owned),
        after,
        limit,
    };
    let s = &b.store;
    let got = |f: PageFilter| async move { ids(&s.page(&f).await.unwrap()) };
    assert_eq!(got(page(None, None, None, 2)).await, [a, bc]);
    assert_eq!(got(page(None, None, Some(bc), 2)).await, [bxc, d]);
    assert_eq!(got(page(None, None, Some(d), 2)).await, Vec::<i64>::new());
    assert_eq!(got(page(Some("failed"), None, None, 10)).await, [bc, bxc]);
    assert_eq!(got(page(Some("failed"), None, Some(bc), 10)).await, [bxc]);
    let name = b.name;
    for (q, want) in [
        ("b_c", vec![bc]), // `_` is literal, not any character
        ("100%", vec![a]),
        ("%", vec![a]), // `%` is literal
        ("x\\y", vec![d]),
        ("alpha", vec![a]), // ASCII case ignored, as SQLite's LIKE does
        ("UNSUPPORTED", vec![bc]),
        ("timeout", vec![bxc]),
        ("", vec![a, bc, bxc, d]), // an empty search is none
        ("nothing", vec![]),
    ] {
        assert_eq!(
            got(page(None, Some(q), None, 10)).await,
            want,
            "{name}: q={q}"
        );
    }
    assert_eq!(
        got(page(Some("completed"), Some("b_c"), None, 10)).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        got(page(Some("failed"), Some("e.com"), Some(bc), 10)).await,
        [bxc]
    );
}

async fn status_counts_follow_every_change(b: Backend) {
    let s = &b.store;
    let c = s.status_counts().await.unwrap();
    assert_eq!(c.counts.len(), 6);
    assert!(c.counts.values().all(|n| *n == 0));
    assert_eq!(
        (c.oldest_pending, c.last_error.is_none(), c.credits_used),
        (None, true, 0)
    );

    let ids = s
        .enqueue(&[
            url("https://e.com/1"),
            url("https://e.com/2"),
            url("https://e.com/3"),
        ])
        .await
        .unwrap();
    counts_agree(&b, s, "enqueue").await;
    let first = s.row(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        s.status_counts().await.unwrap().oldest_pending,
        Some(first.created_at)
    );

    // Rows from another program, and their changes, count the same.
    let old = insert(
        &b,
        "https://e.com/old",
        "created_at",
        "'2020-01-01T00:00:00.000Z'",
    )
    .await;
    let failed = insert(
        &b,
        "https://e.com/m",
        "kind, state, last_error, updated_at",
        "'metadata', 'failed', 'boom', '2020-01-02T00:00:00.000Z'",
    )
    .await;
    counts_agree(&b, s, "raw inserts").await;
    let c = s.status_counts().await.unwrap();
    assert_eq!(
        c.oldest_pending.map(iso).as_deref(),
        Some("2020-01-01T00:00:00.000Z")
    );
    let last = c.last_error.expect("a last error");
    assert_eq!(
        (
            last.id,
            iso(last.updated_at).as_str(),
            last.last_error.as_str()
        ),
        (failed, "2020-01-02T00:00:00.000Z", "boom")
    );

    for sql in [
        format!(
            "UPDATE imports SET state = 'completed', credits_used = 5, last_error = 'later', \
             updated_at = '2020-01-03T00:00:00.000Z' WHERE id = {old}"
        ),
        // credits alone, same state and kind
        format!("UPDATE imports SET credits_used = 7 WHERE id = {old}"),
        format!("UPDATE imports SET kind = 'import' WHERE id = {failed}"),
        // writes that change no counted column
        "UPDATE imports SET state = state, updated_at = updated_at".to_owned(),
        format!("DELETE FROM imports WHERE id = {}", ids[2]),
    ] {
        b.exec(&sql).await;
        counts_agree(&b, s, &sql).await;
    }
    let c = s.status_counts().await.unwrap();
    assert_eq!(c.credits_used, 7);
    assert_eq!(c.oldest_pending, Some(first.created_at));
    assert_eq!(c.last_error.expect("last error").id, old);

    assert_eq!(s.cancel(&[ids[1]]).await.unwrap(), [ids[1]]);
    counts_agree(&b, s, "cancel").await;
    b.exec("UPDATE imports SET state = 'failed' WHERE state = 'pending'")
        .await;
    counts_agree(&b, s, "every pending row failed").await;
    assert_eq!(s.status_counts().await.unwrap().oldest_pending, None);
    assert_eq!(s.retry(&[], true, None).await.unwrap().len(), 2);
    counts_agree(&b, s, "retry").await;
    assert_eq!(
        s.purge(instant("2030-01-01T00:00:00.000Z"), false)
            .await
            .unwrap(),
        2
    );
    counts_agree(&b, s, "purge").await;
    // A second store (another process) reads the same.
    let other = b.open_again().await;
    counts_agree(&b, &other, "nothing, from another store").await;
    other.close().await;
}

async fn recount_repairs_skewed_counts(b: Backend) {
    let s = &b.store;
    s.enqueue(&[url("https://e.com/1"), url("https://e.com/2")])
        .await
        .unwrap();
    b.exec(
        "INSERT INTO imports_counts (state, kind, n, credits) VALUES ('failed', 'import', 42, 3)",
    )
    .await;
    if b.is_postgres() {
        b.exec(
            "INSERT INTO imports_counts_delta (state, kind, n, credits) \
             VALUES ('cancelled', 'metadata', 5, 0)",
        )
        .await;
    }
    let skewed = s.status_counts().await.unwrap();
    assert_eq!(skewed.counts[&State::Failed], 42, "{}", b.name);
    s.recount().await.unwrap();
    counts_agree(&b, s, "recount").await;
    // The triggers go on from the recounted totals.
    b.exec(
        "UPDATE imports SET state = 'completed', credits_used = 4 WHERE url = 'https://e.com/1'",
    )
    .await;
    insert(&b, "https://e.com/3", "kind", "'metadata'").await;
    counts_agree(&b, s, "changes after the recount").await;
    s.recount().await.unwrap();
    counts_agree(&b, s, "a second recount").await;
    assert_eq!(s.status_counts().await.unwrap().credits_used, 4);
}

async fn queue_shape_counts_ahead_running_and_the_mean_job_time(b: Backend) {
    let s = &b.store;
    s.enqueue(&[
        url("https://e.com/1"),
        url("https://e.com/2"),
        EnqueueRow {
            kind: Some(JobKind::Metadata),
            ..url("https://e.com/m")
        },
    ])
    .await
    .unwrap();
    in_state(
        &b,
        "https://e.com/s",
        "submitting",
        None,
        "2026-12-07T10:00:00.000Z",
    )
    .await;
    insert(
        &b,
        "https://e.com/r",
        "kind, state, importly_job_id",
        "'metadata', 'running', 'job-r'",
    )
    .await;
    in_state(
        &b,
        "https://e.com/f",
        "failed",
        Some("x"),
        "2026-12-07T10:00:00.000Z",
    )
    .await;
    let empty = s.queue_shape().await.unwrap();
    assert!(empty.mean_job_ms.is_empty(), "{empty:?}");
    // Two completed imports: 10 s and 20 s from the accepted submit to completion; a
    // rate-limited exchange before one of them does not count.
    for (n, secs) in [(1, 10), (2, 20)] {
        let id = insert(
            &b,
            &format!("https://e.com/c{n}"),
            "state, completed_at, updated_at",
            &format!("'completed', '2026-12-07T10:00:{secs}.000Z', '2026-12-07T10:00:{secs}.000Z'"),
        )
        .await;
        for (outcome, finished) in [
            ("rate_limited", "2026-12-07T09:59:00.000Z"),
            ("accepted", "2026-12-07T10:00:00.000Z"),
        ] {
            b.exec(&format!(
                "INSERT INTO import_attempts (import_id, attempt, method, endpoint, started_at, \
                   finished_at, outcome, daemon_version) \
                 VALUES ({id}, 0, 'POST', '/import', '{finished}', '{finished}', '{outcome}', 't')"
            ))
            .await;
        }
    }
    let shape = s.queue_shape().await.unwrap();
    let m =
        |pairs: &[(JobKind, u64)]| -> BTreeMap<JobKind, u64> { pairs.iter().copied().collect() };
    assert_eq!(
        shape.ahead,
        m(&[(JobKind::Import, 3), (JobKind::Metadata, 1)]),
        "{}",
        b.name
    );
    assert_eq!(shape.running, m(&[(JobKind::Metadata, 1)]), "{}", b.name);
    assert_eq!(shape.mean_job_ms.len(), 1, "{shape:?}");
    let mean = shape.mean_job_ms[&JobKind::Import];
    assert!((mean - 15_000.0).abs() < 1.0, "{}: {mean}", b.name);
}

async fn retry_resets_failed_rows_only(b: Backend) {
    let s = &b.store;
    let f1 = insert(
        &b,
        "https://e.com/f1",
        "state, attempts, importly_job_id, result, completed_at, updated_at, last_error",
        "'failed', 3, 'j1', '{\"x\":1}', '2020-01-01T00:00:00.000Z', \
         '2020-01-01T00:00:00.000Z', 'boom'",
    )
    .await;
    let f2 = in_state(
        &b,
        "https://e.com/f2",
        "failed",
        Some("b"),
        "2020-12-07T03:00:00.000Z",
    )
    .await;
    let f3 = in_state(
        &b,
        "https://e.com/f3",
        "failed",
        Some("c"),
        "2020-01-01T00:00:00.000Z",
    )
    .await;
    let f4 = in_state(
        &b,
        "https://e.com/f4",
        "failed",
        Some("d"),
        "2020-01-01T00:00:00.000Z",
    )
    .await;
    let p = in_state(
        &b,
        "https://e.com/p",
        "pending",
        None,
        "2020-01-01T00:00:00.000Z",
    )
    .await;
    let c = in_state(
        &b,
        "https://e.com/c",
        "completed",
        None,
        "2020-01-01T00:00:00.000Z",
    )
    .await;

    assert_eq!(s.retry(&[f1, p, c, 9999], false, None).await.unwrap(), [f1]);
    let r = s.row(f1).await.unwrap().unwrap();
    assert_eq!(r.state, "pending");
    assert_eq!(r.attempts, 0);
    assert_eq!(
        (r.importly_job_id, r.result, r.completed_at),
        (None, None, None)
    );
    // Its history stays: the last error is kept for `show`.
    assert_eq!(r.last_error.as_deref(), Some("boom"));
    // Due now: the same instant it was changed at, after its old times.
    assert_eq!(r.next_attempt_at, r.updated_at);
    assert_canonical(&r.updated_at);
    assert_eq!(s.row(p).await.unwrap().unwrap().state, "pending");
    assert_eq!(s.row(c).await.unwrap().unwrap().state, "completed");

    // Every failed row updated since a time; named rows whatever their time.
    assert_eq!(
        s.retry(&[], true, Some(instant("2020-06-01T00:00:00.000Z")))
            .await
            .unwrap(),
        [f2]
    );
    assert_eq!(
        s.retry(&[f4], true, Some(instant("2030-01-01T00:00:00.000Z")))
            .await
            .unwrap(),
        [f4]
    );
    assert_eq!(s.retry(&[], true, None).await.unwrap(), [f3]);
    assert_eq!(s.retry(&[], true, None).await.unwrap(), Vec::<i64>::new());
    counts_agree(&b, s, "retries").await;
}

async fn cancel_cancels_pending_rows_only(b: Backend) {
    let s = &b.store;
    let ids = s
        .enqueue(&[url("https://e.com/1"), url("https://e.com/2")])
        .await
        .unwrap();
    b.exec(&format!(
        "UPDATE imports SET last_error = 'waiting for preflight metadata' WHERE id = {}",
        ids[1]
    ))
    .await;
    let f = in_state(
        &b,
        "https://e.com/f",
        "failed",
        Some("x"),
        "2020-01-01T00:00:00.000Z",
    )
    .await;
    let r = in_state(
        &b,
        "https://e.com/r",
        "running",
        None,
        "2020-01-01T00:00:00.000Z",
    )
    .await;
    assert_eq!(s.cancel(&[ids[1], f, r, ids[0], 9999]).await.unwrap(), ids);
    let one = s.row(ids[0]).await.unwrap().unwrap();
    assert_eq!(one.state, "cancelled");
    assert_eq!(one.last_error.as_deref(), Some("cancelled by operator"));
    assert_eq!(one.completed_at, Some(one.updated_at));
    assert_canonical(&one.updated_at);
    let two = s.row(ids[1]).await.unwrap().unwrap();
    assert_eq!(
        two.last_error.as_deref(),
        Some("waiting for preflight metadata"),
        "an earlier reason is kept"
    );
    assert_eq!(s.row(f).await.unwrap().unwrap().state, "failed");
    assert_eq!(s.row(r).await.unwrap().unwrap().state, "running");
    assert_eq!(s.cancel(&ids).await.unwrap(), Vec::<i64>::new());
    counts_agree(&b, s, "cancel").await;
}

async fn purge_deletes_old_finished_rows_and_remembers_their_external_ids(b: Backend) {
    let s = &b.store;
    let old = "2020-01-01T00:00:00.000Z";
    let before = instant("2020-06-01T00:00:00.000Z");
    let row = |u: &'static str, state: &'static str, external: &'static str, at: &'static str| {
        let b = &b;
        async move {
            insert(
                b,
                u,
                "state, external_id, updated_at",
                &format!("'{state}', {external}, '{at}'"),
            )
            .await
        }
    };
    let c_old = row("https://e.com/c", "completed", "'c-old'", old).await;
    let f_old = row("https://e.com/f", "failed", "'f-old'", old).await;
    let x_old = row("https://e.com/x", "cancelled", "NULL", old).await;
    let p_old = row("https://e.com/p", "pending", "'p-old'", old).await;
    let c_new = row(
        "https://e.com/n",
        "completed",
        "'c-new'",
        "2020-12-01T00:00:00.000Z",
    )
    .await;
    b.exec(&format!(
        "INSERT INTO import_attempts (import_id, attempt, method, endpoint, started_at, \
           finished_at, outcome, daemon_version) \
         VALUES ({c_old}, 0, 'POST', '/import', '{old}', '{old}', 'accepted', 't')"
    ))
    .await;

    assert_eq!(s.purge(before, true).await.unwrap(), 1);
    assert!(s.row(c_old).await.unwrap().is_none());
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM import_attempts WHERE import_id = {c_old}"
        ))
        .await,
        0,
        "its log goes with it"
    );
    assert_eq!(s.purge(before, false).await.unwrap(), 2);
    for gone in [f_old, x_old] {
        assert!(s.row(gone).await.unwrap().is_none());
    }
    for kept in [p_old, c_new] {
        assert!(s.row(kept).await.unwrap().is_some());
    }
    assert_eq!(
        b.scalar(
            "SELECT count(*) FROM purged_external_ids WHERE external_id IN ('c-old', 'f-old')"
        )
        .await,
        2
    );
    assert_eq!(
        b.scalar("SELECT count(*) FROM purged_external_ids").await,
        2
    );
    counts_agree(&b, s, "purge").await;

    // Feeding the same rows again imports nothing twice.
    assert_eq!(
        s.enqueue(&[ext("https://e.com/c", "c-old")]).await.unwrap(),
        Vec::<i64>::new()
    );
    let chunk = s
        .enqueue_chunk(&[
            ext("https://e.com/c", "c-old"),
            ext("https://e.com/f", "f-old"),
            ext("https://e.com/new", "new"),
        ])
        .await
        .unwrap();
    assert_eq!((chunk.inserted.len(), chunk.duplicates), (1, 2));

    // More than one batch.
    b.exec(
        "INSERT INTO imports (url, state, external_id) \
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 2500) \
         SELECT 'https://e.com/bulk/' || n, 'completed', 'bulk-' || n FROM g",
    )
    .await;
    b.exec(&format!(
        "UPDATE imports SET updated_at = '{old}' WHERE url LIKE 'https://e.com/bulk/%'"
    ))
    .await;
    assert_eq!(s.purge(before, true).await.unwrap(), 2500);
    assert_eq!(
        b.scalar("SELECT count(*) FROM imports WHERE url LIKE 'https://e.com/bulk/%'")
            .await,
        0
    );
    assert_eq!(
        b.scalar("SELECT count(*) FROM purged_external_ids").await,
        2502
    );
    assert_eq!(s.purge(before, false).await.unwrap(), 0);
    counts_agree(&b, s, "a purge of many batches").await;
}

async fn purge_audit_and_metadata_cache_by_age(b: Backend) {
    let s = &b.store;
    b.exec(
        "INSERT INTO audit (at, action, target, source, ok, detail) \
         VALUES ('2020-01-01T00:00:00.000Z', 'retry', '1', 'cli', '1', 'old')",
    )
    .await;
    s.audit("cancel", "2", "api", true, "new").await.unwrap();
    b.exec(
        "INSERT INTO metadata_cache (url, formats, data, fetched_at) VALUES \
         ('https://e.com/m1', '[]', '{}', '2020-01-01T00:00:00.000Z'), \
         ('https://e.com/m2', '[]', '{}', '2030-01-01T00:00:00.000Z')",
    )
    .await;
    let cut = instant("2021-01-01T00:00:00.000Z");
    assert_eq!(s.purge_audit(cut).await.unwrap(), 1);
    assert_eq!(s.purge_audit(cut).await.unwrap(), 0);
    let left = s.audit_log(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].detail.as_deref(), Some("new"));
    assert_eq!(s.purge_metadata_cache(cut).await.unwrap(), 1);
    assert_eq!(
        b.text("SELECT url FROM metadata_cache").await.as_deref(),
        Some("https://e.com/m2")
    );
}

async fn audit_log_newest_first(b: Backend) {
    let s = &b.store;
    assert!(s.audit_log(10).await.unwrap().is_empty());
    s.audit("retry", "12", "cli", true, "1 row").await.unwrap();
    s.audit("cancel", "13", "api", false, "not pending")
        .await
        .unwrap();
    s.audit("resume", "all", "api", true, "").await.unwrap();
    let log = s.audit_log(2).await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(log[0].id > log[1].id);
    assert_eq!(
        (
            log[0].action.as_str(),
            log[0].target.as_str(),
            log[0].source.as_str(),
            log[0].ok
        ),
        ("resume", "all", "api", true)
    );
    assert_eq!(
        (log[1].action.as_str(), log[1].ok, log[1].detail.as_deref()),
        ("cancel", false, Some("not pending"))
    );
    for e in &log {
        assert_canonical(&e.at);
    }
    assert!(log[0].at >= log[1].at);
    assert_eq!(s.audit_log(10).await.unwrap().len(), 3);
    assert!(
        s.audit("retry", "1", "web", true, "").await.is_err(),
        "source is checked"
    );
}

async fn failure_groups_biggest_first(b: Backend) {
    let t = |m: u32| format!("2026-12-07T01:0{m}:00.000Z");
    let _a1 = in_state(&b, "https://e.com/1", "failed", Some("A"), &t(0)).await;
    let a2 = in_state(&b, "https://e.com/2", "failed", Some("A"), &t(1)).await;
    let b1 = in_state(&b, "https://e.com/3", "failed", Some("B"), &t(5)).await;
    let none = in_state(&b, "https://e.com/4", "failed", None, &t(2)).await;
    in_state(&b, "https://e.com/5", "completed", Some("A"), &t(9)).await;
    in_state(&b, "https://e.com/6", "pending", Some("A"), &t(9)).await;
    let groups = b.store.failure_groups(10).await.unwrap();
    let got: Vec<(Option<&str>, i64, i64, String)> = groups
        .iter()
        .map(|g| (g.reason.as_deref(), g.rows, g.latest_id, iso(g.latest_at)))
        .collect();
    let (ta, tb, tn) = (t(1), t(5), t(2));
    assert_eq!(
        got,
        [
            (Some("A"), 2, a2, ta),
            (None, 1, none, tn),
            (Some("B"), 1, b1, tb),
        ],
        "{}",
        b.name
    );
    assert_eq!(b.store.failure_groups(1).await.unwrap().len(), 1);
}

async fn finished_per_minute_buckets_by_utc_minute(b: Backend) {
    for (n, state, error, at) in [
        (1, "completed", None, "2026-12-07T01:00:10.000Z"),
        (2, "completed", None, "2026-12-07T01:00:50.000Z"),
        (3, "completed", None, "2026-12-07T01:02:00.000Z"),
        (4, "completed", None, "2026-12-07T00:00:00.000Z"),
        (5, "failed", Some("A"), "2026-12-07T01:00:00.000Z"),
        (6, "failed", Some("B"), "2026-12-07T01:05:00.000Z"),
        (7, "failed", Some("A"), "2026-12-07T01:01:00.000Z"),
        (8, "pending", None, "2026-12-07T01:03:00.000Z"),
        (9, "cancelled", None, "2026-12-07T01:04:00.000Z"),
    ] {
        in_state(&b, &format!("https://e.com/{n}"), state, error, at).await;
    }
    let got = |since: &'static str| {
        let s = &b.store;
        async move {
            s.finished_per_minute(instant(since))
                .await
                .unwrap()
                .into_iter()
                .map(|m| (state::minute_text(m.minute), m.completed, m.failed))
                .collect::<Vec<_>>()
        }
    };
    let m = |minute: &str, c: i64, f: i64| (minute.to_owned(), c, f);
    // The start of a minute, as the API's throughput asks.
    assert_eq!(
        got("2026-12-07T01:00:00.000Z").await,
        [
            m("2026-12-07T01:00", 2, 1),
            m("2026-12-07T01:01", 0, 1),
            m("2026-12-07T01:02", 1, 0),
            m("2026-12-07T01:05", 0, 1),
        ],
        "{}",
        b.name
    );
    // A full time, as the dashboard asks: rows before it, in its minute, are out.
    assert_eq!(
        got("2026-12-07T01:00:30.000Z").await,
        [
            m("2026-12-07T01:00", 1, 0),
            m("2026-12-07T01:01", 0, 1),
            m("2026-12-07T01:02", 1, 0),
            m("2026-12-07T01:05", 0, 1),
        ],
        "{}",
        b.name
    );
    assert!(got("2026-12-07T02:00:00.000Z").await.is_empty());
}

async fn failed_ids_and_latest_failed(b: Backend) {
    let t = |m: u32| format!("2026-12-07T01:0{m}:00.000Z");
    let f1 = in_state(&b, "https://e.com/a.mp4", "failed", Some("timeout"), &t(3)).await;
    let f2 = in_state(
        &b,
        "https://e.com/b.mp4",
        "failed",
        Some("100% broken"),
        &t(5),
    )
    .await;
    let f3 = in_state(
        &b,
        "https://e.com/c.mp4",
        "failed",
        Some("Timeout again"),
        &t(5),
    )
    .await;
    let f4 = insert(
        &b,
        "https://e.com/d.mp4",
        "state, external_id, updated_at",
        &format!("'failed', 'bulk-7', '{}'", t(1)),
    )
    .await;
    in_state(
        &b,
        "https://e.com/e.mp4",
        "completed",
        Some("timeout"),
        &t(9),
    )
    .await;
    let s = &b.store;
    assert_eq!(s.failed_ids(None, 100).await.unwrap(), [f1, f2, f3, f4]);
    assert_eq!(s.failed_ids(Some(""), 100).await.unwrap(), [f1, f2, f3, f4]);
    assert_eq!(s.failed_ids(Some("timeout"), 100).await.unwrap(), [f1, f3]);
    assert_eq!(s.failed_ids(Some("timeout"), 1).await.unwrap(), [f1]);
    assert_eq!(s.failed_ids(Some("0%"), 100).await.unwrap(), [f2]);
    assert_eq!(s.failed_ids(Some("bulk-"), 100).await.unwrap(), [f4]);
    assert_eq!(s.failed_ids(Some("b.mp4"), 100).await.unwrap(), [f2]);
    assert_eq!(
        s.failed_ids(Some("nothing"), 100).await.unwrap(),
        Vec::<i64>::new()
    );
    // Newest first; the same time, the higher id first.
    assert_eq!(ids(&s.latest_failed(3).await.unwrap()), [f3, f2, f1]);
    assert_eq!(ids(&s.latest_failed(10).await.unwrap()), [f3, f2, f1, f4]);
    let latest = s.latest_failed(1).await.unwrap();
    assert_eq!(latest[0].last_error.as_deref(), Some("Timeout again"));
    assert_eq!(iso(latest[0].updated_at), t(5));
}

async fn export_streams_every_row_in_id_order(b: Backend) {
    let s = &b.store;
    b.exec(
        "INSERT INTO imports (url, external_id) \
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 2500) \
         SELECT 'https://e.com/x/' || n, 'x-' || n FROM g",
    )
    .await;
    b.exec(
        "UPDATE imports SET state = 'completed', importly_job_id = 'job', \
           media_url = 'https://cdn.e.com/m', credits_used = 2, \
           completed_at = '2026-12-07T10:00:00.250Z', updated_at = '2026-12-07T10:00:00.250Z' \
         WHERE external_id = 'x-7'",
    )
    .await;
    b.exec(
        "UPDATE imports SET state = 'failed', last_error = 'no', \
           updated_at = '2020-01-01T00:00:00.000Z' \
         WHERE external_id IN ('x-8', 'x-9')",
    )
    .await;
    let all: Vec<_> = s
        .export(&ListFilter::default())
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "in id order");
    let seven = all
        .iter()
        .find(|r| r.external_id.as_deref() == Some("x-7"))
        .expect("x-7");
    assert_eq!(
        (
            seven.url.as_str(),
            seven.kind.as_str(),
            seven.state.as_str(),
            seven.importly_job_id.as_deref(),
            seven.media_url.as_deref(),
            seven.credits_used,
            seven.completed_at.map(iso).as_deref(),
            seven.last_error.as_deref()
        ),
        (
            "https://e.com/x/7",
            "import",
            "completed",
            Some("job"),
            Some("https://cdn.e.com/m"),
            Some(2),
            Some("2026-12-07T10:00:00.250Z"),
            None
        )
    );
    let failed: Vec<_> = s
        .export(&ListFilter {
            state: Some(State::Failed),
            ..ListFilter::default()
        })
        .map(|r| r.unwrap().external_id.unwrap())
        .collect()
        .await;
    assert_eq!(failed, ["x-8", "x-9"]);
    let since: Vec<_> = s
        .export(&ListFilter {
            since: Some(instant("2026-12-07T10:00:00.250Z")),
            ..ListFilter::default()
        })
        .map(|r| r.unwrap().external_id.unwrap())
        .collect()
        .await;
    // x-7, and every row inserted just now (updated at the real clock, after 2026-12-07 or
    // not: only x-7 is certain), never the failed rows of 2020.
    assert!(since.contains(&"x-7".to_owned()), "{}", b.name);
    assert!(!since.iter().any(|e| e == "x-8" || e == "x-9"));
    let limited = s
        .export(&ListFilter {
            limit: Some(10),
            ..ListFilter::default()
        })
        .count()
        .await;
    assert_eq!(limited, 10);
    // A reader that stops early leaves the store usable.
    for _ in 0..20 {
        let mut stream = s.export(&ListFilter::default());
        assert!(stream.next().await.expect("a first row").is_ok());
    }
    assert_eq!(s.list(&ListFilter::default()).await.unwrap().len(), 2500);
}

async fn select_ids_progress_of_and_unsuccessful_among(b: Backend) {
    let s = &b.store;
    let a = insert(
        &b,
        "https://e.com/a",
        "external_id, state, updated_at, completed_at, created_at",
        "'batch1-a', 'completed', '2026-12-07T10:00:00.000Z', '2026-12-07T10:00:00.000Z', \
         '2026-12-07T09:00:00.000Z'",
    )
    .await;
    let bb = insert(
        &b,
        "https://e.com/b",
        "external_id, updated_at, created_at",
        "'batch1-b', '2026-12-07T11:00:00.000Z', '2026-12-07T09:30:00.000Z'",
    )
    .await;
    let c = insert(
        &b,
        "https://e.com/c",
        "external_id, state, last_error, updated_at, created_at",
        "'batch2-c', 'failed', 'x', '2026-12-07T10:30:00.000Z', '2026-12-07T08:00:00.000Z'",
    )
    .await;
    let d = insert(
        &b,
        "https://e.com/d",
        "state, updated_at, created_at",
        "'cancelled', '2026-12-07T10:40:00.000Z', '2026-12-07T10:00:00.000Z'",
    )
    .await;
    assert_eq!(
        s.select_ids(None, None, None, false).await.unwrap(),
        [a, bb, c, d]
    );
    assert_eq!(
        s.select_ids(None, None, Some("batch1-"), false)
            .await
            .unwrap(),
        [a, bb]
    );
    assert_eq!(
        s.select_ids(None, None, Some("batch1-"), true)
            .await
            .unwrap(),
        [bb]
    );
    assert_eq!(
        s.select_ids(Some(&[d, a, 9999]), None, None, false)
            .await
            .unwrap(),
        [a, d]
    );
    assert_eq!(
        s.select_ids(Some(&[]), None, None, false).await.unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(
        s.select_ids(None, Some(instant("2026-12-07T09:00:00.000Z")), None, false)
            .await
            .unwrap(),
        [a, bb, d]
    );
    assert_eq!(
        s.select_ids(
            Some(&[a, bb, c]),
            Some(instant("2026-12-07T09:15:00.000Z")),
            Some("batch"),
            true
        )
        .await
        .unwrap(),
        [bb]
    );

    let p = s.progress_of(&[a, bb, c, d]).await.unwrap();
    let counts: BTreeMap<State, i64> = [
        (State::Cancelled, 1),
        (State::Completed, 1),
        (State::Failed, 1),
        (State::Pending, 1),
    ]
    .into();
    assert_eq!(p.counts, counts);
    assert_eq!(
        p.last_update.map(iso).as_deref(),
        Some("2026-12-07T11:00:00.000Z")
    );
    let p = s.progress_of(&[a, c]).await.unwrap();
    assert_eq!(
        p.last_update.map(iso).as_deref(),
        Some("2026-12-07T10:30:00.000Z")
    );
    assert_eq!(s.progress_of(&[]).await.unwrap(), Default::default());

    assert_eq!(
        ids(&s.unsuccessful_among(&[a, bb, c, d], 10).await.unwrap()),
        [c, d]
    );
    assert_eq!(ids(&s.unsuccessful_among(&[d, c], 1).await.unwrap()), [c]);
    assert_eq!(
        ids(&s.unsuccessful_among(&[a, bb], 10).await.unwrap()),
        Vec::<i64>::new()
    );
}

// ---- PostgreSQL only: the counts under concurrency, and their cost ----

async fn raw_pool(b: &Backend, n: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(n)
        .connect(b.db.url().expect("a PostgreSQL URL"))
        .await
        .expect("raw pool")
}

/// The fold as the migration documents it, run by hand (without the store's lock).
const FOLD: &str = "WITH moved AS (DELETE FROM imports_counts_delta RETURNING state, kind, n, credits) \
     INSERT INTO imports_counts AS c (state, kind, n, credits) \
     SELECT state, kind, sum(n), sum(credits) FROM moved GROUP BY state, kind ORDER BY state, kind \
     ON CONFLICT (state, kind) DO UPDATE \
         SET n = c.n + excluded.n, credits = c.credits + excluded.credits";

/// Writers changing states in bulk (over 1,000 delta rows a statement) while several stores
/// read (and so fold) the counts, a hand-run fold races them and a recount runs now and
/// then: no change is lost or counted twice.
async fn counts_fold_and_stay_exact_under_concurrent_writers(b: Backend) {
    b.exec(
        "INSERT INTO imports (url, kind, credits_used) \
         SELECT 'https://e.com/' || g, CASE WHEN g % 5 = 0 THEN 'metadata' ELSE 'import' END, \
                g % 3 \
         FROM generate_series(1, 4000) g",
    )
    .await;
    assert_eq!(
        b.scalar("SELECT count(*) FROM imports_counts_delta").await,
        4000
    );
    counts_agree(&b, &b.store, "a bulk insert").await;
    assert_eq!(
        b.scalar("SELECT count(*) FROM imports_counts_delta").await,
        0,
        "status_counts folds a grown delta"
    );
    assert_eq!(
        b.scalar("SELECT CAST(sum(n) AS BIGINT) FROM imports_counts")
            .await,
        4000
    );

    let raw = raw_pool(&b, 6).await;
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..4i64 {
        let (raw, writing) = (raw.clone(), writing.clone());
        tasks.spawn(async move {
            // Bulk state changes (over 1,000 delta rows in one commit) ...
            for round in 0..6 {
                let (from, to) = match round % 3 {
                    0 => ("pending", "failed"),
                    1 => ("failed", "completed"),
                    _ => ("completed", "pending"),
                };
                let sql = format!(
                    "UPDATE imports SET state = '{to}', credits_used = {round} \
                     WHERE state = '{from}' AND id % 4 = {k}"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&raw)
                    .await
                    .expect("writer");
            }
            // ... then a daemon's many small ones, committing all the time, so commits
            // land inside the folds.
            for i in 0..3000 {
                let sql = format!(
                    "UPDATE imports SET state = CASE WHEN state = 'pending' THEN 'failed' \
                       ELSE 'pending' END, credits_used = {i} % 5 WHERE id = {}",
                    1 + k + 4 * (i % 1000)
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&raw)
                    .await
                    .expect("writer");
            }
            writing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let still_writing = move || writing.load(std::sync::atomic::Ordering::SeqCst) > 0;
    for _ in 0..3 {
        let (store, still_writing) = (b.open_again().await, still_writing.clone());
        tasks.spawn(async move {
            while still_writing() {
                store.status_counts().await.expect("status_counts");
            }
            store.close().await;
        });
    }
    {
        let (raw, still_writing) = (raw.clone(), still_writing.clone());
        tasks.spawn(async move {
            while still_writing() {
                sqlx::query(FOLD).execute(&raw).await.expect("fold by hand");
            }
        });
    }
    {
        let store = b.open_again().await;
        tasks.spawn(async move {
            // While the bulk changes go on; not to the end, where a recount would repair
            // what a broken fold lost.
            for _ in 0..3 {
                store.recount().await.expect("recount");
            }
            store.close().await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    counts_agree(&b, &b.store, "concurrent writers, folds and recounts").await;
    let per_kind = |sql: &'static str| {
        let raw = raw.clone();
        async move {
            let rows: Vec<(String, String, i64, i64)> =
                sqlx::query_as(sql).fetch_all(&raw).await.unwrap();
            rows
        }
    };
    assert_eq!(
        per_kind(
            "SELECT state, kind, sum(n)::bigint, sum(credits)::bigint FROM \
               (SELECT state, kind, n, credits FROM imports_counts \
                UNION ALL SELECT state, kind, n, credits FROM imports_counts_delta) t \
             GROUP BY state, kind HAVING sum(n) <> 0 OR sum(credits) <> 0 ORDER BY 1, 2"
        )
        .await,
        per_kind(
            "SELECT state, kind, count(*), coalesce(sum(credits_used), 0)::bigint FROM imports \
             GROUP BY state, kind ORDER BY 1, 2"
        )
        .await,
        "per state and kind"
    );
    raw.close().await;
}

/// A user's transaction left open after inserting a row (a psql session in BEGIN) holds up
/// no daemon: another row's claim, another insert, the counts and their fold all go ahead;
/// the row counts once it commits.
async fn an_open_insert_blocks_no_claim_and_no_count(b: Backend) {
    use sqlx::Connection;
    let s = &b.store;
    let ids = s
        .enqueue(&[url("https://e.com/1"), url("https://e.com/2")])
        .await
        .unwrap();
    let mut user = sqlx::PgConnection::connect(b.db.url().expect("URL"))
        .await
        .expect("user connection");
    let mut open = user.begin().await.expect("BEGIN");
    sqlx::query("INSERT INTO imports (url) VALUES ('https://e.com/open')")
        .execute(&mut *open)
        .await
        .unwrap();
    let quick = Duration::from_secs(5);
    let claim = format!(
        "UPDATE imports SET state = 'submitting', owner = 1, claimed_at = now() WHERE id = {}",
        ids[0]
    );
    tokio::time::timeout(quick, b.exec(&claim))
        .await
        .expect("a claim waits for the open transaction");
    tokio::time::timeout(quick, s.enqueue(&[url("https://e.com/3")]))
        .await
        .expect("an insert waits for the open transaction")
        .unwrap();
    // Enough deltas that status_counts folds while the open row's delta is uncommitted.
    b.exec(
        "INSERT INTO imports (url) SELECT 'https://e.com/bulk/' || g FROM generate_series(1, 1500) g",
    )
    .await;
    let c = tokio::time::timeout(quick, s.status_counts())
        .await
        .expect("status_counts waits for the open transaction")
        .unwrap();
    assert_eq!(c.counts[&State::Pending], 1 + 1 + 1500);
    assert_eq!(c.counts[&State::Submitting], 1);
    assert_eq!(
        b.scalar("SELECT count(*) FROM imports_counts_delta").await,
        0,
        "folded what was committed"
    );
    tokio::time::timeout(quick, s.recount())
        .await
        .expect("recount waits for the open transaction")
        .unwrap();
    open.commit().await.unwrap();
    counts_agree(&b, s, "the open transaction's commit").await;
    assert_eq!(
        s.status_counts().await.unwrap().counts[&State::Pending],
        1503
    );
    user.close().await.ok();
}

/// `status_counts` and `queue_shape` read a few rows whatever the table's size: on 200,000
/// rows, neither starts a sequential scan of `imports` (the server's own statistics say so,
/// flushed when the store's connections end).
async fn status_counts_and_queue_shape_never_scan_the_table(b: Backend) {
    b.exec(
        "INSERT INTO imports (url, kind, state, importly_job_id, last_error, completed_at, \
                              credits_used, created_at, updated_at) \
         SELECT 'https://e.com/' || g, CASE WHEN g % 7 = 0 THEN 'metadata' ELSE 'import' END, \
                CASE WHEN g % 100 = 0 THEN 'pending' WHEN g % 100 = 1 THEN 'failed' \
                     WHEN g % 100 = 2 THEN 'running' ELSE 'completed' END, \
                'job-' || g, CASE WHEN g % 100 = 1 THEN 'boom' END, \
                now() - (g || ' seconds')::interval, 1, \
                now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval \
         FROM generate_series(1, 200000) g",
    )
    .await;
    b.exec("ANALYZE imports").await;
    // Fold the bulk's deltas by hand first: the test's own connections never read imports,
    // so every scan counted from here on is the store's.
    b.exec(FOLD).await;
    let seq_scans = "SELECT CAST(seq_scan AS BIGINT) FROM pg_stat_user_tables \
                     WHERE relname = 'imports'";
    let idx_scans = "SELECT CAST(idx_scan AS BIGINT) FROM pg_stat_user_tables \
                     WHERE relname = 'imports'";
    let seq_before = b.scalar(seq_scans).await;
    let idx_before = b.scalar(idx_scans).await;

    let store = b.open_again().await;
    let started = Instant::now();
    let c = store.status_counts().await.unwrap();
    let shape = store.queue_shape().await.unwrap();
    let took = started.elapsed();
    store.close().await;
    assert_eq!(c.counts[&State::Pending], 2000);
    assert_eq!(c.counts[&State::Failed], 2000);
    assert!(c.oldest_pending.is_some() && c.last_error.is_some());
    assert_eq!(shape.running.values().sum::<u64>(), 2000);

    // The closed connections flush their statistics as they exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (seq, idx) = loop {
        let idx = b.scalar(idx_scans).await;
        if idx > idx_before || Instant::now() > deadline {
            break (b.scalar(seq_scans).await, idx);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        idx > idx_before,
        "the store's index scans were never reported"
    );
    assert_eq!(
        seq, seq_before,
        "a sequential scan of imports (took {took:?})"
    );
}

/// The instant canonical text `t` names.
fn instant(t: &str) -> std::time::SystemTime {
    importlyd::clock::parse_iso(t).unwrap_or_else(|| panic!("not a time: {t}"))
}

/// `imports` is the users' table: a time in it that the canonical text cannot show (before
/// 1970, either backend; text that is no time, SQLite's `created_at` and the like) reads as
/// the epoch, and every read of rows goes on working. The daemon's own tables are read
/// strictly: a garbled time in the failure log is an error naming the column.
async fn odd_times_users_write_read_as_the_epoch_and_garbled_logs_are_errors(b: Backend) {
    let s = &b.store;
    let epoch = SystemTime::UNIX_EPOCH;
    let old = insert(
        &b,
        "https://e.com/old",
        "next_attempt_at",
        "'1960-01-01 00:00:00'",
    )
    .await;
    assert_eq!(s.row(old).await.unwrap().unwrap().next_attempt_at, epoch);
    let mut odd = vec![old];
    if !b.is_postgres() {
        // SQLite keeps what strftime() cannot parse as written (migration 0004).
        let garbled = insert(
            &b,
            "https://e.com/garbled",
            "state, created_at, updated_at, completed_at",
            "'completed', 'yesterday', 'now-ish', 'soon'",
        )
        .await;
        let r = s.row(garbled).await.unwrap().unwrap();
        assert_eq!(
            (r.created_at, r.updated_at, r.completed_at),
            (epoch, epoch, Some(epoch))
        );
        assert_eq!(
            importlyd::service::row_json(&r)["created_at"],
            json!("1970-01-01T00:00:00.000Z")
        );
        odd.push(garbled);
    }
    let fine = insert(&b, "https://e.com/fine", "", "").await;
    odd.push(fine);
    let listed: Vec<i64> = s
        .list(&ListFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed.len(), odd.len(), "{listed:?}");
    let exported: Vec<i64> = s
        .export(&ListFilter::default())
        .map(|r| r.unwrap().id)
        .collect()
        .await;
    assert_eq!(exported, odd);
    s.status_counts().await.unwrap();
    s.finished_per_minute(epoch).await.unwrap();
    s.progress_of(&odd).await.unwrap();
    // The scheduler asks this every tick: the row due before 1970 is due at the epoch, not
    // an error that stops every claim.
    assert_eq!(s.next_due(JobKind::Import).await.unwrap(), Some(epoch));

    if !b.is_postgres() {
        // (PostgreSQL's timestamptz holds no such text.)
        b.exec(&format!(
            "INSERT INTO import_attempts (import_id, attempt, method, endpoint, started_at, \
             finished_at, outcome, daemon_version) \
             VALUES ({fine}, 1, 'POST', '/import', 'garbage', '2026-12-07T10:00:00.000Z', \
                     'transient', '0')"
        ))
        .await;
        let err = s
            .attempts(fine)
            .await
            .expect_err("a garbled time is an error");
        let text = err.to_string();
        assert!(
            text.contains("started_at") && text.contains("not a time: \"garbage\""),
            "{text}"
        );
    }
}
