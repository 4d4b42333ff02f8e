//! The operator commands as a user meets them: the real `importlyd` binary on real SQLite
//! files, the simulator and an in-process daemon where rows must really fail.
//! Issue 11 (closed pipes, wrong database paths, `--options` with `--file`, value enums,
//! retry/cancel exit codes) and issue 15 (completions, man, export, enqueue at scale).

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use importlyd::config::Config;
use serde_json::Value;

/// A config in `dir` whose database is `dir/NAME`.
fn config_for(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut cfg = Config::default();
    let db = dir.join(name);
    cfg.database.path = db.clone();
    (write_config(dir, &cfg), db)
}

fn said(out: &Out) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

// ---- issue 11: a closed pipe ----

/// A pipe whose reading end is already closed: every write to the other end fails with
/// EPIPE, at once and every time, whatever the command prints and however fast.
fn widowed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // Close-on-exec: a child another test spawns meanwhile must not inherit the reading end
    // and keep the pipe open. (The command's own stdout is a dup2 copy, which keeps it.)
    // SAFETY: pipe2() fills both descriptors on success; each is owned exactly once below.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors from pipe2(), owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

/// `importlyd list | head -3` and friends: every command that prints ends quietly, exit 0
/// and no panic, when its reader has gone; both when the pipe is closed before the first
/// write and when it closes half-way through a long output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _db) = config_for(dir.path(), "q.db");
    let file = dir.path().join("urls.txt");
    let urls: String = (0..20_000)
        .map(|i| format!("https://media.example.com/clip-{i}.mp4\n"))
        .collect();
    std::fs::write(&file, urls).unwrap();
    cli(&config, &["enqueue", "--file", file.to_str().unwrap()])
        .await
        .ok();

    let commands: &[&[&str]] = &[
        &["list"],
        &["list", "--json"],
        &["status"],
        &["status", "--json"],
        &["show", "1"],
        &["ticket", "1"],
        &["export"],
        &["export", "--format", "jsonl"],
        &["enqueue", "https://media.example.com/more.mp4"],
        &["cancel", "2"],
        &["resume"],
        &["migrate"],
        &["completions", "bash"],
        &["man"],
        &["--help"],
    ];
    for args in commands {
        let mut c = command(Some(KEY));
        c.arg("--config")
            .arg(&config)
            .args(*args)
            .stdout(Stdio::from(widowed_pipe()))
            .stderr(Stdio::piped());
        // spawn, not output(): tokio's output() pipes stdout itself.
        let child = c.spawn().expect("command starts");
        let out = tokio::time::timeout(secs(60), child.wait_with_output())
            .await
            .expect("ends within 60 s")
            .expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }

    // Both stdout and stderr closed (`2>&1 | head`): the bad-line report on stderr does not
    // panic either, and the exit status still says there were bad lines.
    let bad = dir.path().join("bad.txt");
    std::fs::write(
        &bad,
        "ftp://media.example.com/a.mp4\nhttps://media.example.com/b.mp4\n",
    )
    .unwrap();
    let mut c = command(Some(KEY));
    c.arg("--config")
        .arg(&config)
        .args(["enqueue", "--file", bad.to_str().unwrap()])
        .stdout(Stdio::from(widowed_pipe()))
        .stderr(Stdio::from(widowed_pipe()));
    let status = c.status().await.expect("enqueue runs");
    assert_eq!(
        status.code(),
        Some(1),
        "1 for the bad line, not a panic's 101"
    );

    // Half-way: the reader takes the first lines of a long output (far more than a pipe
    // holds), then goes away, as `head -3` does.
    for args in [&["list"][..], &["export"][..]] {
        let mut c = command(Some(KEY));
        c.arg("--config")
            .arg(&config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("command starts");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut first = [0u8; 256];
        tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut first)
            .await
            .expect("the first lines");
        drop(stdout);
        let out = tokio::time::timeout(secs(60), child.wait_with_output())
            .await
            .expect("ends within 60 s")
            .expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

// ---- issue 11: a wrong database path ----

/// The commands that read or change rows refuse a path with no database, exit 1, and leave
/// no file behind; `migrate` and `enqueue` create one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_a_missing_database_say_so_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db) = config_for(dir.path(), "missing.db");
    let commands: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["list"],
        &["show", "1"],
        &["ticket", "1"],
        &["ticket", "--failed", "--dir", "tickets"],
        &["retry", "1"],
        &["retry", "--failed"],
        &["cancel", "1"],
        &["resume"],
        &["purge", "--older-than", "30d"],
        &["export"],
    ];
    for args in commands {
        let out = cli(&config, args).await;
        assert_eq!(out.code(), Some(1), "{args:?}: {}", said(&out));
        let expected = format!("no database at {}", db.display());
        assert!(out.stderr.contains(&expected), "{args:?}: {}", said(&out));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("missing.db"))
            .collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }

    cli(&config, &["migrate"]).await.ok();
    assert!(db.is_file(), "migrate creates the database");
    let (config2, db2) = config_for(&dir.path().join("sub").tap_mkdir(), "fresh.db");
    cli(&config2, &["enqueue", "https://media.example.com/a.mp4"])
        .await
        .ok();
    assert!(db2.is_file(), "enqueue creates the database");
    let st = cli(&config, &["status", "--json"]).await.ok().json();
    assert_eq!(st["counts"]["pending"], 0, "{st}");
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

