//! `importly-sim`: the Importly API simulator as a standalone server, for the demo, benchmarks
//! and out-of-process tests. Settings layer as: built-in defaults, `--config FILE` (TOML, the
//! fields of `SimConfig`), then flags. Prints `listening on http://ADDR` once bound; runs until
//! SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use importlyd::sim::{Sim, SimConfig};

/// Said by `--help` after the flags: what a client must send, and where the defaults come
/// from.
const AFTER_HELP: &str = "\
API key: every API request must carry `Authorization: Bearer <key>`, where <key> is the
simulator's api_key: `sim-key` unless --api-key or the config file's `api_key` says
otherwise (e.g. run the daemon with IMPORTLY_API_KEY=sim-key). A wrong or missing key
gets 401. `GET /_sim/stats` needs no key.

Settings layer as: built-in defaults (shown above), then --config FILE, then flags.";

#[derive(Parser, Debug)]
#[command(
    name = "importly-sim",
    version,
    about = "A local simulator of the Importly API",
    after_help = AFTER_HELP
)]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// TOML file with SimConfig fields (api_key, credits, [import], [faults], [hostile], ...).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The only API key accepted, as `Authorization: Bearer <KEY>`.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Starting credit balance.
    #[arg(long, allow_negative_numbers = true)]
    credits: Option<i64>,
    /// Credits per completed import (a `cost-N` URL segment overrides it).
    #[arg(long)]
    import_cost: Option<i64>,
    /// How long an import job takes (queued for a third, then processing).
    #[arg(long, value_parser = humantime::parse_duration)]
    job_duration: Option<Duration>,
    /// With it, each import takes a random time from --job-duration to this (seeded).
    #[arg(long, value_parser = humantime::parse_duration)]
    job_duration_max: Option<Duration>,
    /// How long a metadata job takes.
    #[arg(long, value_parser = humantime::parse_duration)]
    metadata_duration: Option<Duration>,
    /// How long a job's status can be read (404 after).
    #[arg(long, value_parser = humantime::parse_duration)]
    job_ttl: Option<Duration>,
    /// `POST /import` requests per window.
    #[arg(long)]
    import_limit: Option<u64>,
    /// Length of the import window.
    #[arg(long, value_parser = humantime::parse_duration)]
    import_window: Option<Duration>,
    /// Import jobs in progress at once, account-wide.
    #[arg(long)]
    import_concurrent: Option<u32>,
    /// Status requests (both kinds) per window.
    #[arg(long)]
    status_limit: Option<u64>,
    /// Length of the status window.
    #[arg(long, value_parser = humantime::parse_duration)]
    status_window: Option<Duration>,
    /// Metadata requests per window.
    #[arg(long)]
    metadata_limit: Option<u64>,
    /// Length of the metadata window.
    #[arg(long, value_parser = humantime::parse_duration)]
    metadata_window: Option<Duration>,
    /// Metadata jobs in progress at once.
    #[arg(long)]
    metadata_concurrent: Option<u32>,
    /// `X-RateLimit-Plan` value.
    #[arg(long)]
    plan: Option<String>,
    /// Probability of an injected 500 per counted request.
    #[arg(long)]
    p500: Option<f64>,
    /// Probability of an injected delayed answer per counted request.
    #[arg(long)]
    ptimeout: Option<f64>,
    /// Probability of an injected non-JSON 200 per counted request.
    #[arg(long)]
    pgarbage: Option<f64>,
    /// How late a delayed answer comes.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout_delay: Option<Duration>,
    /// Probability of a 500 with `Retry-After: 18446744073709551615` per counted request.
    #[arg(long)]
    phuge_retry: Option<f64>,
    /// Probability of an answer grown to --oversized-bytes per counted request.
    #[arg(long)]
    poversized: Option<f64>,
    /// Probability of a 2xx with a --long-id-len character job id per counted request.
    #[arg(long)]
    plong_id: Option<f64>,
    /// Probability of an answer trickled over --trickle-duration per counted request.
    #[arg(long)]
    ptrickle: Option<f64>,
    /// Size of an oversized answer's grown string, bytes.
    #[arg(long)]
    oversized_bytes: Option<u64>,
    /// Length of a long job id, characters.
    #[arg(long)]
    long_id_len: Option<usize>,
    /// How long a trickled answer takes.
    #[arg(long, value_parser = humantime::parse_duration)]
    trickle_duration: Option<Duration>,
    /// Webhook deliveries per job end (the first and its retries) for jobs started with
    /// `webhookUrl`.
    #[arg(long)]
    webhook_attempts: Option<u32>,
    /// Time between a webhook delivery that failed and its retry.
    #[arg(long, value_parser = humantime::parse_duration)]
    webhook_interval: Option<Duration>,
    /// Seed of the fault RNG.
    #[arg(long)]
    seed: Option<u64>,
}

