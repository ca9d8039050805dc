//! `threatmesh lookup VALUE`: do we hold it, who sent it, whom did we give
//! it to and under which rule (admin certificate).

use std::path::Path;

use clap::Args;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use crate::model::tlp_name;
use crate::proto::v1::LookupRequest;

/// Arguments of `threatmesh lookup`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh lookup 192.0.2.7
  threatmesh lookup Login-Bank.Example.          # normalised: login-bank.example
  threatmesh lookup --kind url 'http://evil.example/x'
  threatmesh lookup --json 0123456789abcdef0123456789abcdef

Every version of every indicator with that value, whoever its origin: where it
came from (origin and path), when we stored it, and every release decision about
it from the ledger (sent or withheld, to which partner, under which rule), and the
sightings held of it (`threatmesh sightings ID` for one indicator).")]
pub struct LookupArgs {
    /// The value, written as for `publish` (it is normalised the same way).
    pub value: String,
    /// Its kind when the value alone does not say (a domain-looking value is
    /// looked up as a domain).
    #[arg(long)]
    pub kind: Option<String>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `threatmesh lookup`.
pub async fn run(config: &Path, conn: &ClientArgs, args: &LookupArgs) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    let r = rpc!(
        a,
        lookup(LookupRequest {
            value: args.value.clone(),
            kind: args.kind.clone().unwrap_or_default(),
        })
    );
    if args.json {
        let hits: Vec<serde_json::Value> = r
            .hits
            .iter()
            .filter_map(|h| {
                let mut v = super::tail::indicator_json(h.indicator.as_ref()?);
                v["seq"] = h.seq.into();
                v["received_from"] = h.received_from.clone().into();
                v["stored_unix_ms"] = h.stored_unix_ms.into();
                v["path"] = h.path.clone().into();
                Some(v)
            })
            .collect();
        let decisions: Vec<serde_json::Value> = r
            .decisions
            .iter()
            .map(|d| {
                serde_json::json!({"partner": d.partner, "event": d.event, "rule": d.rule,
                    "version": d.version, "at_unix_ms": d.at_unix_ms, "detail": d.detail})
            })
            .collect();
        out!(
            "{}",
            serde_json::json!({"kind": r.kind, "value": r.value, "versions": hits, "decisions": decisions,
                "sightings": r.sightings.iter().map(super::sight::record_json).collect::<Vec<_>>()})
        );
        return Ok(());
    }
    if r.hits.is_empty() {
        out!("{} {}: not held", r.kind, r.value);
        return Ok(());
    }
    out!("{} {}: {} version(s) held", r.kind, r.value, r.hits.len());
    for h in &r.hits {
        let Some(i) = &h.indicator else { continue };
        let from = if h.received_from.is_empty() {
            "published here".to_string()
        } else {
            format!("from {} via {}", h.received_from, h.path.join(" > "))
        };
        out!(
            "  {} v{} origin {} {} confidence {} stored {} (seq {}), {}{}",
            i.id,
            i.version,
            i.origin_org,
            tlp_name(i.marking.as_ref().map(|m| m.tlp).unwrap_or(0)).unwrap_or("?"),
            i.confidence,
            super::audit::rfc3339(h.stored_unix_ms),
            h.seq,
            from,
            if i.revoked { ", REVOKED" } else { "" }
        );
    }
    if r.decisions.is_empty() {
        out!("no partner has been sent or denied it yet");
    }
    for d in &r.decisions {
        out!(
            "  {} {:<8} to {:<24} v{} rule {}{}",
            super::audit::rfc3339(d.at_unix_ms),
            d.event,
            d.partner,
            d.version,
            d.rule,
            if d.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.detail)
            }
        );
    }
    if !r.sightings.is_empty() {
        let total: u64 = r
            .sightings
            .iter()
            .filter_map(|x| x.sighting.as_ref().map(|s| s.count))
            .sum();
        out!("sightings: {total} in {} report(s)", r.sightings.len());
        for rec in &r.sightings {
            out!("  {}", super::sight::record_line(rec));
        }
    }
    Ok(())
}