// ---- issue 11: --options with --file ----

/// `--options` is the default of every file line without options of its own: plain URL
/// lines and CSV lines with an empty options field take it, CSV lines with options keep
/// theirs. URL arguments take it as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_the_default_of_file_lines_without_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db_path) = config_for(dir.path(), "q.db");
    let default = r#"{"videoQuality":"480p"}"#;
    let plain = dir.path().join("urls.txt");
    std::fs::write(&plain, "https://e.com/p1.mp4\nhttps://e.com/p2.mp4\n").unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(
        &csv,
        "url,options,external_id\n\
         https://e.com/c1.mp4,\"{\"\"videoQuality\"\":\"\"1080p\"\"}\",c1\n\
         https://e.com/c2.mp4,,c2\n\
         https://e.com/c3.mp4\n",
    )
    .unwrap();
    for file in [&plain, &csv] {
        cli(
            &config,
            &[
                "enqueue",
                "--options",
                default,
                "--file",
                file.to_str().unwrap(),
            ],
        )
        .await
        .ok();
    }
    cli(
        &config,
        &["enqueue", "--options", default, "https://e.com/a1.mp4"],
    )
    .await
    .ok();
    let db = Db::connect(&db_path).await;
    let options: Vec<(String, Value)> = db
        .rows()
        .await
        .into_iter()
        .map(|r| (r.url, serde_json::from_str(&r.options).unwrap()))
        .collect();
    db.close().await;
    let quality = |url: &str| {
        options
            .iter()
            .find(|(u, _)| u == url)
            .map(|(_, o)| o["videoQuality"].clone())
            .unwrap_or_else(|| panic!("{url} not queued: {options:?}"))
    };
    for url in [
        "https://e.com/p1.mp4",
        "https://e.com/p2.mp4",
        "https://e.com/c2.mp4",
        "https://e.com/c3.mp4",
        "https://e.com/a1.mp4",
    ] {
        assert_eq!(quality(url), "480p", "{url}: {options:?}");
    }
    assert_eq!(quality("https://e.com/c1.mp4"), "1080p", "{options:?}");

    let help = cli(&config, &["enqueue", "--help"]).await.ok().stdout;
    assert!(help.contains("no options of its own"), "{help}");
}

// ---- issue 11: value enums ----

