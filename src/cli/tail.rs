//! `threatmesh tail`: what the node holds, then what arrives, through the
//! Admin service with the admin certificate.

use std::path::Path;

use clap::Args;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use crate::model::{kind_name, tlp_name};
use crate::proto::v1::{Indicator, StoredIndicator, TailRequest};

/// Arguments of `threatmesh tail`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh tail                       # what is held, then follows until Ctrl-C
  threatmesh tail --no-follow --json    # one JSON object per indicator, then exit
  threatmesh tail --after 1200")]
pub struct TailArgs {
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Print what is stored and exit instead of following new arrivals.
    #[arg(long)]
    pub no_follow: bool,
    /// Start after this local sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
}

/// A JSON view of an indicator for scripts.
pub fn indicator_json(ind: &Indicator) -> serde_json::Value {
    let m = ind.marking.clone().unwrap_or_default();
    serde_json::json!({
        "origin": ind.origin_org, "id": ind.id, "version": ind.version,
        "kind": kind_name(ind.kind).unwrap_or("unknown"), "value": ind.value,
        "tlp": tlp_name(m.tlp).unwrap_or("unknown"), "recipients": m.recipients,
        "confidence": ind.confidence, "tags": ind.tags, "jurisdictions": ind.jurisdictions,
        "created_unix_ms": ind.created_unix_ms, "modified_unix_ms": ind.modified_unix_ms,
        "valid_from_unix_ms": ind.valid_from_unix_ms, "valid_until_unix_ms": ind.valid_until_unix_ms,
        "description": ind.description, "revoked": ind.revoked, "key_id": ind.key_id,
    })
}

fn print_row(s: &StoredIndicator, json: bool) {
    let Some(ind) = &s.indicator else { return };
    let from = if s.received_from.is_empty() {
        "(local)"
    } else {
        &s.received_from
    };
    if json {
        let mut v = indicator_json(ind);
        v["seq"] = s.seq.into();
        v["received_from"] = s.received_from.clone().into();
        v["stored_unix_ms"] = s.stored_unix_ms.into();
        out!("{v}");
    } else {
        let tlp = tlp_name(ind.marking.as_ref().map(|m| m.tlp).unwrap_or(0)).unwrap_or("?");
        out!(
            "{:>6}  {:<20} {:<20} {:<12} {:<6} {:<40} {:>3}  {} v{}{}",
            s.seq,
            from,
            ind.origin_org,
            tlp,
            kind_name(ind.kind).unwrap_or("?"),
            ind.value,
            ind.confidence,
            ind.id,
            ind.version,
            if ind.revoked { " REVOKED" } else { "" }
        );
    }
}

/// Runs `threatmesh tail`.
pub async fn run(config: &Path, conn: &ClientArgs, args: &TailArgs) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    let mut stream = rpc!(
        a,
        tail(TailRequest {
            after_seq: args.after,
            follow: !args.no_follow,
        })
    );
    if !args.json {
        out!(
            "{:>6}  {:<20} {:<20} {:<12} {:<6} {:<40} {:>3}  ID",
            "SEQ",
            "FROM",
            "ORIGIN",
            "TLP",
            "KIND",
            "VALUE",
            "CNF"
        );
    }
    loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(batch)) => for s in &batch.indicators { print_row(s, args.json) },
                Ok(None) => return Ok(()),
                Err(s) => return Err(a.stream_broken(s).await),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
