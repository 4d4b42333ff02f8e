//! `importlyd wait` and `enqueue --wait`: follow a fixed set of rows until every one is
//! terminal. The set is chosen once, at the start (rows queued later are not followed), and
//! watched by reading the database: `wait` needs no connection to the daemon, only the same
//! database.
//!
//! On a terminal: a progress bar on stderr with the counts and the rate. Elsewhere (a pipe,
//! CI, journald): one line on stdout when the counts change, at most every [`LINE_EVERY`].
//! Exit 0 when every row completed, 1 when any failed, was cancelled or vanished (with a
//! short summary of those), 130 on Ctrl-C, which only detaches: the rows stay queued.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};

use super::{CmdResult, Failure};
use crate::config::Config;
use crate::store::{RowsProgress, State, Store};

/// How often the rows are read again: each look reads every row of the set, so a large
/// set is looked at less often.
fn tick(rows: usize) -> Duration {
    if rows > 10_000 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(500)
    }
}

/// Off a terminal, the least time between two progress lines.
const LINE_EVERY: Duration = Duration::from_secs(3);

/// Failed or cancelled rows named one by one in the final summary.
const FAILURES_SHOWN: u32 = 10;

/// Which rows to follow (`wait`'s arguments).
#[derive(Debug, Default)]
pub struct Selection {
    pub ids: Vec<i64>,
    /// Rows created at or after it.
    pub since: Option<SystemTime>,
    pub external_id_prefix: Option<String>,
}

pub async fn wait(store: &Store, cfg: &Config, sel: Selection, stall_after: Duration) -> CmdResult {
    let named = (!sel.ids.is_empty()).then_some(&sel.ids[..]);
    // With no selector at all: every row not finished now ("until the queue drains").
    let nothing_chosen = named.is_none() && sel.since.is_none() && sel.external_id_prefix.is_none();
    let ids = store
        .select_ids(
            named,
            sel.since,
            sel.external_id_prefix.as_deref(),
            nothing_chosen,
        )
        .await?;
    let unknown: Vec<i64> = sel
        .ids
        .iter()
        .copied()
        .filter(|i| !ids.contains(i))
        .collect();
    if !unknown.is_empty() {
        return Err(Failure {
            code: 1,
            message: format!("no row with id {unknown:?}"),
        });
    }
    follow(store, cfg, ids, stall_after).await
}