/// A state, format, kind or shell that does not exist is a usage error (exit 2) listing
/// the valid ones, not an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_states_formats_and_kinds_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _db) = config_for(dir.path(), "q.db");
    cli(&config, &["migrate"]).await.ok();
    for (args, valid) in [
        (&["list", "--state", "bogus"][..], "cancelled"),
        (&["export", "--state", "bogus"][..], "submitting"),
        (&["export", "--format", "xml"][..], "jsonl"),
        (&["ticket", "1", "--format", "pdf"][..], "markdown"),
        (
            &["enqueue", "--kind", "video", "https://e.com/a.mp4"][..],
            "metadata",
        ),
        (&["completions", "tcsh"][..], "zsh"),
    ] {
        let out = cli(&config, args).await;
        assert_eq!(out.code(), Some(2), "{args:?}: {}", said(&out));
        assert!(
            out.stderr.contains("possible values") && out.stderr.contains(valid),
            "{args:?}: {}",
            out.stderr
        );
    }
    let listed = cli(&config, &["list", "--state", "failed", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(listed, Value::Array(vec![]));
}

// ---- issue 11: retry and cancel agree ----

/// `retry` and `cancel` act on every named row they can, say why they left the others
/// alone, and exit 1 if they left any; 0 when every named row was acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_cancel_do_what_they_can_and_exit_1_for_the_rest() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    // A 400 fails the row at once: a real failed row, from the real daemon.
    let failed = db.insert("https://media.example.com/bad/a.mp4").await;
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_until("the /bad row fails", secs(30), || async {
        db.row(failed).await.state == "failed"
    })
    .await;
    daemon.stop().await;
    let pending = db.insert("https://media.example.com/b.mp4").await;
    let missing = pending + 100;

    let out = cli(
        &config,
        &[
            "retry",
            &failed.to_string(),
            &pending.to_string(),
            &missing.to_string(),
        ],
    )
    .await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stdout.contains("1 rows back to pending"),
        "{}",
        said(&out)
    );
    assert!(
        out.stdout.contains(&format!(
            "row {pending} is pending: only failed rows can be retried"
        )),
        "{}",
        said(&out)
    );
    assert!(
        out.stdout
            .contains(&format!("row {missing} does not exist")),
        "{}",
        said(&out)
    );
    assert!(out.stderr.contains("2 of the rows named were not retried"));
    assert_eq!(
        db.row(failed).await.state,
        "pending",
        "what could be done was"
    );

    // Nothing left to retry: no row was named, nothing was refused.
    let out = cli(&config, &["retry", "--failed"]).await.ok();
    assert!(
        out.stdout.contains("0 rows back to pending"),
        "{}",
        said(&out)
    );

    let out = cli(
        &config,
        &["cancel", &failed.to_string(), &missing.to_string()],
    )
    .await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(out.stdout.contains("cancelled 1 rows"), "{}", said(&out));
    assert!(
        out.stdout
            .contains(&format!("row {missing} does not exist"))
    );
    let out = cli(&config, &["retry", &failed.to_string()]).await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stdout.contains(&format!(
            "row {failed} is cancelled: only failed rows can be retried"
        )),
        "{}",
        said(&out)
    );
    let out = cli(&config, &["cancel", &pending.to_string()]).await.ok();
    assert!(out.stdout.contains("cancelled 1 rows"), "{}", said(&out));
    db.close().await;
    sim.shutdown().await;
}

// ---- issue 15: completions and man ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_man_page_are_printed_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db) = config_for(dir.path(), "q.db");
    let bash = cli(&config, &["completions", "bash"]).await.ok().stdout;
    for word in [
        "_importlyd()",
        "enqueue",
        "export",
        "--state",
        "complete -F",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}:\n{bash}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = cli(&config, &["completions", shell]).await.ok().stdout;
        assert!(script.contains("enqueue"), "{shell}:\n{script}");
    }
    let man = cli(&config, &["man"]).await.ok().stdout;
    assert!(man.starts_with(".ie") || man.starts_with(".TH"), "{man}");
    for word in [
        ".TH importlyd 1",
        ".SH NAME",
        ".SH SUBCOMMANDS",
        "enqueue",
        "export",
    ] {
        assert!(man.contains(word), "man page lacks {word}:\n{man}");
    }
    assert!(!db.exists(), "completions and man need no database");
}

// ---- issue 15: export ----

