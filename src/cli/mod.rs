//! The `threatmesh` command line: argument definitions and dispatch. One
//! file per command group; each is a thin layer over the library.

/// `println!` for command output: a closed pipe (`threatmesh audit log | head`)
/// ends the command quietly instead of panicking.
macro_rules! out {
    () => { $crate::cli::emit(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::cli::emit(format_args!($($arg)*), true) };
}

/// Calls an Admin RPC on an [`client::AdminSession`] and returns the reply,
/// or returns the refusal as the CLI reports it:
/// `rpc!(a, list_peers(ListPeersRequest {}))`.
macro_rules! rpc {
    ($a:ident, $method:ident($req:expr)) => {
        $a.client
            .$method($req)
            .await
            .map_err(|e| $a.fail(e))?
            .into_inner()
    };
}

/// `print!` counterpart of `out!`.
macro_rules! out_raw {
    ($($arg:tt)*) => { $crate::cli::emit(format_args!($($arg)*), false) };
}

pub mod audit;
pub mod bench;
pub mod card;
pub mod certs;
pub mod client;
pub mod demo;
pub mod docs;
pub mod export;
pub mod import;
pub mod init;
pub mod keys;
pub mod lookup;
pub mod peer;
pub mod policy;
pub mod progress;
pub mod publish;
pub mod quarantine;
pub mod serve;
pub mod sight;
pub mod stats;
pub mod status;
pub mod store;
pub mod table;
pub mod tail;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::ConfigError;
use crate::node::NodeError;

/// Exit status for bad configuration or usage (BSD `EX_USAGE`/`EX_CONFIG` family).
pub const EXIT_CONFIG: u8 = 64;

/// Errors of CLI commands, each with a message an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration: exit 64.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad arguments or input: exit 64.
    #[error("{0}")]
    Usage(String),
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The node answered with an error.
    #[error("{0}")]
    Rpc(String),
    /// Anything else that failed.
    #[error("{0}")]
    Failed(String),
    /// Not a failure: the command printed its answer, and its exit status
    /// carries it too (`policy explain` exits 3 on DENY).
    #[error("exit status {0}")]
    Status(u8),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) | CliError::Node(NodeError::Config(_)) => {
                EXIT_CONFIG
            }
            CliError::Status(code) => *code,
            _ => 1,
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        CliError::Failed(e.to_string())
    }
}

impl From<crate::identity::IdentityError> for CliError {
    fn from(e: crate::identity::IdentityError) -> Self {
        CliError::Failed(e.to_string())
    }
}

const AFTER_HELP: &str = "\
Quick start (two organisations on one machine):
  threatmesh init --org a.example --dir a --endpoint 127.0.0.1:7441 --listen 127.0.0.1:7441 --with-examples
  threatmesh init --org b.example --dir b --endpoint 127.0.0.1:7442 --listen 127.0.0.1:7442
  threatmesh -c a/threatmesh.toml serve &   threatmesh -c b/threatmesh.toml serve &
  threatmesh -c a/threatmesh.toml status --wait 30
  threatmesh -c a/threatmesh.toml card export --out a.card
  threatmesh -c b/threatmesh.toml card export --out b.card
  threatmesh -c a/threatmesh.toml policy apply a/policies/agency-partner.toml
  threatmesh -c a/threatmesh.toml peer add --card b.card --policy agency-partner
  threatmesh -c b/threatmesh.toml peer add --card a.card
  threatmesh -c a/threatmesh.toml publish --kind domain --value evil.example --tlp GREEN
  threatmesh -c b/threatmesh.toml tail

Or see it all at once: threatmesh demo";

/// ThreatMesh: a federated exchange for signed cyber-threat indicators.
///
/// Each organisation runs its own node with its own CA and signing key.
/// Nodes talk gRPC over mutual TLS, publish and subscribe to signed
/// indicators, and apply a sharing decision at every exit.
#[derive(Debug, Parser)]
#[command(name = "threatmesh", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Node configuration file (made by `threatmesh init`).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "THREATMESH_CONFIG",
        default_value = "threatmesh.toml"
    )]
    pub config: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A command group of the Admin API: its subcommands, and how to reach the