/// Follows exactly `ids` until every one is terminal.
pub async fn follow(
    store: &Store,
    cfg: &Config,
    ids: Vec<i64>,
    stall_after: Duration,
) -> CmdResult {
    if ids.is_empty() {
        outln!("no rows to wait for");
        return Ok(());
    }
    let total = ids.len() as u64;
    let mut view = View::new(total);
    let started = Instant::now();
    let first = Snapshot::of(store.progress_of(&ids).await?, total);
    let done_at_start = first.finished();
    let mut last = first;
    let mut last_change = Instant::now();
    let mut last_heartbeat = latest_heartbeat(store).await?;
    let mut stalled = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut estimate: Option<(Instant, String)> = None;
    loop {
        let now = Snapshot::of(store.progress_of(&ids).await?, total);
        if estimate
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= ESTIMATE_EVERY)
        {
            estimate = Some((Instant::now(), drain_estimate(store, cfg).await));
        }
        // A daemon is alive when a followed row changed, or when its heartbeat row moved (it
        // does every 10 s while it runs, even while long jobs change no row).
        let heartbeat = latest_heartbeat(store).await?;
        if now.progress != last.progress || heartbeat != last_heartbeat {
            last_change = Instant::now();
            stalled = false;
        }
        last = now;
        last_heartbeat = heartbeat;
        let rate = Rate::new(last.finished() - done_at_start, started.elapsed());
        view.show(&last, rate, estimate.as_ref().map(|(_, e)| e.as_str()));
        if last.unfinished() == 0 {
            break;
        }
        // Neither a row nor the budgets changed: nobody is working on this database. (The
        // daemon heartbeat `status` is to show is the surer sign, once there is one.)
        if !stalled && last_change.elapsed() >= stall_after {
            stalled = true;
            view.note(&format!(
                "no daemon seems to be running against this database (none of these {total} \
                 rows changed, and no daemon heartbeat moved, for {})",
                humantime::format_duration(stall_after)
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(tick(ids.len())) => {}
            _ = &mut ctrl_c => {
                view.finish();
                outln!(
                    "detached: {} of {total} rows unfinished stay queued; the daemon goes on \
                     with them",
                    last.unfinished()
                );
                return Err(Failure { code: 130, message: "interrupted".into() });
            }
        }
    }
    view.finish();
    outln!(
        "{}: {} in {}",
        total_rows(total),
        last.summary(),
        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
    );
    let unsuccessful = last.unsuccessful();
    if unsuccessful == 0 {
        return Ok(());
    }
    for r in store.unsuccessful_among(&ids, FAILURES_SHOWN).await? {
        outln!(
            "  row {} {} ({}): {}",
            r.id,
            r.state,
            r.url,
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    let listed = last.count(State::Failed) + last.count(State::Cancelled);
    if listed > i64::from(FAILURES_SHOWN) {
        outln!(
            "  ... and {} more (`importlyd list --state failed`)",
            listed - i64::from(FAILURES_SHOWN)
        );
    }
    if listed > 0 {
        outln!("(`importlyd ticket ID` prints a failed row's support ticket)");
    }
    Err(Failure {
        code: 1,
        message: format!("{unsuccessful} of {total} rows did not complete"),
    })
}

fn total_rows(n: u64) -> String {
    if n == 1 {
        "1 row".into()
    } else {
        format!("{n} rows")
    }
}

/// The rows' states at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    progress: RowsProgress,
    total: u64,
}

impl Snapshot {
    fn of(progress: RowsProgress, total: u64) -> Snapshot {
        Snapshot { progress, total }
    }

    fn count(&self, state: State) -> i64 {
        self.progress.counts.get(&state).copied().unwrap_or(0)
    }

    /// Rows of the set no longer in the table (deleted by another program).
    fn missing(&self) -> u64 {
        let present: i64 = self.progress.counts.values().sum();
        self.total
            .saturating_sub(u64::try_from(present).unwrap_or(0))
    }

    fn finished(&self) -> u64 {
        let terminal =
            self.count(State::Completed) + self.count(State::Failed) + self.count(State::Cancelled);
        u64::try_from(terminal).unwrap_or(0) + self.missing()
    }

    fn unfinished(&self) -> u64 {
        self.total.saturating_sub(self.finished())
    }

    fn unsuccessful(&self) -> u64 {
        self.finished()
            .saturating_sub(u64::try_from(self.count(State::Completed)).unwrap_or(0))
    }

    /// "3 completed, 1 failed, 2 running, 4 pending": the states that have rows, in the
    /// order a row travels.
    fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let by_state: &BTreeMap<State, i64> = &self.progress.counts;
        for state in [
            State::Completed,
            State::Failed,
            State::Cancelled,
            State::Running,
            State::Submitting,
            State::Pending,
        ] {
            if let Some(n) = by_state.get(&state).filter(|n| **n > 0) {
                parts.push(format!("{n} {state}"));
            }
        }
        if self.missing() > 0 {
            parts.push(format!("{} deleted meanwhile", self.missing()));
        }
        parts.join(", ")
    }
}

/// Rows finished per minute since the wait began.
#[derive(Clone, Copy, Debug)]
struct Rate(Option<f64>);

impl Rate {
    fn new(finished: u64, elapsed: Duration) -> Rate {
        let secs = elapsed.as_secs_f64();
        Rate((secs >= 1.0 && finished > 0).then(|| finished as f64 * 60.0 / secs))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(r) if r >= 10.0 => write!(f, "{r:.0}/min"),
            Some(r) => write!(f, "{r:.1}/min"),
            None => write!(f, "-/min"),
        }
    }
}

