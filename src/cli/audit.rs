//! `threatmesh audit log|verify`: the hash-chained ledger of what went to
//! whom under which rule, what was withheld and why, what was accepted or
//! refused, and which admin changed policies, partners and certificates.
//! Through the node's Admin service; `verify --offline` reads the store file
//! itself, for auditors and stopped nodes.

use std::path::Path;

use clap::Subcommand;

use super::CliError;
use super::client::{AdminSession, ClientArgs, load};
use super::publish::parse_rfc3339_ms;
use crate::proto::v1::{AuditLogRequest, AuditVerifyRequest, ListWitnessedHeadsRequest};
use crate::store::Store;

/// `threatmesh audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print ledger rows, oldest first.
    #[command(after_help = "\
Examples:
  threatmesh audit log --partner isp.example --since 2026-11-01T00:00:00Z
  threatmesh audit log --json | jq -r 'select(.event == \"withheld\") | .rule' | sort | uniq -c")]
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
    /// Check the whole chain; names the first edited, deleted or reordered
    /// row. With --against, also check it against heads of this ledger that
    /// partners signed copies of: a ledger cut or rewritten and re-chained
    /// passes the chain check but not this one.
    #[command(after_help = "\
Examples:
  threatmesh audit verify                      # ask the node
  threatmesh audit verify --offline            # read the store file (node stopped, or a copy)
  threatmesh audit verify --against heads.jsonl")]
    Verify {
        /// Read the store file (`store.path`) directly instead of asking the
        /// node: for auditors with a copy of the database, or a stopped node.
        #[arg(long)]
        offline: bool,
        /// A file of our ledger heads a partner kept: the output of
        /// `threatmesh audit heads --org <us> --json` on the partner's node.
        #[arg(long, value_name = "PARTNER-HEADS")]
        against: Option<std::path::PathBuf>,
    },
    /// Ledger heads partners signed and gave this node (we witness their
    /// ledgers). Give `--json` output to that partner for its
    /// `audit verify --against`.
    #[command(after_help = "\
Examples:
  threatmesh audit heads --org cert.example --json > cert-heads.jsonl   # give to cert.example")]
    Heads {
        /// Only heads of this partner.
        #[arg(long)]
        org: Option<String>,
        /// One JSON object per line (what `audit verify --against` reads).
        #[arg(long)]
        json: bool,
    },
}

/// Reads a heads file (`audit heads --json` output): the signed envelopes.
fn read_heads(path: &Path) -> Result<Vec<Vec<u8>>, CliError> {
    use base64::Engine;
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--against {}: {e}", path.display())))?;
    let mut heads = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |why: String| {
            CliError::Usage(format!(
                "--against {} line {}: {why}",
                path.display(),
                i + 1
            ))
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let env = v.get("envelope").and_then(|e| e.as_str()).ok_or_else(|| {
            bad("no \"envelope\" field (expected `audit heads --json` output)".into())
        })?;
        heads.push(
            base64::engine::general_purpose::STANDARD
                .decode(env)
                .map_err(|e| bad(format!("envelope: {e}")))?,
        );
    }
    if heads.is_empty() {
        return Err(CliError::Usage(format!(
            "--against {}: no heads in the file",
            path.display()
        )));
    }
    Ok(heads)
}

/// Prints the outcome of a verification.
fn verified(r: Result<u64, String>, heads: usize) -> Result<(), CliError> {
    match r {
        Ok(rows) if heads > 0 => {
            out!(
                "audit ledger intact: {rows} rows, every row linked to the one before, consistent with {heads} head(s) a partner witnessed"
            );
            Ok(())
        }
        Ok(rows) => {
            out!("audit ledger intact: {rows} rows, every row linked to the one before");
            Ok(())
        }
        Err(problem) => Err(CliError::Failed(problem)),
    }
}

pub use crate::clock::rfc3339;

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
            if !*json {
                out!(
                    "{:>7} {:<24} {:<15} {:<20} {:<60} {:<26} DETAIL  [ACTOR]",
                    "SEQ",
                    "AT (UTC)",
                    "EVENT",
                    "PARTNER",
                    "SUBJECT",
                    "RULE"
                );
            }
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
                            "{:>7} {:<24} {:<15} {:<20} {:<60} {:<26} {}  [{}]",
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
        AuditCommand::Verify { offline, against } => {
            let heads = match against {
                Some(p) => read_heads(p)?,
                None => Vec::new(),
            };
            if !offline {
                let mut a = AdminSession::open(config, conn)?;
                let r = rpc!(
                    a,
                    audit_verify(AuditVerifyRequest {
                        against: heads.clone(),
                    })
                );
                let r = if r.intact { Ok(r.rows) } else { Err(r.problem) };
                return verified(r, heads.len());
            }
            let settings = load(config, conn)?;
            if !settings.store.present() {
                return Err(CliError::Usage(format!(
                    "{}: no such database",
                    settings.store.describe()
                )));
            }
            let store = Store::open(&settings.store, crate::clock::Clock::system()).await?;
            let result = store.verify_audit_against(&settings.org_id(), &heads).await;
            store.close().await;
            verified(result?, heads.len())
        }
        AuditCommand::Heads { org, json } => {
            use base64::Engine;
            let mut a = AdminSession::open(config, conn)?;
            let r = rpc!(
                a,
                list_witnessed_heads(ListWitnessedHeadsRequest {
                    org: org.clone().unwrap_or_default(),
                })
            );
            if *json {
                for h in r.heads {
                    out!(
                        "{}",
                        serde_json::json!({
                            "org": h.org, "rows": h.rows, "head_hash": hex::encode(&h.head_hash),
                            "signed_at": rfc3339(h.signed_unix_ms), "received_at": rfc3339(h.received_unix_ms),
                            "envelope": base64::engine::general_purpose::STANDARD.encode(&h.envelope),
                        })
                    );
                }
                return Ok(());
            }
            if r.heads.is_empty() {
                out!("no ledger heads witnessed yet");
                return Ok(());
            }
            out!(
                "{:<30} {:>8}  {:<20}  {:<20}  HEAD HASH",
                "ORG",
                "ROWS",
                "SIGNED",
                "RECEIVED"
            );
            for h in r.heads {
                out!(
                    "{:<30} {:>8}  {:<20}  {:<20}  {}",
                    h.org,
                    h.rows,
                    rfc3339(h.signed_unix_ms),
                    rfc3339(h.received_unix_ms),
                    hex::encode(&h.head_hash)
                );
            }
            Ok(())
        }
    }
}
