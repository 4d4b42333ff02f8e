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
use clap::Parser;
use importlyd::sim::{Sim, SimConfig};

#[derive(Parser, Debug)]
#[command(
    name = "importly-sim",
    version,
    about = "A local simulator of the Importly API"
)]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// TOML file with SimConfig fields (api_key, credits, [import], [faults], ...).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    credits: Option<i64>,
    /// Credits per completed import.
    #[arg(long)]
    import_cost: Option<i64>,
    #[arg(long, value_parser = humantime::parse_duration)]
    job_duration: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    metadata_duration: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    job_ttl: Option<Duration>,
    #[arg(long)]
    import_limit: Option<u64>,
    #[arg(long, value_parser = humantime::parse_duration)]
    import_window: Option<Duration>,
    #[arg(long)]
    import_concurrent: Option<u32>,
    #[arg(long)]
    status_limit: Option<u64>,
    #[arg(long, value_parser = humantime::parse_duration)]
    status_window: Option<Duration>,
    #[arg(long)]
    metadata_limit: Option<u64>,
    #[arg(long, value_parser = humantime::parse_duration)]
    metadata_window: Option<Duration>,
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
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout_delay: Option<Duration>,
    /// Seed of the fault RNG.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
