//! `threatmesh store backup|restore`: a consistent copy of the store taken
//! while the node runs, and putting one back while it is stopped. A restored
//! store gets a new log identity, so partners read its log again from the
//! start instead of skipping the sequence numbers it will reuse.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::CliError;
use super::client::ServerArgs;
use crate::store::Store;

/// `threatmesh store ...`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the store to a new file while the node runs (a consistent
    /// snapshot; the node is not paused). The copy holds partners' data:
    /// it is made mode 0600; keep it as safe as the node.
    #[command(
        after_help = "Examples:\n  threatmesh store backup --to /backups/threatmesh-$(date +%F).db"
    )]
    Backup {
        /// The file to write; it must not exist.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Put a backup in place of the store. Stop the node first. The restored
    /// log gets a new identity, so every partner re-reads it from the start
    /// (their storage is idempotent: nothing is duplicated) and nothing
    /// published after the backup is skipped; the ledger records the
    /// restore. Indicators published after the backup are gone from this
    /// node (partners that received them keep them).
    #[command(
        after_help = "Examples:\n  threatmesh store restore --from /backups/threatmesh-2026-12-01.db"
    )]
    Restore {
        /// The backup file (made by `store backup`).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

/// Runs a store command.
pub async fn run(config: &Path, conn: &ServerArgs, cmd: &StoreCommand) -> Result<(), CliError> {
    let settings = conn.load(config)?;
    let path = &settings.store.path;
    if settings.store.is_postgres() {
        return Err(CliError::Usage(format!(
            "store backup and restore copy a SQLite store file; this node keeps its store in PostgreSQL ({}): back it up with PostgreSQL's own tools (pg_dump, base backups)",
            settings.store.describe()
        )));
    }
    match cmd {
        StoreCommand::Backup { to } => {
            if !path.is_file() {
                return Err(CliError::Usage(format!(
                    "store.path {}: no such database",
                    path.display()
                )));
            }
            if to.exists() {
                return Err(CliError::Usage(format!(
                    "--to {}: exists; give a new file",
                    to.display()
                )));
            }
            let store = Store::open_sqlite(path, crate::clock::Clock::system()).await?;
            let done = store.backup_to(to).await;
            store.close().await;
            done?;
            let check = Store::open_sqlite(to, crate::clock::Clock::system()).await?;
            let verdict = check.integrity_check().await;
            let rows = check.verify_audit().await;
            check.close().await;
            let verdict = verdict?;
            if verdict != "ok" {
                return Err(CliError::Failed(format!(
                    "the backup {} failed its integrity check: {verdict}",
                    to.display()
                )));
            }
            let rows = rows?.map_err(|b| CliError::Failed(format!("the backup's ledger: {b}")))?;
            out!(
                "backed up {} to {} (integrity ok, ledger intact: {rows} rows)",
                path.display(),
                to.display()
            );
            Ok(())
        }
        StoreCommand::Restore { from } => {
            if super::client::node_answers(&settings).await {
                return Err(CliError::Failed(format!(
                    "the node answers at {}: stop it before restoring its store",
                    settings.client_server().unwrap_or_default()
                )));
            }
            // Checked as a staged copy (the backup file itself is left as
            // it is) before anything is replaced.
            let mut staged = path.clone().into_os_string();
            staged.push(".restoring");
            let staged = PathBuf::from(staged);
            let _ = std::fs::remove_file(&staged);
            std::fs::copy(from, &staged)
                .map_err(|e| CliError::Failed(format!("copying {}: {e}", from.display())))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| CliError::Failed(format!("{}: {e}", staged.display())))?;
            }
            let copy = Store::open_sqlite(&staged, crate::clock::Clock::system()).await?;
            let verdict = copy.integrity_check().await;
            let ledger = copy.verify_audit().await;
            copy.close().await;
            let refuse = |why: String| {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = staged.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
                CliError::Failed(format!(
                    "{}: {why}; the store was not replaced",
                    from.display()
                ))
            };
            let verdict = verdict?;
            if verdict != "ok" {
                return Err(refuse(format!("integrity check failed ({verdict})")));
            }
            ledger?.map_err(|b| refuse(b.to_string()))?;
            for suffix in ["-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            std::fs::rename(&staged, path)
                .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?;
            let store = Store::open_sqlite(path, crate::clock::Clock::system()).await?;
            let renewed = store
                .renew_log_id("operator", &from.display().to_string())
                .await;
            let latest = store.latest_seq().await;
            store.close().await;
            let (old, new) = renewed?;
            out!(
                "restored {} from {} (log up to seq {}); new log identity {new} (was {old}): \
                 partners will read it again from the start",
                path.display(),
                from.display(),
                latest?
            );
            Ok(())
        }
    }
}