/// Every contracted column, in order; fields with commas, quotes and line breaks survive
/// a round trip through a CSV reader; JSON lines parse to the same values; --state and
/// --since filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_the_contracted_columns_as_csv_and_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db_path) = config_for(dir.path(), "q.db");
    let db = Db::create(&db_path).await;
    let tricky = "a, \"quoted\" id\nwith a second line";
    let url = "https://media.example.com/x,y.mp4?title=\"z\"";
    let error = "import job failed at Importly: \"Unsupported\", code 7\r\nsee logs";
    let a: i64 =
        sqlx::query_scalar("INSERT INTO imports (url, external_id) VALUES (?, ?) RETURNING id")
            .bind(url)
            .bind(tricky)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::query(
        "UPDATE imports SET state = 'failed', last_error = ?, \
         completed_at = '2026-11-25T10:00:00.000Z' WHERE id = ?",
    )
    .bind(error)
    .bind(a)
    .execute(&db.pool)
    .await
    .unwrap();
    let b = db.insert("https://media.example.com/b.mp4").await;
    sqlx::query(
        "UPDATE imports SET state = 'completed', importly_job_id = 'imp_1', \
         media_url = 'https://cdn.example.com/b.mp4', credits_used = 3, \
         completed_at = '2026-11-25T11:00:00.000Z' WHERE id = ?",
    )
    .bind(b)
    .execute(&db.pool)
    .await
    .unwrap();
    let old = db.insert("https://media.example.com/old.mp4").await;
    sqlx::query("UPDATE imports SET updated_at = '2020-01-01T00:00:00.000Z' WHERE id = ?")
        .bind(old)
        .execute(&db.pool)
        .await
        .unwrap();
    db.close().await;

    let header = [
        "id",
        "external_id",
        "url",
        "kind",
        "state",
        "importly_job_id",
        "media_url",
        "credits_used",
        "completed_at",
        "last_error",
    ];
    let a_s = a.to_string();
    let b_s = b.to_string();
    let old_s = old.to_string();
    let expected: Vec<Vec<&str>> = vec![
        vec![
            &a_s,
            tricky,
            url,
            "import",
            "failed",
            "",
            "",
            "",
            "2026-11-25T10:00:00.000Z",
            error,
        ],
        vec![
            &b_s,
            "",
            "https://media.example.com/b.mp4",
            "import",
            "completed",
            "imp_1",
            "https://cdn.example.com/b.mp4",
            "3",
            "2026-11-25T11:00:00.000Z",
            "",
        ],
        vec![
            &old_s,
            "",
            "https://media.example.com/old.mp4",
            "import",
            "pending",
            "",
            "",
            "",
            "",
            "",
        ],
    ];

    let parse_csv = |text: &str| -> (Vec<String>, Vec<Vec<String>>) {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let head = r.headers().unwrap().iter().map(str::to_owned).collect();
        let rows = r
            .records()
            .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
            .collect();
        (head, rows)
    };
    let out = cli(&config, &["export"]).await.ok();
    let (head, rows) = parse_csv(&out.stdout);
    assert_eq!(head, header, "{}", out.stdout);
    assert_eq!(rows, expected, "{}", out.stdout);

    let out = cli(&config, &["export", "--state", "completed"]).await.ok();
    assert_eq!(parse_csv(&out.stdout).1, expected[1..2], "{}", out.stdout);
    let out = cli(&config, &["export", "--since", "1h"]).await.ok();
    assert_eq!(parse_csv(&out.stdout).1, expected[..2], "{}", out.stdout);
    let out = cli(&config, &["export", "--state", "cancelled"]).await.ok();
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "the header only: {}",
        out.stdout
    );

    let out = cli(&config, &["export", "--format", "jsonl"]).await.ok();
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    for (line, want) in lines.iter().zip(&expected) {
        let keys: Vec<&str> = line
            .as_object()
            .expect("an object a line")
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted_header = header.to_vec();
        sorted_header.sort_unstable();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort_unstable();
        assert_eq!(sorted_keys, sorted_header, "{line}");
        for (k, v) in header.iter().zip(want) {
            let got = match &line[*k] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(&got, v, "{k} of {line}");
        }
    }
    assert!(lines[1]["credits_used"].is_i64() && lines[1]["id"].is_i64());
    assert!(lines[0]["importly_job_id"].is_null());
}

// ---- issue 15: enqueue --file at scale ----

