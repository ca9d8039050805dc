//! `threatmesh serve`: load and check the configuration, bind, serve until
//! SIGINT or SIGTERM, then shut down cleanly.

use std::path::Path;

use tokio::net::TcpListener;

use super::{CliError, init_logging};
use crate::config::Settings;
use crate::node::Node;

/// Runs `threatmesh serve`.
pub async fn run(config: &Path) -> Result<(), CliError> {
    let settings = Settings::load(config)?;
    init_logging(&settings.log.format, &settings.log.level);
    let addr = settings.listen_addr()?;
    // Everything is loaded and checked before the port is bound.
    let node = Node::open(settings).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Failed(format!("node.listen {addr}: cannot bind: {e}")))?;
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