/// The newest daemon heartbeat on this database (the `daemons` table `status` reads).
async fn latest_heartbeat(store: &Store) -> Result<Option<SystemTime>, crate::store::StoreError> {
    // Ordered newest heartbeat first.
    Ok(store
        .daemons()
        .await?
        .into_iter()
        .next()
        .map(|d| d.heartbeat_at))
}

/// How often the drain estimate is worked out again (a few indexed reads).
const ESTIMATE_EVERY: Duration = Duration::from_secs(5);

/// When the queue ahead will be done and what limits it (`crate::estimate`); the rows
/// followed are part of that queue, so their end comes at the latest then.
async fn drain_estimate(store: &Store, cfg: &Config) -> String {
    let now = SystemTime::now();
    match super::report::drain_estimate(store, cfg, now).await {
        Ok(e) => e.line(|t| super::report::clock_text(t, now)),
        Err(e) => format!("no estimate ({e})"),
    }
}

/// Where progress goes: a bar on a terminal, lines elsewhere.
enum View {
    Bar(ProgressBar),
    Lines {
        last_line: String,
        last_at: Option<Instant>,
    },
}

impl View {
    fn new(total: u64) -> View {
        if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template("{bar:30} {pos}/{len} finished  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            View::Bar(ProgressBar::new(total).with_style(style))
        } else {
            View::Lines {
                last_line: String::new(),
                last_at: None,
            }
        }
    }

    fn show(&mut self, now: &Snapshot, rate: Rate, estimate: Option<&str>) {
        let estimate = estimate
            .filter(|_| now.unfinished() > 0)
            .map(|e| format!("; {e}"))
            .unwrap_or_default();
        match self {
            View::Bar(bar) => {
                bar.set_position(now.finished());
                bar.set_message(format!("{}; {rate}{estimate}", now.summary()));
            }
            View::Lines { last_line, last_at } => {
                let line = format!(
                    "{}/{} finished: {}{estimate}",
                    now.finished(),
                    now.total,
                    now.summary()
                );
                let due = last_at.is_none_or(|t| t.elapsed() >= LINE_EVERY);
                // The last line always goes out: it is the one a log reader looks for.
                if line != *last_line && (due || now.unfinished() == 0) {
                    outln!("{line} ({rate})");
                    *last_line = line;
                    *last_at = Some(Instant::now());
                }
            }
        }
    }

    fn note(&self, text: &str) {
        match self {
            View::Bar(bar) => bar.println(text),
            View::Lines { .. } => outln!("{text}"),
        }
    }

    fn finish(&self) {
        if let View::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pairs: &[(&str, i64)], total: u64) -> Snapshot {
        Snapshot::of(
            RowsProgress {
                counts: pairs
                    .iter()
                    .map(|(s, n)| (s.parse().unwrap(), *n))
                    .collect(),
                last_update: None,
            },
            total,
        )
    }

    #[test]
    fn counts_treat_deleted_rows_as_finished_but_not_completed() {
        let s = snap(&[("completed", 3), ("failed", 1), ("running", 2)], 8);
        assert_eq!(s.missing(), 2);
        assert_eq!(s.finished(), 6);
        assert_eq!(s.unfinished(), 2);
        assert_eq!(s.unsuccessful(), 3);
        assert_eq!(
            s.summary(),
            "3 completed, 1 failed, 2 running, 2 deleted meanwhile"
        );
        let done = snap(&[("completed", 4)], 4);
        assert_eq!((done.unfinished(), done.unsuccessful()), (0, 0));
    }

    #[test]
    fn rate_is_per_minute_and_unknown_at_first() {
        assert_eq!(Rate::new(0, Duration::from_secs(10)).to_string(), "-/min");
        assert_eq!(
            Rate::new(5, Duration::from_millis(500)).to_string(),
            "-/min"
        );
        assert_eq!(Rate::new(30, Duration::from_secs(60)).to_string(), "30/min");
        assert_eq!(Rate::new(1, Duration::from_secs(20)).to_string(), "3.0/min");
    }
}