/// node as its admin.
#[derive(Debug, Args)]
pub struct Admin<C: Subcommand> {
    /// How to reach the node.
    #[command(flatten)]
    pub conn: client::ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub cmd: C,
}

/// A single command of the Admin API: its arguments, and how to reach the
/// node as its admin.
#[derive(Debug, Args)]
pub struct AdminArgs<A: Args> {
    /// Its own arguments (first, so `--help` lists them under "Options",
    /// before "Reaching the node").
    #[command(flatten)]
    pub args: A,
    /// How to reach the node.
    #[command(flatten)]
    pub conn: client::ClientArgs,
}

/// A command that publishes through the node: its arguments, and how to
/// reach the node as a publisher.
#[derive(Debug, Args)]
pub struct Publishing<A: Args> {
    /// Its own arguments (first, so `--help` lists them under "Options",
    /// before "Reaching the node").
    #[command(flatten)]
    pub args: A,
    /// How to reach the node.
    #[command(flatten)]
    pub conn: client::PublisherArgs,
}

/// A command group that only needs to know where the node is.
#[derive(Debug, Args)]
pub struct Local<C: Subcommand> {
    /// Where the node is.
    #[command(flatten)]
    pub conn: client::ServerArgs,
    /// What to do.
    #[command(subcommand)]
    pub cmd: C,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an organisation: its CA, node/admin/publisher certificates,
    /// Ed25519 signing key and a config file.
    Init(init::InitArgs),
    /// Run the node: serve Exchange over mutual TLS and subscribe to partners.
    Serve(serve::ServeArgs),
    /// Three organisations on loopback, end to end, in one process.
    Demo(demo::DemoArgs),
    /// Org cards: the signed unit of trust exchanged with partners.
    #[command(subcommand)]
    Card(card::CardCommand),
    /// Partner organisations (Admin API, admin certificate).
    Peer(Admin<peer::PeerCommand>),
    /// Sharing policies: apply, show, history, explain (Admin API).
    Policy(Admin<policy::PolicyCommand>),
    /// Our own certificates and CRLs: issue, list, rotate, revoke, crl,
    /// import-crl (Admin API).
    Certs(Admin<certs::CertsCommand>),
    /// Our org's signing key: rotate, revoke a retired key (Admin API).
    Keys(Admin<keys::KeysCommand>),
    /// Indicators waiting for their signing key, or for our clock to reach
    /// their date (Admin API).
    Quarantine(AdminArgs<quarantine::QuarantineArgs>),
    /// The hash-chained audit ledger: log, verify, heads (Admin API).
    Audit(Admin<audit::AuditCommand>),
    /// The store file: backup while the node runs, restore while it is
    /// stopped (reads store.path directly).
    Store(Local<store::StoreCommand>),
    /// Publish indicators through the running node (publisher certificate).
    Publish(Publishing<publish::PublishArgs>),
    /// Show what the node holds, then follow what arrives until Ctrl-C
    /// (`--no-follow`: print and exit) (admin certificate).
    Tail(AdminArgs<tail::TailArgs>),
    /// Do we hold a value, who sent it, whom did we give it to under which
    /// rule (admin certificate).
    Lookup(AdminArgs<lookup::LookupArgs>),
    /// Report that we saw an indicator: a signed sighting that goes back
    /// towards its origin where policies allow (publisher certificate).
    Sight(Publishing<sight::SightArgs>),
    /// The sightings this node holds of an indicator (admin certificate).
    Sightings(AdminArgs<sight::SightingsArgs>),
    /// Mesh-wide counts from the signed statistics reports this node holds,
    /// naming who contributed (admin certificate).
    Stats(AdminArgs<stats::StatsArgs>),
    /// Import STIX 2.1 bundles, MISP events or CSV: each indicator signed
    /// and published by this org (publisher certificate).
    Import(Publishing<import::ImportArgs>),
    /// Export what the node holds, or one partner's policy view: STIX 2.1,
    /// CSV, MISP feed, blocklists (admin certificate).
    Export(AdminArgs<export::ExportArgs>),
    /// The node at a glance: counts, and each partner link with state and lag.
    Status(AdminArgs<status::StatusArgs>),
    /// Measure this machine's limits and the node over mTLS on loopback.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Write manual pages, one per command.
    Man(docs::ManArgs),
}

