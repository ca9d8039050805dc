//! `threatmesh quarantine`: indicators that arrived signed by a key this
//! node does not know yet, waiting for their org's card (see
//! `threatmesh peer cards` and `peer approve-card`).

use std::path::Path;

use clap::Args;

use super::CliError;
use super::client::{ClientArgs, admin, rpc_error};
use crate::proto::v1::ListQuarantineRequest;

/// Arguments of `threatmesh quarantine`.
#[derive(Debug, Clone, Args)]
pub struct QuarantineArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Runs `threatmesh quarantine`.
pub async fn run(config: &Path, conn: &ClientArgs, args: &QuarantineArgs) -> Result<(), CliError> {
    let (settings, mut client) = admin(config, conn)?;
    let list = client
        .list_quarantine(ListQuarantineRequest {})
        .await
        .map_err(|e| rpc_error(&settings, e))?
        .into_inner()
        .envelopes;
    if args.json {
        for q in &list {
            out!(
                "{}",
                serde_json::json!({
                    "upstream": q.upstream, "upstream_seq": q.upstream_seq, "key_id": q.key_id,
                    "path": q.path, "received_unix_ms": q.received_unix_ms,
                    "expires_unix_ms": q.expires_unix_ms,
                })
            );
        }
        return Ok(());
    }
    if list.is_empty() {
        out!("quarantine is empty");
        return Ok(());
    }
    out!(
        "{:<22} {:>8} {:<34} {:<21} PATH",
        "FROM",
        "SEQ",
        "UNKNOWN KEY",
        "DROPPED AT"
    );
    for q in &list {
        out!(
            "{:<22} {:>8} {:<34} {:<21} {}",
            q.upstream,
            q.upstream_seq,
            q.key_id,
            super::audit::rfc3339(q.expires_unix_ms),
            q.path.join(" > ")
        );
    }
    out!(
        "{} waiting; `threatmesh peer cards` shows pending cards, `threatmesh peer approve-card ORG` trusts one",
        list.len()
    );
    Ok(())
}
