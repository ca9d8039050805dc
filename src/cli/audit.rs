//! `threatmesh audit log|verify`: the hash-chained ledger of what went to
//! whom under which rule, what was withheld and why, what was accepted or
//! refused, and who changed policies and partners.

use std::path::Path;

use clap::Subcommand;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::CliError;
use super::publish::parse_rfc3339_ms;
use crate::config::Settings;
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
    Verify,
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Runs an audit command.
pub async fn run(config: &Path, cmd: &AuditCommand) -> Result<(), CliError> {
    let settings = Settings::load(config)?;
    let store = Store::open_sqlite(&settings.store.path).await?;
    let result = match cmd {
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
            let rows = store.audit_rows(partner.as_deref(), since_ms).await?;
            for r in rows {
                let e = &r.entry;
                if *json {
                    out!(
                        "{}",
                        serde_json::json!({
                            "seq": r.seq, "at": rfc3339(r.at_ms), "at_unix_ms": r.at_ms,
                            "event": e.event, "actor": e.actor, "partner": e.partner,
                            "subject": e.subject, "rule": e.rule, "detail": e.detail,
                        })
                    );
                } else {
                    out!(
                        "{:>7} {} {:<15} {:<20} {:<60} {:<26} {}  [{}]",
                        r.seq,
                        rfc3339(r.at_ms),
                        e.event,
                        if e.partner.is_empty() {
                            "-"
                        } else {
                            &e.partner
                        },
                        e.subject,
                        e.rule,
                        e.detail,
                        e.actor
                    );
                }
            }
            Ok(())
        }
        AuditCommand::Verify => match store.verify_audit().await? {
            Ok(n) => {
                out!("audit ledger intact: {n} rows, every row linked to the one before");
                Ok(())
            }
            Err(b) => Err(CliError::Failed(b.to_string())),
        },
    };
    store.close().await;
    result
}