/// Runs a parsed command line and returns the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    crate::identity::install_default_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Init(args) => init::run(&args).await,
            Command::Serve(args) => serve::run(&cli.config, &args).await,
            Command::Demo(args) => demo::run(&args).await,
            Command::Card(cmd) => card::run(&cli.config, &cmd).await,
            Command::Peer(g) => peer::run(&cli.config, &g.conn, &g.cmd).await,
            Command::Policy(g) => policy::run(&cli.config, &g.conn, &g.cmd).await,
            Command::Audit(g) => audit::run(&cli.config, &g.conn, &g.cmd).await,
            Command::Store(g) => store::run(&cli.config, &g.conn, &g.cmd).await,
            Command::Keys(g) => keys::run(&cli.config, &g.conn, &g.cmd).await,
            Command::Quarantine(a) => quarantine::run(&cli.config, &a.conn, &a.args).await,
            Command::Certs(g) => certs::run(&cli.config, &g.conn, &g.cmd).await,
            Command::Publish(a) => publish::run(&cli.config, &a.conn, &a.args).await,
            Command::Tail(a) => tail::run(&cli.config, &a.conn, &a.args).await,
            Command::Export(a) => export::run(&cli.config, &a.conn, &a.args).await,
            Command::Import(a) => import::run(&cli.config, &a.conn, &a.args).await,
            Command::Lookup(a) => lookup::run(&cli.config, &a.conn, &a.args).await,
            Command::Sight(a) => sight::sight(&cli.config, &a.conn, &a.args).await,
            Command::Sightings(a) => sight::list(&cli.config, &a.conn, &a.args).await,
            Command::Stats(a) => stats::run(&cli.config, &a.conn, &a.args).await,
            Command::Status(a) => status::run(&cli.config, &a.conn, &a.args).await,
            Command::Bench(args) => bench::run(&args).await,
            Command::Completions(args) => docs::completions(&args),
            Command::Man(args) => docs::man(&args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Status(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Reports what `clap` found wrong with the arguments and returns the exit
/// status: 64 (`EX_USAGE`) for a usage error, 0 when help or the version was
/// asked for.
pub fn argument_error(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes command output to stdout; exits with status 0 if the reader has
/// gone away (broken pipe), as command-line tools are expected to.
pub fn emit(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|_| if newline { o.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write output: {e}");
        std::process::exit(1);
    }
}

/// Sets up `tracing` output: `human` or `json`, filtered by `level` unless
/// `RUST_LOG` is set. Safe to call more than once.
pub fn init_logging(format: &str, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Writes `contents` to `path` atomically; private files get mode 0600 from
/// creation. See [`crate::identity::write_atomic`].
pub fn write_file(path: &std::path::Path, contents: &[u8], private: bool) -> Result<(), CliError> {
    crate::identity::write_atomic(path, contents, private)
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks of every command and argument
    /// (unique names and groups, valid `requires`), which otherwise only
    /// fail when that command is run.
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// Every command an operator runs shows examples in its `--help`.
    #[test]
    fn every_command_s_help_has_examples() {
        fn leaves(c: &clap::Command, path: String, out: &mut Vec<(String, String)>) {
            let subs: Vec<_> = c
                .get_subcommands()
                .filter(|s| s.get_name() != "help")
                .collect();
            if subs.is_empty() {
                let after = c
                    .get_after_help()
                    .or(c.get_after_long_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                out.push((path.clone(), after));
            }
            for s in subs {
                leaves(s, format!("{path} {}", s.get_name()), out);
            }
        }
        let mut all = Vec::new();
        leaves(&super::Cli::command(), "threatmesh".into(), &mut all);
        let missing: Vec<&str> = all
            .iter()
            .filter(|(_, help)| !help.contains("Examples:"))
            .map(|(p, _)| p.as_str())
            .collect();
        assert!(all.len() > 40, "{} commands", all.len());
        assert!(missing.is_empty(), "no examples in --help of: {missing:?}");
    }
}
