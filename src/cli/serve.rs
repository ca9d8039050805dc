//! `threatmesh serve`: load and check the configuration, bind, serve until
//! SIGINT or SIGTERM, then shut down cleanly.

use std::path::Path;

use tokio::net::TcpListener;

use super::{CliError, init_logging};
use crate::config::Settings;
use crate::node::Node;

/// Arguments of `threatmesh serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  threatmesh -c /etc/threatmesh/threatmesh.toml serve
  THREATMESH__LOG__FORMAT=json threatmesh serve        # JSON logs
  threatmesh serve --new-store                           # only after a store was lost, knowingly
  Stops cleanly on SIGINT or SIGTERM.")]
pub struct ServeArgs {
    /// Start with a new, empty store when `store.path` is missing or empty.
    /// Without it the node refuses: `threatmesh init` creates the store, so
    /// a missing one was lost, and serving an empty log silently would make
    /// partners wait on sequence numbers that no longer mean anything. A new
    /// store gets a new log identity: partners read it from the start.
    #[arg(long)]
    pub new_store: bool,
}

/// Refuses a store that is missing or empty, unless `new_store`; with it,
/// an empty file is removed so a fresh store is made in its place.
fn check_store_present(path: &Path, new_store: bool) -> Result<(), CliError> {
    let afresh = "to start this org afresh with an empty log, run `threatmesh serve --new-store` \
                  (partners will read the new log from the start)";
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if new_store {
                return Ok(());
            }
            Err(CliError::Usage(format!(
                "store.path {}: no such database. `threatmesh init` created it, so it was deleted or moved: \
                 put it back, or restore a backup (`threatmesh store restore --from FILE`); {afresh}",
                path.display()
            )))
        }
        Err(e) => Err(CliError::Usage(format!(
            "store.path {}: {e}",
            path.display()
        ))),
        Ok(m) if m.len() == 0 => {
            if !new_store {
                return Err(CliError::Usage(format!(
                    "store.path {} is empty (0 bytes): its data is gone. Restore a backup \
                     (`threatmesh store restore --from FILE`); {afresh}",
                    path.display()
                )));
            }
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// Runs `threatmesh serve`.
pub async fn run(config: &Path, args: &ServeArgs) -> Result<(), CliError> {
    let settings = Settings::load(config)?;
    init_logging(&settings.log.format, &settings.log.level);
    if !settings.store.is_postgres() {
        check_store_present(&settings.store.path, args.new_store)?;
    }
    let addr = settings.listen_addr()?;
    let taxii = settings.taxii.listen.clone();
    // Everything is loaded and checked before the port is bound.
    let mut node = Node::open(settings).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Failed(format!("node.listen {addr}: cannot bind: {e}")))?;
    if !taxii.is_empty() {
        let l = TcpListener::bind(&taxii)
            .await
            .map_err(|e| CliError::Failed(format!("taxii.listen {taxii}: cannot bind: {e}")))?;
        node = node.with_taxii(l);
    }
    let metrics = node.context().settings.metrics.listen.clone();
    if !metrics.is_empty() {
        let l = TcpListener::bind(&metrics)
            .await
            .map_err(|e| CliError::Failed(format!("metrics.listen {metrics}: cannot bind: {e}")))?;
        node = node.with_metrics(l);
    }
    node.serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
