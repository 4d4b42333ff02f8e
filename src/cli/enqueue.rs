//! `importlyd enqueue`: insert rows from arguments, a file or standard input.
//!
//! URLs given as arguments are one transaction: a bad one is a usage error (exit 2) and
//! nothing is inserted. A file is either one URL a line or CSV with the columns
//! `url,options,external_id` (a header line naming them is optional; blank lines and `#`
//! comments are skipped); every line is read as a CSV record, so a plain URL is a record of
//! one field. A file is read as a stream and inserted [`CHUNK`] rows per transaction, so other
//! writers (the daemon) are never locked out for long, however long the file. Its bad lines
//! are skipped, not fatal: a 100,000-line file with one typo should not hold back the rest.
//! They are reported with their line numbers and the exit status is then 1.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::{CmdResult, Failure};
use crate::importly::JobKind;
use crate::store::{EnqueueRow, Store};

/// Rows per transaction when reading a file.
pub const CHUNK: usize = 1000;

/// Bad lines printed one by one; beyond this only their number.
const BAD_LINES_SHOWN: usize = 100;

/// What `enqueue` queued, for `--wait`.
#[derive(Debug, Default)]
pub struct Queued {
    /// The rows the command named: inserted now, or already queued under the same
    /// external_id.
    pub ids: BTreeSet<i64>,
}

/// Queues the rows; returns what was queued even when the command failed part-way (bad
/// lines, a read error), for `--wait`.
pub async fn enqueue(
    store: &Store,
    urls: Vec<String>,
    options: Option<String>,
    kind: Option<JobKind>,
    file: Option<PathBuf>,
) -> (Queued, CmdResult) {
    let mut queued = Queued::default();
    let outcome = enqueue_into(store, urls, options, kind, file, &mut queued).await;
    (queued, outcome)
}

async fn enqueue_into(
    store: &Store,
    urls: Vec<String>,
    options: Option<String>,
    kind: Option<JobKind>,
    file: Option<PathBuf>,
    queued: &mut Queued,
) -> CmdResult {
    if urls.is_empty() && file.is_none() {
        return Err(Failure::usage("nothing to enqueue: give URLs or --file"));
    }
    if !urls.is_empty() {
        let rows: Vec<EnqueueRow> = urls
            .into_iter()
            .map(|url| EnqueueRow {
                url,
                kind,
                options: options.clone(),
                external_id: None,
            })
            .collect();
        let ids = store.enqueue(&rows).await?;
        report_queued(&ids);
        queued.ids.extend(ids);
    }
    if let Some(path) = file {
        let defaults = EnqueueRow {
            url: String::new(),
            kind,
            options,
            external_id: None,
        };
        enqueue_file(store, &path, &defaults, queued).await?;
    }
    Ok(())
}

fn report_queued(ids: &[i64]) {
    match (ids.iter().min(), ids.iter().max()) {
        (Some(first), Some(last)) if first != last => {
            outln!("queued {} rows (ids {first}..{last})", ids.len())
        }
        (Some(first), _) => outln!("queued 1 row (id {first})"),
        _ => outln!("queued 0 rows"),
    }
}

/// The counts of a file's run, printed at its end.
#[derive(Debug, Default)]
struct Tally {
    inserted: Vec<i64>,
    duplicates: usize,
    /// (line, reason)
    bad: Vec<(u64, String)>,
    bad_count: usize,
}

impl Tally {
    fn bad_line(&mut self, line: u64, reason: String) {
        self.bad_count += 1;
        if self.bad.len() < BAD_LINES_SHOWN {
            self.bad.push((line, reason));
        }
    }
}

async fn enqueue_file(
    store: &Store,
    path: &Path,
    defaults: &EnqueueRow,
    queued: &mut Queued,
) -> CmdResult {
    let (input, size): (Box<dyn Read>, Option<u64>) = if path.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| Failure::usage(format!("--file {}: {e}", path.display())))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let progress = progress_bar(size);
    let mut tally = Tally::default();
    let read = read_and_insert(store, input, defaults, &progress, &mut tally, queued).await;
    progress.finish_and_clear();
    // The summary always, even after a failure part-way: what is queued stays queued.
    print_summary(&mut tally);
    read.map_err(|e| match e {
        Stop::Read(e) => Failure {
            code: 1,
            message: format!("--file {}: {e}", path.display()),
        },
        Stop::Store(f) => f,
    })?;
    if tally.bad_count > 0 {
        return Err(Failure {
            code: 1,
            message: format!(
                "{} bad lines in {} were skipped (the rest is queued): fix them and enqueue \
                 just those lines",
                tally.bad_count,
                path.display()
            ),
        });
    }
    Ok(())
}

/// Why reading a file stopped before its end.
enum Stop {
    Read(csv::Error),
    Store(Failure),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Store(f)
    }
}

