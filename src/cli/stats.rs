//! `threatmesh stats` (admin certificate): the mesh-wide statistics this
//! node holds — its own counts and the signed reports partners shared —
//! summed, naming who contributed.

use std::path::Path;

use clap::Args;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use crate::proto::v1::MeshStatisticsRequest;

/// Arguments of `threatmesh stats`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh stats
  threatmesh stats --by kind,jurisdiction --period week
  threatmesh stats --since 2026-12-01T00:00:00Z --json

Counts of indicators published, received and sighted, per kind, TLP, tag and
jurisdiction, summed over this node's own counts (exact) and the signed reports
partners shared (`[statistics] share` in their policy for us), with each org
that contributed. Reports cover today and yesterday (--period day) or this week
and last week (--period week, from Monday 00:00 UTC). A report may carry noise
(its epsilon is listed; each cell is then within 13.8/epsilon of the truth with
probability 0.999999) and leaves out cells below its minimum count.")]
pub struct StatsArgs {
    /// Dimensions to show, comma-separated: total, kind, tlp, tag,
    /// jurisdiction (default: all).
    #[arg(long, value_delimiter = ',')]
    pub by: Vec<String>,
    /// Only periods starting at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// day or week.
    #[arg(long, default_value = "day")]
    pub period: String,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `threatmesh stats`.
pub async fn run(config: &Path, conn: &ClientArgs, args: &StatsArgs) -> Result<(), CliError> {
    let since = match &args.since {
        Some(s) => super::publish::parse_rfc3339_ms("--since", s).map_err(CliError::Usage)?,
        None => 0,
    };
    let mut a = AdminSession::open(config, conn)?;
    let r = rpc!(
        a,
        mesh_statistics(MeshStatisticsRequest {
            period: args.period.clone(),
            since_unix_ms: since,
            by: args.by.clone(),
        })
    );
    if args.json {
        let rows: Vec<serde_json::Value> = r
            .rows
            .iter()
            .map(|x| {
                serde_json::json!({"measure": x.measure, "dimension": x.dimension, "value": x.value,
                    "count": x.count, "contributors": x.contributors})
            })
            .collect();
        let reports: Vec<serde_json::Value> = r
            .reports
            .iter()
            .map(|x| {
                serde_json::json!({"reporter": x.reporter_org, "period": x.period,
                    "period_start_unix_ms": x.period_start_unix_ms, "made_unix_ms": x.made_unix_ms,
                    "epsilon": x.epsilon, "min_count": x.min_count,
                    "received_from": x.received_from, "path": x.path})
            })
            .collect();
        out!("{}", serde_json::json!({"rows": rows, "reports": reports}));
        return Ok(());
    }
    let mut orgs: Vec<&str> = r.reports.iter().map(|x| x.reporter_org.as_str()).collect();
    orgs.sort();
    orgs.dedup();
    out!(
        "{} report(s) from {} org(s): {}",
        r.reports.len(),
        orgs.len(),
        orgs.join(", ")
    );
    for x in &r.reports {
        let day = super::audit::rfc3339(x.period_start_unix_ms);
        let how = if x.epsilon > 0.0 {
            format!("noise epsilon {}, ", x.epsilon)
        } else {
            String::new()
        };
        let from = if x.received_from.is_empty() {
            "ours, exact".to_string()
        } else {
            format!("{how}min count {}, via {}", x.min_count, x.path.join(" > "))
        };
        out!(
            "  {} {} from {}: {}",
            x.reporter_org,
            x.period,
            day.get(..10).unwrap_or(&day),
            from
        );
    }
    if r.rows.is_empty() {
        out!("no counts");
        return Ok(());
    }
    out!(
        "{:<10} {:<13} {:<24} {:>8}  contributors",
        "measure",
        "dimension",
        "value",
        "count"
    );
    for x in &r.rows {
        out!(
            "{:<10} {:<13} {:<24} {:>8}  {}",
            x.measure,
            x.dimension,
            if x.value.is_empty() { "-" } else { &x.value },
            x.count,
            x.contributors.join(", ")
        );
    }
    Ok(())
}