/// 100,000 lines in chunks: all queued, the summary says so; fed again, all duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_line_file_is_queued_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db_path) = config_for(dir.path(), "q.db");
    let file = dir.path().join("batch.csv");
    let mut text = String::from("url,options,external_id\n");
    for i in 0..100_000 {
        text.push_str(&format!(
            "https://media.example.com/clip-{i}.mp4,,asset-{i}\n"
        ));
    }
    std::fs::write(&file, text).unwrap();
    let out = cli(&config, &["enqueue", "--file", file.to_str().unwrap()])
        .await
        .ok();
    assert!(
        out.stdout.contains(
            "inserted 100000, duplicates 0 (external_id already queued, or purged), bad lines 0"
        ),
        "{}",
        said(&out)
    );
    let db = Db::connect(&db_path).await;
    assert_eq!(db.count("pending").await, 100_000);
    let ids: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, external_id FROM imports ORDER BY id LIMIT 2 OFFSET 54321")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(ids[0].1, "asset-54321", "file order kept: {ids:?}");
    db.close().await;
    let out = cli(&config, &["enqueue", "--file", file.to_str().unwrap()])
        .await
        .ok();
    assert!(
        out.stdout.contains(
            "inserted 0, duplicates 100000 (external_id already queued, or purged), bad lines 0"
        ),
        "{}",
        said(&out)
    );
}

/// Bad lines are skipped and named by their line numbers (a header, comments, blank lines
/// and a quoted field over two lines counted right); duplicates by external_id, in the file
/// and against the database, are counted; the good rows are queued; exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_reported_by_number_and_the_rest_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db_path) = config_for(dir.path(), "q.db");
    cli(
        &config,
        &["enqueue", "--file", "-"], // nothing from stdin: an empty file
    )
    .await
    .ok();
    let db = Db::connect(&db_path).await;
    sqlx::query(
        "INSERT INTO imports (url, external_id) VALUES ('https://e.com/old.mp4', 'dup-db')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let file = dir.path().join("batch.csv");
    let lines = [
        "url,options,external_id",         // 1 header
        "# a comment",                     // 2
        "https://e.com/1.mp4,,e1",         // 3
        "ftp://e.com/2.mp4,,e2",           // 4 bad url
        "",                                // 5 blank
        "https://e.com/3.mp4,,\"e3 over",  // 6 a quoted field ...
        "two lines\"",                     // 7 ... over two lines
        "https://e.com/4.mp4,not json,e4", // 8 bad options
        "https://e.com/5.mp4,,e1",         // 9 duplicate in the file
        "https://e.com/6.mp4,,dup-db",     // 10 duplicate of the database
        "https://e.com/7.mp4,{},e7,extra", // 11 four fields
        ",{},e8",                          // 12 no url
        "https://e.com/9.mp4",             // 13
    ];
    let mut bytes = (lines.join("\n") + "\n").into_bytes();
    bytes.extend(b"https://e.com/\xff.mp4,,e14\n"); // 14 not UTF-8
    std::fs::write(&file, bytes).unwrap();
    let out = cli(&config, &["enqueue", "--file", file.to_str().unwrap()]).await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stdout.contains(
            "inserted 3, duplicates 2 (external_id already queued, or purged), bad lines 5"
        ),
        "{}",
        said(&out)
    );
    let named: Vec<u64> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("importlyd: line "))
        .map(|l| l.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(named, [4, 8, 11, 12, 14], "{}", out.stderr);
    assert!(
        out.stderr
            .contains("url_must_be_http_or_https (ftp://e.com/2.mp4)")
    );
    assert!(out.stderr.contains("options_must_be_json_object"));
    let urls: Vec<String> = db.rows().await.into_iter().map(|r| r.url).collect();
    assert_eq!(
        urls,
        [
            "https://e.com/old.mp4",
            "https://e.com/1.mp4",
            "https://e.com/3.mp4",
            "https://e.com/9.mp4"
        ]
    );
    let three = db.rows().await.remove(2);
    assert_eq!(three.external_id.as_deref(), Some("e3 over\ntwo lines"));
    db.close().await;
}

// ---- issue 15: wait and enqueue --wait ----