/// Each flag's built-in default, as `--help` shows it. Taken from `SimConfig::default()`
/// rather than written into clap's `default_value`: a clap default would override the
/// config file, and the flags must only win when given.
fn defaults() -> Vec<(&'static str, String)> {
    let d = SimConfig::default();
    let t = |d: Duration| humantime::format_duration(d).to_string();
    vec![
        ("api_key", d.api_key.clone()),
        ("credits", d.credits.to_string()),
        ("import_cost", d.import_cost.to_string()),
        ("job_duration", t(d.job_duration)),
        ("metadata_duration", t(d.metadata_duration)),
        ("job_ttl", t(d.job_ttl)),
        ("import_limit", d.import.requests.to_string()),
        ("import_window", t(d.import.window)),
        ("import_concurrent", d.import.concurrent.to_string()),
        ("status_limit", d.status.requests.to_string()),
        ("status_window", t(d.status.window)),
        ("metadata_limit", d.metadata.requests.to_string()),
        ("metadata_window", t(d.metadata.window)),
        ("metadata_concurrent", d.metadata.concurrent.to_string()),
        ("plan", d.plan.clone()),
        ("p500", d.faults.p500.to_string()),
        ("ptimeout", d.faults.ptimeout.to_string()),
        ("pgarbage", d.faults.pgarbage.to_string()),
        ("timeout_delay", t(d.faults.timeout_delay)),
        ("phuge_retry", d.hostile.phuge_retry.to_string()),
        ("poversized", d.hostile.poversized.to_string()),
        ("plong_id", d.hostile.plong_id.to_string()),
        ("ptrickle", d.hostile.ptrickle.to_string()),
        ("oversized_bytes", d.hostile.oversized_bytes.to_string()),
        ("long_id_len", d.hostile.long_id_len.to_string()),
        ("trickle_duration", t(d.hostile.trickle_duration)),
        ("webhook_attempts", d.webhooks.attempts.to_string()),
        ("webhook_interval", t(d.webhooks.interval)),
        ("seed", d.seed.to_string()),
    ]
}

/// The command line, its flags' help ending in `[default: ...]`.
fn command() -> clap::Command {
    let mut cmd = Args::command();
    for (id, value) in defaults() {
        if !cmd.get_arguments().any(|a| a.get_id() == id) {
            continue;
        }
        cmd = cmd.mut_arg(id, |a| {
            let help = a.get_help().map(ToString::to_string).unwrap_or_default();
            a.help(format!("{help} [default: {value}]"))
        });
    }
    cmd
}

fn main() -> ExitCode {
    let args = match Args::from_arg_matches(&command().get_matches()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let cfg = match load_config(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("importly-sim: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(cfg, args.listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("importly-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Defaults, then the file, then flags. The defaults go in as a source of their own so a file
/// may give only part of a section (e.g. `[import] requests = 3`).
fn load_config(args: &Args) -> anyhow::Result<SimConfig> {
    let defaults = config::Config::try_from(&SimConfig::default()).context("default settings")?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = &args.config {
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    let mut cfg: SimConfig = builder
        .build()
        .with_context(|| "reading --config")?
        .try_deserialize()
        .with_context(|| "reading --config")?;
    apply_flags(&mut cfg, args);
    Ok(cfg)
}

fn apply_flags(cfg: &mut SimConfig, a: &Args) {
    fn set<T: Clone>(slot: &mut T, flag: &Option<T>) {
        if let Some(v) = flag {
            *slot = v.clone();
        }
    }
    set(&mut cfg.api_key, &a.api_key);
    set(&mut cfg.credits, &a.credits);
    set(&mut cfg.import_cost, &a.import_cost);
    set(&mut cfg.job_duration, &a.job_duration);
    if a.job_duration_max.is_some() {
        cfg.job_duration_max = a.job_duration_max;
    }
    set(&mut cfg.metadata_duration, &a.metadata_duration);
    set(&mut cfg.job_ttl, &a.job_ttl);
    set(&mut cfg.import.requests, &a.import_limit);
    set(&mut cfg.import.window, &a.import_window);
    set(&mut cfg.import.concurrent, &a.import_concurrent);
    set(&mut cfg.status.requests, &a.status_limit);
    set(&mut cfg.status.window, &a.status_window);
    set(&mut cfg.metadata.requests, &a.metadata_limit);
    set(&mut cfg.metadata.window, &a.metadata_window);
    set(&mut cfg.metadata.concurrent, &a.metadata_concurrent);
    set(&mut cfg.plan, &a.plan);
    set(&mut cfg.faults.p500, &a.p500);
    set(&mut cfg.faults.ptimeout, &a.ptimeout);
    set(&mut cfg.faults.pgarbage, &a.pgarbage);
    set(&mut cfg.faults.timeout_delay, &a.timeout_delay);
    set(&mut cfg.hostile.phuge_retry, &a.phuge_retry);
    set(&mut cfg.hostile.poversized, &a.poversized);
    set(&mut cfg.hostile.plong_id, &a.plong_id);
    set(&mut cfg.hostile.ptrickle, &a.ptrickle);
    set(&mut cfg.hostile.oversized_bytes, &a.oversized_bytes);
    set(&mut cfg.hostile.long_id_len, &a.long_id_len);
    set(&mut cfg.hostile.trickle_duration, &a.trickle_duration);
    set(&mut cfg.webhooks.attempts, &a.webhook_attempts);
    set(&mut cfg.webhooks.interval, &a.webhook_interval);
    set(&mut cfg.seed, &a.seed);
}

#[tokio::main]
async fn run(cfg: SimConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let sim = Sim::start_on(cfg, listen).await?;
    let mut out = std::io::stdout();
    // Flushed at once: a parent process waits for this line to learn the port.
    writeln!(out, "listening on {}", sim.base_url())?;
    out.flush()?;
    wait_for_signal().await?;
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
