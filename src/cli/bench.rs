//! `threatmesh bench`: measures the machine's limits and the node over real
//! mutual TLS on loopback in one run; see BENCHMARKS.md.

use clap::Args;

use super::CliError;
use crate::bench::{BenchOptions, render, run as run_bench};

/// Arguments of `threatmesh bench`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Everything runs in this process on 127.0.0.1 with fresh organisations in a
temporary directory. Results and method: BENCHMARKS.md.

Examples:
  threatmesh bench                                  # every phase, default sizes
  threatmesh bench --backlog 20000 --subscribers 100 --latency-secs 3   # a quick check
  threatmesh bench --json > run.json
  threatmesh bench --store postgres://postgres@127.0.0.1:5432   # every store in PostgreSQL")]
pub struct BenchArgs {
    /// Indicators published through the Publish RPC.
    #[arg(long, default_value_t = 20_000)]
    pub publish: u64,
    /// Publish requests in flight.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Backlog a subscriber catches up on (verify + store + cursor).
    #[arg(long, default_value_t = 200_000)]
    pub backlog: u64,
    /// Publish rate of the latency run, per second.
    #[arg(long, default_value_t = 1_000)]
    pub latency_rate: u64,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// Subscribers of the fan-out run (each its own org and connection).
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// Indicators published during the fan-out run.
    #[arg(long, default_value_t = 2_000)]
    pub fanout_indicators: u64,
    /// Seconds each primitive is measured for.
    #[arg(long, default_value_t = 2.0)]
    pub primitive_secs: f64,
    /// federation.batch_size of the benchmark's nodes (1-4096; the
    /// nodes' default).
    #[arg(long, default_value_t = 1_024)]
    pub batch_size: u32,
    /// Indicators a partner reads over TAXII, 1,000 per page.
    #[arg(long, default_value_t = 10_000)]
    pub taxii_objects: u64,
    /// Indicators in the STIX bundle `threatmesh import` reads (its own
    /// process; wall time and peak RSS).
    #[arg(long, default_value_t = 1_000_000)]
    pub import_indicators: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep every organisation's store in PostgreSQL on this server
    /// (postgres://user@host:port; the run makes a database per
    /// organisation and drops them at its end) instead of SQLite files.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// Runs `threatmesh bench`.
pub async fn run(args: &BenchArgs) -> Result<(), CliError> {
    // The nodes' own warnings, or what RUST_LOG asks for (e.g.
    // `RUST_LOG=threatmesh::store=debug` shows each group commit's phases).
    super::init_logging("human", "warn");
    if !(1..=4096).contains(&args.batch_size) {
        return Err(CliError::Usage("--batch-size: must be 1-4096".into()));
    }
    if args.import_indicators > 16_000_000 {
        return Err(CliError::Usage(
            "--import-indicators: at most 16,000,000 (distinct IPv4 values)".into(),
        ));
    }
    if args.in_flight == 0 || args.latency_rate == 0 || args.subscribers == 0 {
        return Err(CliError::Usage(
            "--in-flight, --latency-rate and --subscribers must be at least 1".into(),
        ));
    }
    let opts = BenchOptions {
        publish: args.publish,
        in_flight: args.in_flight,
        backlog: args.backlog,
        latency_rate: args.latency_rate,
        latency_secs: args.latency_secs,
        subscribers: args.subscribers,
        fanout_indicators: args.fanout_indicators,
        primitive_secs: args.primitive_secs,
        batch_size: args.batch_size,
        taxii_objects: args.taxii_objects,
        import_indicators: args.import_indicators,
        store: args.store.clone().unwrap_or_default(),
    };
    // Each phase's line stays; on a terminal a spinner shows the one
    // running and for how long.
    let progress = super::progress::Progress::new(None, "phases");
    let report = run_bench(&opts, |line| {
        progress.note(&format!("bench: {line}"));
        progress.inc(1);
        progress.message(line.to_string());
    })
    .await
    .map_err(|e| CliError::Failed(e.to_string()));
    progress.finish();
    let report = report?;
    if args.json {
        out!(
            "{}",
            serde_json::to_string(&report).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else {
        out_raw!("{}", render(&report));
    }
    Ok(())
}
