//! Benchmark phases of the interop paths: a partner reading its TAXII view
//! page by page, and `threatmesh import` of a large STIX bundle.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::{BenchError, BenchOptions, OPEN, err, link, listener, make_org, prefill};
use crate::proto::v1::Tlp;

/// A partner's paginated TAXII read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaxiiRead {
    /// Objects read (the partner's whole view).
    pub objects: u64,
    /// Pages of up to 1,000 objects.
    pub pages: u64,
    /// Objects per second.
    pub objects_per_s: f64,
}

/// An import of a STIX bundle by the `threatmesh import` command.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Import {
    /// Indicators in the bundle, all published.
    pub indicators: u64,
    /// Wall time of the command, seconds.
    pub seconds: f64,
    /// Indicators per second.
    pub per_s: f64,
    /// Peak resident memory of the import process, MB.
    pub peak_rss_mb: f64,
}

/// A partner reads `opts.taxii_objects` indicators, its whole policy view,
/// page by page (limit 1,000) over HTTPS with its node certificate; every
/// page passes the egress gate and is on the ledger before it is answered.
pub(super) async fn bench_taxii(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<TaxiiRead, BenchError> {
    let base = dir.join("taxii");
    let a = make_org(&base, "a.bench", opts).await?;
    let b = make_org(&base, "b.bench", opts).await?;
    prefill(&a, opts.taxii_objects, |_| (Tlp::Clear, 70)).await?;
    link(&a, &b, None, OPEN).await?;
    let taxii = listener().await?;
    let taxii_addr = taxii.local_addr().map_err(err)?;
    let node = super::start_with(&a, listener().await?, Some(taxii)).await?;
    let ca = std::fs::read_to_string(&a.tls.ca_cert).map_err(err)?;
    let tls = crate::taxii::client::client_tls(&ca, Some((&b.tls.node_cert, &b.tls.node_key)))
        .map_err(err)?;
    let cid = crate::taxii::collection_id(&a.org_id());
    let started = Instant::now();
    let (mut objects, mut pages, mut next) = (0u64, 0u64, None::<String>);
    loop {
        let path = match &next {
            None => format!("/api/collections/{cid}/objects/?limit=1000"),
            Some(n) => format!("/api/collections/{cid}/objects/?limit=1000&next={n}"),
        };
        let r =
            crate::taxii::client::request(taxii_addr, "localhost", tls.clone(), "GET", &path, None)
                .await
                .map_err(err)?;
        if r.status != 200 {
            return Err(err(format!("TAXII page: HTTP {}", r.status)));
        }
        let page = r.json().map_err(err)?;
        objects += page["objects"].as_array().map_or(0, |o| o.len() as u64);
        pages += 1;
        match page["next"].as_str() {
            Some(n) if page["more"] == true => next = Some(n.to_string()),
            _ => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    node.stop().await;
    if objects != opts.taxii_objects {
        return Err(err(format!(
            "TAXII gave {objects} of {} objects",
            opts.taxii_objects
        )));
    }
    Ok(TaxiiRead {
        objects,
        pages,
        objects_per_s: objects as f64 / elapsed,
    })
}

/// Writes a STIX bundle of `n` distinct TLP:GREEN IPv4 indicators.
fn write_bundle(path: &std::path::Path, n: u64, now_ms: i64) -> Result<(), BenchError> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    let green = crate::interop::stix::marking_of_tlp(Tlp::Green as i32).unwrap_or_default();
    let at = crate::interop::stix::timestamp(now_ms - 60_000);
    write!(
        w,
        "{{\"type\":\"bundle\",\"id\":\"bundle--{}\",\"objects\":[",
        uuid::Uuid::new_v4()
    )
    .map_err(err)?;
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(0x0b00_0000u32 + i as u32);
        let sep = if i == 0 { "" } else { "," };
        write!(
            w,
            "{sep}\n{{\"type\":\"indicator\",\"spec_version\":\"2.1\",\"id\":\"indicator--{}\",\
             \"created\":\"{at}\",\"modified\":\"{at}\",\"pattern\":\"[ipv4-addr:value = '{ip}']\",\
             \"pattern_type\":\"stix\",\"valid_from\":\"{at}\",\"confidence\":70,\
             \"labels\":[\"bench\"],\"object_marking_refs\":[\"{green}\"]}}",
            uuid::Uuid::new_v4()
        )
        .map_err(err)?;
    }
    writeln!(w, "\n]}}").map_err(err)?;
    w.flush().map_err(err)
}

/// Peak resident memory of process `pid` so far, MB (Linux; 0 elsewhere).
fn peak_rss_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `threatmesh import` of a bundle of `opts.import_indicators`, run as its
/// own process against a node in this one: wall time and the command's
/// peak RSS (read from /proc while it runs).
pub(super) async fn bench_import(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<Import, BenchError> {
    let base = dir.join("import");
    let a = make_org(&base, "a.bench", opts).await?;
    let file = base.join("bundle.json");
    write_bundle(&file, opts.import_indicators, crate::clock::wall_ms())?;
    let node = super::start_with(&a, listener().await?, None::<TcpListener>).await?;
    let exe = std::env::current_exe().map_err(err)?;
    let started = Instant::now();
    let mut child = std::process::Command::new(exe)
        .arg("--config")
        .arg(&a.source)
        .args(["import", "--server", &node.addr.to_string()])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(err)?;
    let pid = child.id();
    let mut peak = 0.0f64;
    let status = loop {
        peak = peak.max(peak_rss_of(pid));
        match child.try_wait().map_err(err)? {
            Some(s) => break s,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let stored = node.ctx.store.count_indicators().await.map_err(err)?;
    node.stop().await;
    if !status.success() || stored != opts.import_indicators {
        let mut why = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut why);
        }
        return Err(err(format!(
            "import stored {stored} of {} ({status}): {why}",
            opts.import_indicators
        )));
    }
    Ok(Import {
        indicators: stored,
        seconds,
        per_s: stored as f64 / seconds,
        peak_rss_mb: peak,
    })
}
