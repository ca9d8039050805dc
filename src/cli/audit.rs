//! `threatmesh audit log|verify`: the hash-chained ledger of what went to
//! whom under which rule, what was withheld and why, what was accepted or
//! refused, and which admin changed policies, partners and certificates.
//! Through the node's Admin service; `verify --offline` reads the store file
//! itself, for auditors and stopped nodes.

use std::path::Path;

use clap::Subcommand;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::CliError;
use super::client::{AdminSession, ClientArgs, load};
use super::publish::parse_rfc3339_ms;
use crate::proto::v1::{AuditLogRequest, AuditVerifyRequest};
use crate::store::Store;

/// `threatmesh audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print ledger rows, oldest first.
    Log {
        /// Only rows about this partner.
        #[arg(long)]
        partner: Option<String>,
        /// Only rows from this time on (RFC 3339, e.g. 2026-11-26T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check the whole chain; names the first edited, deleted or reordered row.
    Verify {
        /// Read the store file (`store.path`) directly instead of asking the
        /// node: for auditors with a copy of the database, or a stopped node.
        #[arg(long)]
        offline: bool,
    },
}

/// A Unix ms time as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Runs an audit command.
pub async fn run(config: &Path, conn: &ClientArgs, cmd: &AuditCommand) -> Result<(), CliError> {
    match cmd {
        AuditCommand::Log {
            partner,
            since,
            json,
        } => {
            let since_ms = since
                .as_deref()
                .map(|s| parse_rfc3339_ms("--since", s))
                .transpose()
                .map_err(CliError::Usage)?;
            let mut a = AdminSession::open(config, conn)?;
            let mut stream = rpc!(
                a,
                audit_log(AuditLogRequest {
                    partner: partner.clone().unwrap_or_default(),
                    since_unix_ms: since_ms.unwrap_or(0),
                })
            );
            while let Some(chunk) = stream.message().await.map_err(|e| a.fail(e))? {
                for r in chunk.rows {
                    if *json {
                        out!(
                            "{}",
                            serde_json::json!({
                                "seq": r.seq, "at": rfc3339(r.at_unix_ms), "at_unix_ms": r.at_unix_ms,
                                "event": r.event, "actor": r.actor, "partner": r.partner,
                                "subject": r.subject, "rule": r.rule, "detail": r.detail,
                            })
                        );
                    } else {
                        out!(
                            "{:>7} {} {:<15} {:<20} {:<60} {:<26} {}  [{}]",
                            r.seq,
                            rfc3339(r.at_unix_ms),
                            r.event,
                            if r.partner.is_empty() {
                                "-"
                            } else {
                                &r.partner
                            },
                            r.subject,
                            r.rule,
                            r.detail,
                            r.actor
                        );
                    }
                }
            }
            Ok(())
        }
        AuditCommand::Verify { offline: false } => {
            let mut a = AdminSession::open(config, conn)?;
            let r = rpc!(a, audit_verify(AuditVerifyRequest {}));
            if r.intact {
                out!(
                    "audit ledger intact: {} rows, every row linked to the one before",
                    r.rows
                );
                Ok(())
            } else {
                Err(CliError::Failed(r.problem))
            }
        }
        AuditCommand::Verify { offline: true } => {
            let settings = load(config, conn)?;
            if !settings.store.path.is_file() {
                return Err(CliError::Usage(format!(
                    "store.path {}: no such database",
                    settings.store.path.display()
                )));
            }
            let store =
                Store::open_sqlite(&settings.store.path, crate::clock::Clock::system()).await?;
            let result = store.verify_audit().await;
            store.close().await;
            match result? {
                Ok(n) => {
                    out!("audit ledger intact: {n} rows, every row linked to the one before");
                    Ok(())
                }
                Err(b) => Err(CliError::Failed(b.to_string())),
            }
        }
    }
}