/// Reads the file record by record and inserts it chunk by chunk, counting into `tally`.
async fn read_and_insert(
    store: &Store,
    input: Box<dyn Read>,
    defaults: &EnqueueRow,
    progress: &ProgressBar,
    tally: &mut Tally,
    queued: &mut Queued,
) -> Result<(), Stop> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .buffer_capacity(64 * 1024)
        .from_reader(std::io::BufReader::new(input));
    let mut chunk: Vec<(u64, EnqueueRow)> = Vec::with_capacity(CHUNK);
    let mut first = true;
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, |p| p.line());
                let header = std::mem::take(&mut first) && is_header(&record);
                if header {
                    continue;
                }
                match parse_record(&record, defaults) {
                    Ok(Some(row)) => chunk.push((line, row)),
                    Ok(None) => {}
                    Err(reason) => tally.bad_line(line, reason),
                }
            }
            // A line that is not CSV (or not UTF-8) is a bad line like any other; an I/O
            // error ends the run (what was committed stays).
            Err(e) if !matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                let at = e.position().map_or(line, |p| p.line());
                tally.bad_line(at, e.to_string());
            }
            Err(e) => {
                insert_chunk(store, &mut chunk, tally, queued).await?;
                return Err(Stop::Read(e));
            }
        }
        if chunk.len() >= CHUNK {
            insert_chunk(store, &mut chunk, tally, queued).await?;
            progress.set_position(reader.position().byte());
            progress.set_message(format!(
                "{} inserted, {} duplicates, {} bad lines",
                tally.inserted.len(),
                tally.duplicates,
                tally.bad_count
            ));
        }
    }
    insert_chunk(store, &mut chunk, tally, queued).await?;
    Ok(())
}

/// A bar over the file's bytes on a terminal; nothing otherwise (a pipe or a log gets the
/// summary only).
fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} read, {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    }
}

fn print_summary(tally: &mut Tally) {
    // Chunks report their bad rows when they are inserted, after the unparseable lines
    // found on the way.
    tally.bad.sort_by_key(|(line, _)| *line);
    for (line, reason) in &tally.bad {
        errln!("importlyd: line {line}: {reason}");
    }
    if tally.bad_count > tally.bad.len() {
        errln!(
            "importlyd: ... and {} more bad lines",
            tally.bad_count - tally.bad.len()
        );
    }
    report_queued(&tally.inserted);
    outln!(
        "inserted {}, duplicates {} (external_id already queued, or purged), bad lines {}",
        tally.inserted.len(),
        tally.duplicates,
        tally.bad_count
    );
}

async fn insert_chunk(
    store: &Store,
    chunk: &mut Vec<(u64, EnqueueRow)>,
    tally: &mut Tally,
    queued: &mut Queued,
) -> CmdResult {
    if chunk.is_empty() {
        return Ok(());
    }
    let rows: Vec<EnqueueRow> = chunk.iter().map(|(_, r)| r.clone()).collect();
    let done = store.enqueue_chunk(&rows).await?;
    tally.duplicates += done.duplicates;
    for (i, reason) in done.bad {
        let (line, row) = &chunk[i];
        tally.bad_line(*line, format!("{reason} ({})", row.url));
    }
    queued.ids.extend(done.inserted.iter().copied());
    if done.duplicates > 0 {
        // The rows already queued under these external ids belong to this batch too.
        let external: Vec<String> = rows.iter().filter_map(|r| r.external_id.clone()).collect();
        queued
            .ids
            .extend(store.ids_by_external_id(&external).await?);
    }
    tally.inserted.extend(done.inserted);
    chunk.clear();
    Ok(())
}

/// The optional first line `url,options,external_id`.
fn is_header(record: &csv::StringRecord) -> bool {
    record.get(0).is_some_and(|f| f.eq_ignore_ascii_case("url"))
}

/// One record as a row: `Ok(None)` for a line with nothing on it, `Err` naming what is wrong
/// for a line that cannot be a row. `defaults` fill in the kind, and the options of a line
/// without its own.
pub fn parse_record(
    record: &csv::StringRecord,
    defaults: &EnqueueRow,
) -> Result<Option<EnqueueRow>, String> {
    if record.len() > 3 {
        return Err(format!(
            "expected url,options,external_id but found {} fields \
             (quote options JSON that contains commas)",
            record.len()
        ));
    }
    let field = |n: usize| record.get(n).filter(|s| !s.is_empty()).map(str::to_owned);
    let Some(url) = field(0) else {
        return if record.iter().all(str::is_empty) {
            Ok(None)
        } else {
            Err("no URL in the first field".into())
        };
    };
    Ok(Some(EnqueueRow {
        url,
        kind: defaults.kind,
        options: field(1).or_else(|| defaults.options.clone()),
        external_id: field(2),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, defaults: &EnqueueRow) -> Vec<Result<Option<EnqueueRow>, String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'#'))
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes())
            .records()
            .map(|r| parse_record(&r.unwrap(), defaults))
            .collect()
    }

    #[test]
    fn plain_and_csv_lines_take_the_default_options_only_when_they_have_none() {
        let defaults = EnqueueRow {
            options: Some(r#"{"videoQuality":"480p"}"#.into()),
            kind: Some(JobKind::Metadata),
            ..EnqueueRow::default()
        };
        let rows = parse(
            "# list\nhttps://a/1\n\nhttps://a/2,\"{\"\"videoQuality\"\":\"\"720p\"\"}\",asset-2\nhttps://a/3,,asset-3\n",
            &defaults,
        );
        let rows: Vec<EnqueueRow> = rows.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0].options.as_deref(),
            Some(r#"{"videoQuality":"480p"}"#)
        );
        assert_eq!(
            rows[1].options.as_deref(),
            Some(r#"{"videoQuality":"720p"}"#)
        );
        assert_eq!(rows[1].external_id.as_deref(), Some("asset-2"));
        assert_eq!(
            rows[2].options.as_deref(),
            Some(r#"{"videoQuality":"480p"}"#)
        );
        assert!(rows.iter().all(|r| r.kind == Some(JobKind::Metadata)));
        let bad = parse(
            "https://a/1,{\"a\":1,\"b\":2},x\n,{},x\n",
            &EnqueueRow::default(),
        );
        assert!(bad.iter().all(Result::is_err), "{bad:?}");
    }
}
