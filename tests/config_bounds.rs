//! Issue 11: absurd durations in the config are refused at load (exit 2, the key named),
//! before any of them can overflow time arithmetic in the daemon.

mod common;

use common::*;

/// Every duration key, with a value past the 30-day bound and one below its minimum.
const KEYS: [(&str, &str, &str); 11] = [
    ("api", "request_timeout", "0s"),
    ("limits.import", "window", "500ms"),
    ("limits.status", "window", "0s"),
    ("limits.metadata", "window", "999ms"),
    ("retry", "base_delay", "0s"),
    ("retry", "max_delay", "500us"),
    ("poll", "status_interval", "0s"),
    ("poll", "queue_interval", "1ns"),
    ("pause", "probe_interval", "0s"),
    ("limits", "probe_delay", "0s"),
    ("metadata", "cache_ttl", ""),
];

/// `importlyd migrate` with a config of one key (migrate loads the whole config, and creates
/// the database, so an accepted config exits 0).
async fn migrate_with(dir: &std::path::Path, section: &str, line: &str) -> Out {
    let db = dir.join("q.db");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\npath = {:?}\n[{section}]\n{line}\n",
            db.to_str().expect("utf-8 temp path")
        ),
    )
    .expect("write config");
    cli(&path, &["migrate"]).await
}

#[tokio::test]
async fn a_duration_past_thirty_days_or_below_its_minimum_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (section, key, too_small) in KEYS {
        let full = format!("{section}.{key}");
        let mut cases = vec![
            format!("{key} = \"100000000d\""),
            format!("{key} = \"31d\""),
        ];
        if !too_small.is_empty() {
            cases.push(format!("{key} = \"{too_small}\""));
        }
        for line in cases {
            let out = migrate_with(dir.path(), section, &line).await;
            assert_eq!(out.code(), Some(2), "[{section}] {line}: {out:?}");
            assert!(
                out.stderr.contains(&format!("`{full}`")),
                "[{section}] {line}: stderr does not name {full}: {}",
                out.stderr
            );
            assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        }
    }
}

#[tokio::test]
async fn thirty_days_and_the_minimums_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    for (section, key, line) in [
        ("retry", "max_delay", "max_delay = \"30d\""),
        ("pause", "probe_interval", "probe_interval = \"30d\""),
        ("poll", "queue_interval", "queue_interval = \"1ms\""),
        ("limits.import", "window", "window = \"1s\""),
        ("metadata", "cache_ttl", "cache_ttl = \"0s\""),
    ] {
        let out = migrate_with(dir.path(), section, line).await;
        assert_eq!(out.code(), Some(0), "[{section}] {key}: {out:?}");
    }
}

/// `importlyd run` with a config text: exits before touching any database when the config
/// is bad (these URLs point nowhere).
async fn run_with(dir: &std::path::Path, text: &str) -> Out {
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).expect("write config");
    cli(&path, &["run"]).await
}

#[tokio::test]
async fn a_lease_too_short_for_a_request_or_a_bad_database_url_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults: a 30 s lease cannot cover a 30 s request timeout plus three beats.
    let out = run_with(
        dir.path(),
        "[database]\nurl = \"postgres://importlyd:s3cret@127.0.0.1:9/q\"\n",
    )
    .await;
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("`cluster.lease`"), "{}", out.stderr);
    assert!(out.stderr.contains("api.request_timeout"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("s3cret"),
        "the password is never shown: {}",
        out.stderr
    );
    let out = run_with(
        dir.path(),
        "[database]\nurl = \"postgres://u@127.0.0.1:9/q\"\n[cluster]\nlease = \"5s\"\n\
         [api]\nrequest_timeout = \"4s\"\n",
    )
    .await;
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("`cluster.lease`"), "{}", out.stderr);
    for bad in [
        "mysql://u:s3cret@h/q",
        "not a url s3cret",
        "postgres:///nohost",
    ] {
        let out = run_with(
            dir.path(),
            &format!("[database]\nurl = {bad:?}\n[cluster]\nlease = \"60s\"\n"),
        )
        .await;
        assert_eq!(out.code(), Some(2), "{bad}: {out:?}");
        assert!(
            out.stderr.contains("`database.url`"),
            "{bad}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("s3cret"), "{bad}: {}", out.stderr);
    }
}
