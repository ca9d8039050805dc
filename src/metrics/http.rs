//! The metrics listener: plain HTTP, loopback unless `metrics.listen` says
//! otherwise. `GET /metrics` (OpenMetrics text), `GET /livez` (the process
//! answers) and `GET /readyz` (the store answers and the node is not
//! shutting down) — for Prometheus, load balancers, Kubernetes probes and
//! the container's HEALTHCHECK, none of which hold a client certificate.
//! It serves counts labelled with partner org ids and rule names: no
//! indicator, key or policy content.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use super::PartnerLabel;
use crate::context::NodeContext;

/// Serves the metrics endpoints on `listener` until the node shuts down.
pub async fn serve(ctx: Arc<NodeContext>, listener: TcpListener) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, "metrics and probes serving (/metrics, /livez, /readyz)");
    let stop = ctx.shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ctx);
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.cancelled().await;
    });
    if let Err(e) = served.await {
        tracing::warn!(error = %e, "metrics listener stopped");
    }
}

async fn metrics(State(ctx): State<Arc<NodeContext>>) -> impl IntoResponse {
    refresh(&ctx).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.render(),
    )
}

/// Ready: not shutting down, and the store answers a read in time.
async fn readyz(State(ctx): State<Arc<NodeContext>>) -> impl IntoResponse {
    if ctx.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(2), ctx.store.latest_seq()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store: no answer within 2 s\n".to_string(),
        ),
    }
}

/// Sets the gauges from the node's state at scrape time.
async fn refresh(ctx: &NodeContext) {
    let m = &ctx.metrics;
    let links = ctx.links.snapshot();
    m.link_state.clear();
    m.lag.clear();
    m.clock_offset.clear();
    for (org, h) in &links {
        let partner = org.to_string();
        m.link_state
            .get_or_create(&super::LinkLabels {
                partner: partner.clone(),
                state: h.state.as_str().into(),
            })
            .set(1);
        let label = PartnerLabel { partner };
        if let Ok(cursor) = ctx.store.cursor(org).await {
            let lag = h.upstream_latest.saturating_sub(cursor);
            m.lag
                .get_or_create(&label)
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
        if let Some(ms) = h.clock_offset_ms {
            m.clock_offset.get_or_create(&label).set(ms as f64 / 1000.0);
        }
    }
    m.quarantined.clear();
    if let Ok(counts) = ctx.store.quarantine_counts().await {
        for (partner, n) in counts {
            m.quarantined
                .get_or_create(&PartnerLabel { partner })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    let bytes = match ctx.store.database_bytes().await {
        Ok(Some(bytes)) => bytes,
        _ => {
            let path = &ctx.settings.store.path;
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            [path.clone(), wal.into()]
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|md| md.len())
                .sum()
        }
    };
    m.store_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    m.log_seq
        .set(i64::try_from(ctx.store.latest_known()).unwrap_or(i64::MAX));
}