/// A row another program queued for an hour from now: never finished during a test, so a
/// wait that followed it would not end.
async fn insert_postponed(db: &Db, url: &str, external_id: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO imports (url, external_id, next_attempt_at) \
         VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 hour')) RETURNING id",
    )
    .bind(url)
    .bind(external_id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// `enqueue --wait` against the real daemon follows exactly the rows it queued: it ends,
/// exit 0, once they are completed, while a row outside the batch is still pending. Off a
/// terminal it prints progress lines and a final count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wait_follows_exactly_its_rows_to_the_end() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let other = insert_postponed(&db, "https://media.example.com/later.mp4", "other-1").await;
    let mut daemon = Proc::start(&config, Some(KEY), "daemon");
    let out = cli(
        &config,
        &[
            "enqueue",
            "--wait",
            "https://media.example.com/a.mp4",
            "https://media.example.com/b.mp4",
            "https://media.example.com/c.mp4",
            "https://media.example.com/d.mp4",
        ],
    )
    .await
    .ok();
    assert!(out.stdout.contains("queued 4 rows"), "{}", said(&out));
    assert!(
        out.stdout.contains("4 rows: 4 completed in"),
        "{}",
        said(&out)
    );
    assert!(
        out.stdout.lines().any(|l| l.contains("/4 finished")),
        "{}",
        said(&out)
    );
    assert_eq!(db.count("completed").await, 4, "{}", db.dump().await);
    assert_eq!(db.row(other).await.state, "pending");

    // A file fed twice: the second run inserts nothing and follows the rows already queued
    // under its external ids (finished: it ends at once).
    let file = dir.path().join("batch.csv");
    std::fs::write(
        &file,
        "https://media.example.com/e.mp4,,x-1
https://media.example.com/f.mp4,,x-2
",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = cli(&config, &["enqueue", "--file", path, "--wait"])
        .await
        .ok();
    assert!(
        out.stdout.contains("2 rows: 2 completed in"),
        "{}",
        said(&out)
    );
    let out = cli(&config, &["enqueue", "--file", path, "--wait"])
        .await
        .ok();
    assert!(
        out.stdout
            .contains("inserted 0, duplicates 2 (external_id already queued, or purged)")
            && out.stdout.contains("2 rows: 2 completed in"),
        "{}",
        said(&out)
    );
    assert_eq!(db.row(other).await.state, "pending");
    daemon.terminate(secs(20)).await;
    db.close().await;
    sim.shutdown().await;
}

/// `wait --external-id-prefix` follows the batch only; a failed row makes it exit 1 with
/// a summary naming the row and its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_1_and_names_the_rows_that_failed() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    insert_postponed(&db, "https://media.example.com/later.mp4", "other-1").await;
    let file = dir.path().join("batch.csv");
    std::fs::write(
        &file,
        "https://media.example.com/ok.mp4,,batch-1\n\
         https://media.example.com/fail/clip.mp4,,batch-2\n\
         https://media.example.com/ok2.mp4,,batch-3\n",
    )
    .unwrap();
    cli(&config, &["enqueue", "--file", file.to_str().unwrap()])
        .await
        .ok();
    let failing: i64 = sqlx::query_scalar("SELECT id FROM imports WHERE external_id = 'batch-2'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let mut daemon = Proc::start(&config, Some(KEY), "daemon");
    let out = cli(&config, &["wait", "--external-id-prefix", "batch-"]).await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stdout.contains("3 rows: 2 completed, 1 failed in"),
        "{}",
        said(&out)
    );
    assert!(
        out.stdout.contains(&format!(
            "row {failing} failed (https://media.example.com/fail/clip.mp4): "
        )),
        "{}",
        said(&out)
    );
    assert!(
        out.stderr.contains("1 of 3 rows did not complete"),
        "{}",
        said(&out)
    );
    daemon.terminate(secs(20)).await;
    db.close().await;
    sim.shutdown().await;
}

