//! `threatmesh sight ID` (publisher certificate): report that we saw an
//! indicator; `threatmesh sightings ID` (admin certificate): the sightings
//! this node holds of one.

use std::path::Path;

use clap::Args;

use super::CliError;
use super::client::{AdminSession, As, ClientArgs, PublisherArgs, channel, rpc_error};
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::proto::v1::{ListSightingsRequest, SightRequest, SightingRecord};

/// Arguments of `threatmesh sight`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh sight 6f1c0f5e-7d0a-4f53-9a52-0b6c4b1e2d3f
  threatmesh sight 6f1c0f5e-... --count 12 --first-seen 2026-12-06T08:00:00Z \\
      --last-seen 2026-12-06T09:30:00Z --sector telecom --country DE

What leaves this node: a report signed by our org naming the indicator by origin
and id (never its value), how many times it was seen that day, first and last
seen, and the sector and country only if you give them. It goes back to the
partner that sent us the indicator, and on towards its origin, only where each
hop's policy has `[sightings] send = true` (ours) or `relay = true` (others').
Sightings add up per indicator and UTC day: running this twice with --count 1
reports 2 for the day (with the same --idempotency-key, the second adds nothing). The node must hold the indicator (`threatmesh lookup
VALUE` shows its id).")]
pub struct SightArgs {
    /// The indicator's id (a UUID).
    pub id: String,
    /// Its origin org, when this node holds that id from more than one.
    #[arg(long, value_name = "ORG")]
    pub origin: Option<String>,
    /// How many times it was seen.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// When it was first seen (RFC 3339; default: --last-seen).
    #[arg(long, value_name = "TIME")]
    pub first_seen: Option<String>,
    /// When it was last seen (RFC 3339; default: now). Both on one UTC day.
    #[arg(long, value_name = "TIME")]
    pub last_seen: Option<String>,
    /// Our sector, disclosed inside the signed report (optional).
    #[arg(long)]
    pub sector: Option<String>,
    /// The country it was seen in, ISO 3166-1 alpha-2 (optional).
    #[arg(long)]
    pub country: Option<String>,
    /// Makes a retry safe: the same key with the same sighting again adds
    /// nothing (1-128 printable ASCII characters, e.g. the SIEM's alert id).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `threatmesh sightings`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh sightings 6f1c0f5e-7d0a-4f53-9a52-0b6c4b1e2d3f
  threatmesh sightings --json 6f1c0f5e-7d0a-4f53-9a52-0b6c4b1e2d3f

Every sighting report this node holds of the indicator: ours, and those partners
sent on their way to its origin, one per sighter and UTC day (a later report of
the day replaces the earlier one), with the path each came along.")]
pub struct SightingsArgs {
    /// The indicator's id (a UUID).
    pub id: String,
    /// Only sightings of the indicator of this origin.
    #[arg(long, value_name = "ORG")]
    pub origin: Option<String>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

fn time_arg(field: &str, v: &Option<String>) -> Result<i64, CliError> {
    v.as_deref().map_or(Ok(0), |s| {
        super::publish::parse_rfc3339_ms(field, s).map_err(CliError::Usage)
    })
}

/// Runs `threatmesh sight`.
pub async fn sight(config: &Path, conn: &PublisherArgs, args: &SightArgs) -> Result<(), CliError> {
    let req = SightRequest {
        indicator_origin: args.origin.clone().unwrap_or_default(),
        indicator_id: args.id.clone(),
        count: args.count,
        first_seen_unix_ms: time_arg("--first-seen", &args.first_seen)?,
        last_seen_unix_ms: time_arg("--last-seen", &args.last_seen)?,
        sector: args.sector.clone().unwrap_or_default(),
        country: args.country.clone().unwrap_or_default(),
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
    };
    if args.count == 0 {
        return Err(CliError::Usage("--count: must be at least 1".into()));
    }
    let settings = conn.load(config)?;
    let mut client = ExchangeClient::new(channel(&settings, As::Publisher)?);
    let r = client
        .sight(req)
        .await
        .map_err(|s| rpc_error(&settings, s))?
        .into_inner();
    let Some(rec) = r.sighting else {
        return Err(CliError::Rpc("the node answered without the report".into()));
    };
    if args.json {
        let mut v = record_json(&rec);
        v["replayed"] = r.replayed.into();
        out!("{v}");
    } else if r.replayed {
        out!(
            "already reported under this key; nothing added: {}",
            record_line(&rec)
        );
    } else {
        out!("{}", record_line(&rec));
    }
    Ok(())
}

/// Runs `threatmesh sightings`.
pub async fn list(config: &Path, conn: &ClientArgs, args: &SightingsArgs) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    let r = rpc!(
        a,
        list_sightings(ListSightingsRequest {
            indicator_id: args.id.clone(),
            indicator_origin: args.origin.clone().unwrap_or_default(),
        })
    );
    if args.json {
        let all: Vec<serde_json::Value> = r.sightings.iter().map(record_json).collect();
        out!(
            "{}",
            serde_json::json!({"indicator_id": args.id, "total": r.total, "sightings": all})
        );
        return Ok(());
    }
    if r.sightings.is_empty() {
        out!("no sightings of {} held", args.id);
        return Ok(());
    }
    out!(
        "{} sighting(s) of {} in {} report(s)",
        r.total,
        args.id,
        r.sightings.len()
    );
    for rec in &r.sightings {
        out!("  {}", record_line(rec));
    }
    Ok(())
}

/// One report on one line.
pub fn record_line(rec: &SightingRecord) -> String {
    let Some(s) = &rec.sighting else {
        return String::new();
    };
    let day = super::audit::rfc3339(s.window_start_unix_ms);
    let from = if rec.received_from.is_empty() {
        "reported here".to_string()
    } else {
        format!("via {}", rec.path.join(" > "))
    };
    let mut disclosed = Vec::new();
    if !s.sector.is_empty() {
        disclosed.push(format!("sector {}", s.sector));
    }
    if !s.country.is_empty() {
        disclosed.push(format!("in {}", s.country));
    }
    format!(
        "{} saw {}/{} v{} {}x on {} (first {}, last {}){}; {}",
        s.sighter_org,
        s.indicator_origin,
        s.indicator_id,
        s.indicator_version,
        s.count,
        day.get(..10).unwrap_or(&day),
        super::audit::rfc3339(s.first_seen_unix_ms),
        super::audit::rfc3339(s.last_seen_unix_ms),
        if disclosed.is_empty() {
            String::new()
        } else {
            format!(", {}", disclosed.join(", "))
        },
        from
    )
}

/// One report as JSON.
pub fn record_json(rec: &SightingRecord) -> serde_json::Value {
    let Some(s) = &rec.sighting else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "sighter": s.sighter_org, "indicator_origin": s.indicator_origin,
        "indicator_id": s.indicator_id, "indicator_version": s.indicator_version,
        "count": s.count, "first_seen_unix_ms": s.first_seen_unix_ms,
        "last_seen_unix_ms": s.last_seen_unix_ms, "window_start_unix_ms": s.window_start_unix_ms,
        "reported_unix_ms": s.reported_unix_ms, "sector": s.sector, "country": s.country,
        "received_from": rec.received_from, "path": rec.path, "stored_unix_ms": rec.stored_unix_ms,
    })
}
