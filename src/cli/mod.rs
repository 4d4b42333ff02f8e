//! `importlyd` commands: argument parsing, exit codes and output. Each command is a thin
//! layer over the store (operator commands) or the scheduler (`run`).

// First: its `outln!`/`out!` macros serve every command below.
#[macro_use]
mod out;

mod demo;
mod enqueue;
mod export;
mod logging;
mod report;
mod run;
mod systemd;
pub(crate) mod ticket;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::builder::PossibleValue;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};
use crate::importly::JobKind;
use crate::store::{ListFilter, State, Store, StoreError};

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
    ///
    /// URLs given as arguments go in together or not at all (a bad one is a usage error,
    /// exit 2). A file goes in 1,000 rows per transaction; its bad lines are skipped and
    /// reported with their line numbers (exit 1 if there were any), duplicates by
    /// external_id are counted and skipped.
    Enqueue {
        urls: Vec<String>,
        /// JSON object merged into each request body: for every URL argument, and for every
        /// line of --file that has no options of its own (a CSV line's own options win).
        #[arg(long)]
        options: Option<String>,
        /// The kind of every row (a file has no kind column).
        #[arg(long, value_enum)]
        kind: Option<JobKind>,
        /// Read rows from this file, or `-` for standard input.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Then follow exactly these rows (and those already queued under the file's
        /// external ids) until all are finished, as `wait` does.
        #[arg(long)]
        wait: bool,
        /// With --wait: how long without any change before saying that no daemon seems to
        /// be running.
        #[arg(long, value_parser = parse_duration, default_value = "2m", requires = "wait")]
        stall_after: Duration,
    },
    /// Follow rows until every one is finished; exit 0 if all completed, 1 if any failed or
    /// was cancelled (with a summary), 130 on Ctrl-C (which leaves them queued).
    ///
    /// The rows are chosen once, at the start: those named, created within --since, with an
    /// external_id starting with --external-id-prefix (all given filters apply); with none,
    /// every row not yet finished. A progress bar on a terminal, a line per change (at most
    /// every few seconds) otherwise.
    Wait {
        ids: Vec<i64>,
        /// Rows created within this long (e.g. 1h).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        #[arg(long)]
        external_id_prefix: Option<String>,
        /// How long without any change to these rows before saying that no daemon seems to
        /// be running against this database.
        #[arg(long, value_parser = parse_duration, default_value = "2m")]
        stall_after: Duration,
    },
    /// Counts per state, budgets, pauses, oldest pending row, last error.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List rows.
    List {
        #[arg(long, value_enum)]
        state: Option<State>,
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
    ///
    /// Rows named that are not failed (or do not exist) are left alone and reported; the
    /// exit status is then 1, as for `cancel`.
    Retry {
        ids: Vec<i64>,
        #[arg(long)]
        failed: bool,
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
    },
    /// Cancel pending rows.
    ///
    /// Rows named that are not pending (or do not exist) are left alone and reported; the
    /// exit status is then 1, as for `retry`.
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
    /// Results out, oldest row first: id, external_id, url, kind, state, importly_job_id,
    /// media_url, credits_used, completed_at, last_error.
    Export {
        /// `csv` (RFC 4180, with a header line) or `jsonl` (one JSON object a line).
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Only rows changed within this long (e.g. 24h, 7d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
    },
    /// Print a shell completion script (e.g. `importlyd completions bash > /etc/bash_completion.d/importlyd`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `importlyd man | man -l -`.
    Man,
}

/// `--state` names the store's states (the `state_must_be_known` CHECK constraint).
impl ValueEnum for State {
    fn value_variants<'a>() -> &'a [Self] {
        &State::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

/// `--kind` names the job kinds (the `kind_must_be_import_or_metadata` CHECK constraint).
impl ValueEnum for JobKind {
    fn value_variants<'a>() -> &'a [Self] {
        &[JobKind::Import, JobKind::Metadata]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
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
            errln!("importlyd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            errln!("importlyd: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cli: Cli) -> CmdResult {
    let cfg_path = cli.config.clone();
    // The commands that need neither a config nor a database.
    match cli.command {
        Command::Demo { rows } => return demo::demo(rows).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "importlyd", &mut script);
            return write_all(&script);
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| Failure {
                    code: 1,
                    message: format!("rendering the man page: {e}"),
                })?;
            return write_all(&page);
        }
        _ => {}
    }
    let cfg = Config::load(cfg_path.as_deref())?;
    match cli.command {
        Command::Run => run::run(cfg, cfg_path).await,
        Command::Migrate => {
            let store = open(&cfg).await?;
            // Also repairs the counts an outside `INSERT OR REPLACE` may have skewed.
            let recounted = store.recount().await;
            store.close().await;
            recounted?;
            outln!("schema of {} is up to date", cfg.database.path.display());
            Ok(())
        }
        Command::Enqueue {
            urls,
            options,
            kind,
            file,
            wait,
            stall_after,
        } => {
            let store = open(&cfg).await?;
            let (queued, outcome) = enqueue::enqueue(&store, urls, options, kind, file).await;
            if !wait || outcome.as_ref().is_err_and(|f| f.code == 2) {
                return outcome;
            }
            // Bad lines were reported; the rows that did go in are still followed, and the
            // exit status tells of both.
            let followed =
                wait::follow(&store, &cfg, queued.ids.into_iter().collect(), stall_after).await;
            outcome.and(followed)
        }
        Command::Wait {
            ids,
            since,
            external_id_prefix,
            stall_after,
        } => {
            let sel = wait::Selection {
                ids,
                since: since.map(ago),
                external_id_prefix,
            };
            wait::wait(&existing(&cfg).await?, &cfg, sel, stall_after).await
        }
        Command::Status { json } => report::status(&existing(&cfg).await?, &cfg, json).await,
        Command::List {
            state,
            since,
            limit,
            json,
        } => {
            let filter = ListFilter {
                state,
                since: since.map(ago),
                limit,
            };
            report::list(&existing(&cfg).await?, &filter, json).await
        }
        Command::Show { id, json } => report::show(&existing(&cfg).await?, id, json).await,
        Command::Purge {
            completed,
            older_than,
        } => report::purge(&existing(&cfg).await?, completed, ago(older_than)).await,
        Command::Ticket {
            id,
            format,
            failed,
            since,
            dir,
        } => {
            let store = existing(&cfg).await?;
            ticket::command(&store, &cfg, id, format, failed, since.map(ago), dir).await
        }
        Command::Retry { ids, failed, since } => {
            report::retry(&existing(&cfg).await?, ids, failed, since.map(ago)).await
        }
        Command::Cancel { ids } => report::cancel(&existing(&cfg).await?, ids).await,
        Command::Resume => report::resume(&existing(&cfg).await?).await,
        Command::Export {
            format,
            state,
            since,
        } => {
            let filter = ListFilter {
                state,
                since: since.map(ago),
                limit: None,
            };
            export::export(&existing(&cfg).await?, &filter, format).await
        }
        Command::Demo { .. } | Command::Completions { .. } | Command::Man => Ok(()),
    }
}

/// Opens the database, creating and migrating it if needed: for the commands that may
/// start a queue (`migrate`, `enqueue`; `run` opens its own), so inserting never needs the
/// daemon.
async fn open(cfg: &Config) -> Result<Store, Failure> {
    Ok(Store::open(&cfg.database).await?)
}

/// Opens the database the commands that read or change rows work on. A wrong path must not
/// leave an empty database behind that looks like a queue with nothing in it.
async fn existing(cfg: &Config) -> Result<Store, Failure> {
    Store::open_existing(&cfg.database)
        .await
        .map_err(|e| match e {
            StoreError::NoDatabase(_) => Failure {
                code: 1,
                message: e.to_string(),
            },
            e => e.into(),
        })
}

fn write_all(bytes: &[u8]) -> CmdResult {
    use std::io::Write;
    // `out::Stdout` never returns an error (see out.rs).
    let _ = out::Stdout.write_all(bytes);
    out::flush();
    Ok(())
}

/// The time `d` ago.
fn ago(d: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(d)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--state` offers exactly the states the schema allows, by the names they parse from.
    #[test]
    fn state_values_are_the_schema_states() {
        assert_eq!(State::value_variants(), State::ALL);
        for s in State::value_variants() {
            let name = s.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(name.as_deref().map(str::parse::<State>), Some(Ok(*s)));
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
