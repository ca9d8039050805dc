//! `threatmesh quarantine`: indicators that arrived signed by a key this
//! node does not know yet, waiting for their org's card (see
//! `threatmesh peer cards` and `peer approve-card`), and indicators dated
//! ahead of our clock, waiting for it to reach their date.

use std::path::Path;

use clap::Args;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use super::table::{col, listing, num};
use crate::proto::v1::ListQuarantineRequest;

/// Arguments of `threatmesh quarantine`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh quarantine      # what waits, from which partner, and why")]
pub struct QuarantineArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Runs `threatmesh quarantine`.
pub async fn run(config: &Path, conn: &ClientArgs, args: &QuarantineArgs) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    let list = rpc!(a, list_quarantine(ListQuarantineRequest {})).envelopes;
    listing(
        &list,
        args.json,
        |q| {
            serde_json::json!({
                "upstream": q.upstream, "upstream_seq": q.upstream_seq, "key_id": q.key_id,
                "path": q.path, "received_unix_ms": q.received_unix_ms,
                "expires_unix_ms": q.expires_unix_ms, "due_unix_ms": q.due_unix_ms,
            })
        },
        "quarantine is empty",
        &[
            col("FROM"),
            num("SEQ"),
            col("WAITS FOR"),
            col("DROPPED AT"),
            col("PATH"),
        ],
        |q| {
            vec![
                q.upstream.clone(),
                q.upstream_seq.to_string(),
                if q.due_unix_ms == 0 {
                    format!("key {}", q.key_id)
                } else {
                    format!(
                        "our clock to reach {}",
                        super::audit::rfc3339(q.due_unix_ms)
                    )
                },
                super::audit::rfc3339(q.expires_unix_ms),
                q.path.join(" > "),
            ]
        },
    );
    if !args.json && !list.is_empty() {
        out!(
            "{} waiting; `threatmesh peer cards` shows pending cards, `threatmesh peer approve-card ORG` trusts one; \
             envelopes dated ahead of our clock are checked again when it reaches their date (`threatmesh status` shows each partner's clock offset)",
            list.len()
        );
    }
    Ok(())
}
