//! `threatmesh quarantine`: indicators that arrived signed by a key this
//! node does not know yet, waiting for their org's card (see
//! `threatmesh peer cards` and `peer approve-card`).

use std::path::Path;

use clap::Args;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use super::table::{col, listing, num};
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
    let mut a = AdminSession::open(config, conn)?;
    let list = rpc!(a, list_quarantine(ListQuarantineRequest {})).envelopes;
    listing(
        &list,
        args.json,
        |q| {
            serde_json::json!({
                "upstream": q.upstream, "upstream_seq": q.upstream_seq, "key_id": q.key_id,
                "path": q.path, "received_unix_ms": q.received_unix_ms,
                "expires_unix_ms": q.expires_unix_ms,
            })
        },
        "quarantine is empty",
        &[
            col("FROM"),
            num("SEQ"),
            col("UNKNOWN KEY"),
            col("DROPPED AT"),
            col("PATH"),
        ],
        |q| {
            vec![
                q.upstream.clone(),
                q.upstream_seq.to_string(),
                q.key_id.clone(),
                super::audit::rfc3339(q.expires_unix_ms),
                q.path.join(" > "),
            ]
        },
    );
    if !args.json && !list.is_empty() {
        out!(
            "{} waiting; `threatmesh peer cards` shows pending cards, `threatmesh peer approve-card ORG` trusts one",
            list.len()
        );
    }
    Ok(())
}
