//! `threatmesh status`: the node at a glance, through the Admin service with
//! the admin certificate: counts, and every partner link with its state and lag.

use std::path::Path;

use clap::Args;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use crate::proto::v1::StatusRequest;

/// Arguments of `threatmesh status`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh status
  threatmesh status --json | jq '.links[] | {partner, state, lag}'
  threatmesh status --wait 30 >/dev/null   # in a script, right after `serve &`")]
pub struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Wait up to SECS for the node to answer (a script that has just
    /// started `serve &`); exits 1 if it does not.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
}

fn ago(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let s = (crate::clock::wall_ms() - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// The LAST ERROR column: when it happened, and marked as past once the
/// link has been connected since.
fn last_error(l: &crate::proto::v1::LinkStatus) -> String {
    if l.last_error.is_empty() {
        return String::new();
    }
    if l.last_error_past {
        format!("(past, {}) {}", ago(l.last_error_unix_ms), l.last_error)
    } else {
        format!("({}) {}", ago(l.last_error_unix_ms), l.last_error)
    }
}

/// Runs `threatmesh status`.
pub async fn run(config: &Path, conn: &ClientArgs, args: &StatusArgs) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(args.wait);
    let s = loop {
        match a.client.status(StatusRequest {}).await {
            Ok(s) => break s.into_inner(),
            // Not up yet: nothing listens, or it is still starting.
            Err(e) if e.code() == tonic::Code::Unavailable && std::time::Instant::now() < until => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(a.fail(e)),
        }
    };
    if args.json {
        let links: Vec<serde_json::Value> = s
            .links
            .iter()
            .map(|l| {
                serde_json::json!({
                    "partner": l.partner, "endpoint": l.endpoint, "state": l.state,
                    "since_unix_ms": l.since_unix_ms, "last_message_unix_ms": l.last_message_unix_ms,
                    "cursor": l.cursor, "upstream_latest": l.upstream_latest, "lag": l.lag,
                    "last_error": l.last_error, "last_error_unix_ms": l.last_error_unix_ms,
                    "last_error_past": l.last_error_past, "retry_in_ms": l.retry_in_ms,
                    "policy": l.policy,
                    "quarantined": l.quarantined,
                    "sightings_waiting": l.sightings_waiting,
                    "clock_offset_ms": l.clock_offset_known.then_some(l.clock_offset_ms),
                    "clock_warning": l.clock_warning,
                })
            })
            .collect();
        out!(
            "{}",
            serde_json::json!({
                "org": s.org, "indicators": s.indicators, "latest_seq": s.latest_seq,
                "rejections": s.rejections, "audit_rows": s.audit_rows,
                "quarantined": s.quarantined, "sightings_waiting": s.sightings_waiting,
                "links": links,
            })
        );
        return Ok(());
    }
    out!(
        "{}: {} indicator versions (latest seq {}), {} refused envelopes, {} in quarantine, {} audit rows{}",
        s.org,
        s.indicators,
        s.latest_seq,
        s.rejections,
        s.quarantined,
        s.audit_rows,
        if s.sightings_waiting > 0 {
            format!(", {} sighting(s) waiting to go", s.sightings_waiting)
        } else {
            String::new()
        }
    );
    if s.links.is_empty() {
        out!("no partners registered");
        return Ok(());
    }
    out!(
        "{:<24} {:<12} {:<10} {:>8} {:>8} {:>6} {:<12} {:>9} {:<18} LAST ERROR",
        "PARTNER",
        "STATE",
        "SINCE",
        "CURSOR",
        "LAG",
        "QUAR",
        "LAST MSG",
        "CLOCK",
        "POLICY"
    );
    for l in &s.links {
        out!(
            "{:<24} {:<12} {:<10} {:>8} {:>8} {:>6} {:<12} {:>9} {:<18} {}",
            l.partner,
            l.state,
            ago(l.since_unix_ms),
            l.cursor,
            l.lag,
            l.quarantined,
            ago(l.last_message_unix_ms),
            clock(l),
            if l.policy.is_empty() {
                "(none)"
            } else {
                &l.policy
            },
            last_error(l)
        );
    }
    for l in s.links.iter().filter(|l| !l.clock_warning.is_empty()) {
        out!("warning: {}", l.clock_warning);
    }
    Ok(())
}

/// The CLOCK column: the partner's clock offset from ours ("+10m02s":
/// ahead; "-": not known yet).
fn clock(l: &crate::proto::v1::LinkStatus) -> String {
    if !l.clock_offset_known {
        return "-".into();
    }
    let s = l.clock_offset_ms.unsigned_abs() / 1000;
    let sign = if l.clock_offset_ms < 0 { '-' } else { '+' };
    if s < 60 {
        format!("{sign}{s}s")
    } else {
        format!("{sign}{}m{:02}s", s / 60, s % 60)
    }
}
