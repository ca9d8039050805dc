//! `threatmesh store backup|restore|copy`: a consistent copy of the store
//! taken while the node runs, and putting one back while it is stopped. A
//! restored store gets a new log identity, so partners read its log again
//! from the start instead of skipping the sequence numbers it will reuse.
//! `copy` moves a whole store to another backend (SQLite to PostgreSQL and
//! back) keeping its log identity, so partners' cursors stay valid.

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
    /// Record that the store was put back from a backup by other means
    /// (PostgreSQL's pg_restore, a file-system snapshot): gives the log a
    /// new identity, so every partner re-reads it from the start instead of
    /// skipping the sequence numbers it will reuse; on the ledger. Run it
    /// with every replica stopped, before they start again.
    #[command(after_help = "Examples:\n  threatmesh store restored --from 'pg_dump of 2026-12-01'")]
    Restored {
        /// What it was restored from (recorded on the ledger).
        #[arg(long, value_name = "TEXT")]
        from: String,
    },
    /// Copy a whole store into a new, empty one, SQLite to PostgreSQL or
    /// back: the log with its sequence numbers and identity (partners'
    /// cursors stay valid), cursors, the ledger chain, partners, policies,
    /// keys, certificates. Stop the node first. The target must be empty (a
    /// new file, or a new database); the copy is checked (every table's
    /// rows counted, the ledger verified) before it is reported done. Then
    /// point the config at the target (store.url or store.path).
    #[command(after_help = "Examples:\n  \
        threatmesh store copy --from data/threatmesh.db --to postgres://threatmesh@db.internal/threatmesh\n  \
        threatmesh store copy --from postgres://threatmesh@db.internal/threatmesh --to /var/lib/threatmesh/moved.db")]
    Copy {
        /// The store to copy: a SQLite file, or postgres://user@host/db.
        #[arg(long, value_name = "FILE|URL")]
        from: String,
        /// Where to: a new SQLite file, or an empty PostgreSQL database
        /// (postgres://user@host/db; it must exist).
        #[arg(long, value_name = "FILE|URL")]
        to: String,
    },
}

/// Whether `location` names a PostgreSQL database.
fn is_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `location` as messages show it (a URL's password hidden).
fn shown(location: &str) -> String {
    if is_url(location) {
        crate::store::redact_url(location)
    } else {
        location.to_string()
    }
}

/// Opens the store at `location` (a file, or a PostgreSQL URL).
async fn open_location(location: &str) -> Result<Store, CliError> {
    let clock = crate::clock::Clock::system();
    Ok(if is_url(location) {
        Store::open_postgres(location, clock, 4, 0).await?
    } else {
        Store::open_sqlite(Path::new(location), clock).await?
    })
}

/// `store restored`.
async fn restored(settings: &crate::config::Settings, from: &str) -> Result<(), CliError> {
    if super::client::node_answers(settings).await {
        return Err(CliError::Failed(format!(
            "the node answers at {}: stop it (every replica) first",
            settings.client_server().unwrap_or_default()
        )));
    }
    if !settings.store.present() {
        return Err(CliError::Usage(format!(
            "{}: no such database",
            settings.store.describe()
        )));
    }
    let store = Store::open(&settings.store, crate::clock::Clock::system()).await?;
    let renewed = store.renew_log_id("operator", from).await;
    let latest = store.latest_seq().await;
    store.close().await;
    let (old, new) = renewed?;
    out!(
        "{}: restored from {from} (log up to seq {}); new log identity {new} (was {old}): \
         partners will read it again from the start",
        settings.store.describe(),
        latest?
    );
    Ok(())
}

/// `store copy`.
async fn copy(config: &Path, conn: &ServerArgs, from: &str, to: &str) -> Result<(), CliError> {
    if from == to {
        return Err(CliError::Usage(
            "--from and --to name the same store".into(),
        ));
    }
    if !is_url(from) && !Path::new(from).is_file() {
        return Err(CliError::Usage(format!("--from {from}: no such file")));
    }
    // Copying the store of a node that runs would miss what it writes
    // after the copy's snapshot.
    if let Ok(settings) = conn.load(config) {
        let mine = if settings.store.is_postgres() {
            settings.store.url == from
        } else {
            Path::new(from) == settings.store.path
        };
        if mine && super::client::node_answers(&settings).await {
            return Err(CliError::Failed(format!(
                "the node answers at {}: stop it before copying its store (what it writes after the copy began would be missing)",
                settings.client_server().unwrap_or_default()
            )));
        }
    }
    let source = open_location(from).await?;
    let target = match open_location(to).await {
        Ok(t) => t,
        Err(e) => {
            source.close().await;
            return Err(e);
        }
    };
    let done = source.copy_into(&target).await;
    let latest = target.latest_seq().await;
    let log_id = target.log_id().await;
    target.close().await;
    source.close().await;
    let report = done.map_err(|e| CliError::Failed(format!("{}: {e}", shown(to))))?;
    let rows: u64 = report.tables.iter().map(|(_, n)| n).sum();
    out!(
        "copied {} to {}: {rows} rows in {} tables; log {} up to seq {}, ledger intact ({} rows)",
        shown(from),
        shown(to),
        report.tables.len(),
        log_id?,
        latest?,
        report.ledger_rows
    );
    for (table, n) in &report.tables {
        out!("  {table:<18} {n}");
    }
    let key = if is_url(to) {
        "store.url"
    } else {
        "store.path"
    };
    out!(
        "next: set {key} = \"{}\" in the node's config (the log identity is kept: partners resume from their cursors)",
        shown(to)
    );
    Ok(())
}

/// Runs a store command.
pub async fn run(config: &Path, conn: &ServerArgs, cmd: &StoreCommand) -> Result<(), CliError> {
    if let StoreCommand::Copy { from, to } = cmd {
        return copy(config, conn, from, to).await;
    }
    let settings = conn.load(config)?;
    if let StoreCommand::Restored { from } = cmd {
        return restored(&settings, from).await;
    }
    let path = &settings.store.path;
    if settings.store.is_postgres() {
        return Err(CliError::Usage(format!(
            "store backup and restore copy a SQLite store file; this node keeps its store in PostgreSQL ({}): back it up with PostgreSQL's own tools (pg_dump, base backups), and after putting one back run `threatmesh store restored --from WHAT`",
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
        StoreCommand::Copy { .. } | StoreCommand::Restored { .. } => {
            unreachable!("handled above")
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