/// With no daemon, `wait` says so once nothing changed for --stall-after; Ctrl-C detaches
/// (exit 130) and leaves the rows queued. A row id that does not exist is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_without_a_daemon_says_so_and_ctrl_c_leaves_the_rows_queued() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (config, db_path) = config_for(dir.path(), "q.db");
    let db = Db::create(&db_path).await;
    let a = db.insert("https://media.example.com/a.mp4").await;
    let b = db.insert("https://media.example.com/b.mp4").await;

    let out = cli(&config, &["wait", &a.to_string(), "999"]).await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stderr.contains("no row with id [999]"),
        "{}",
        said(&out)
    );

    let mut c = command(Some(KEY));
    c.arg("--config")
        .arg(&config)
        .args([
            "wait",
            &a.to_string(),
            &b.to_string(),
            "--stall-after",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().expect("wait starts");
    let pid = child.id().expect("pid");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let stall = line.contains("no daemon seems to be running against this database");
            seen.push(line);
            if stall {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen:?}");
    assert!(seen[0].contains("0/2 finished: 2 pending"), "{seen:?}");

    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let rest = tokio::time::timeout(secs(30), async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("stdout closes");
    let exit = tokio::time::timeout(secs(30), child.wait())
        .await
        .expect("wait exits on SIGINT")
        .expect("status");
    assert_eq!(exit.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("detached: 2 of 2 rows unfinished stay queued")),
        "{rest:?}"
    );
    assert_eq!(db.count("pending").await, 2);
    db.close().await;
}

/// `export` streams: 200,000 rows of about 600 bytes (some 120 MB of CSV) go out while the
/// process's peak RSS stays far below what holding them would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db_path) = config_for(dir.path(), "q.db");
    let db = Db::create(&db_path).await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) \
         INSERT INTO imports (url, external_id, last_error) \
         SELECT 'https://media.example.com/clip-' || i || '.mp4', 'asset-' || i, \
                'an error, \"quoted\", ' || printf('%.560c', 'x') FROM n",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db.close().await;
    let out_path = dir.path().join("export.csv");
    let mut c = std::process::Command::new(BIN);
    c.arg("--config")
        .arg(&config)
        .arg("export")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit());
    let child = c.spawn().expect("export starts");
    let pid = child.id() as libc::pid_t;
    // wait4, not Child::wait: it reports this child's own peak RSS.
    let (status, peak_kib) = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own unreaped child; both pointers are valid for the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
        (status, usage.ru_maxrss)
    })
    .await
    .unwrap();
    drop(child);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status}"
    );
    let size = std::fs::metadata(&out_path).unwrap().len();
    assert!(size > 120_000_000, "exported {size} bytes");
    let mut reader = csv::Reader::from_path(&out_path).unwrap();
    let mut rows = 0;
    for rec in reader.records() {
        let rec = rec.unwrap();
        assert_eq!(rec.len(), 10);
        rows += 1;
    }
    assert_eq!(rows, 200_000);
    assert!(
        peak_kib < 60 * 1024,
        "export of {size} bytes peaked at {peak_kib} KiB"
    );
    eprintln!("export of {size} bytes: peak RSS {peak_kib} KiB");
}

/// A file is read as a stream and committed chunk by chunk: while `enqueue --file -` waits
/// for the rest of its input, its first 1,000 rows are already queued and another program
/// inserts at once, its row landing between the two chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_committed_chunk_by_chunk_so_other_writers_get_in_between() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (config, db_path) = config_for(dir.path(), "q.db");
    let db = Db::create(&db_path).await;
    let mut c = command(Some(KEY));
    c.arg("--config")
        .arg(&config)
        .args(["enqueue", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().expect("enqueue starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = |range: std::ops::Range<u32>| -> String {
        range
            .map(|i| format!("https://media.example.com/clip-{i}.mp4\n"))
            .collect()
    };
    stdin.write_all(lines(0..1500).as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    wait_until("the first chunk is committed", secs(30), || async {
        db.count("pending").await == 1000
    })
    .await;
    let between = db.insert("https://other.example.com/x.mp4").await;
    stdin.write_all(lines(1500..2500).as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(secs(60), child.wait_with_output())
        .await
        .expect("enqueue ends")
        .expect("wait");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "inserted 2500, duplicates 0 (external_id already queued, or purged), bad lines 0"
        ),
        "{stdout}"
    );
    assert_eq!(
        between, 1001,
        "the other program's row lands between the chunks"
    );
    assert_eq!(db.count("pending").await, 2501);
    db.close().await;
}

/// A daemon busy with long jobs changes no row for a while, but it is running: `wait` does
/// not claim otherwise (it also watches the budgets the daemon saves as it works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_does_not_call_a_daemon_with_long_jobs_missing() {
    let sim = start_sim(importlyd::sim::SimConfig {
        job_duration: secs(6),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let mut daemon = Proc::start(&config, Some(KEY), "daemon");
    let out = cli(
        &config,
        &[
            "enqueue",
            "--wait",
            "--stall-after",
            "3s",
            "https://media.example.com/long.mp4",
        ],
    )
    .await
    .ok();
    assert!(
        out.stdout.contains("1 row: 1 completed in"),
        "{}",
        said(&out)
    );
    assert!(
        !out.stdout.contains("no daemon seems to be running"),
        "{}",
        said(&out)
    );
    daemon.terminate(secs(20)).await;
    db.close().await;
    sim.shutdown().await;
}
