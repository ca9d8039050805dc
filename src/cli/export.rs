//! `threatmesh export`: what the node holds — or exactly what one partner's
//! policy releases to it — as a STIX 2.1 bundle, CSV, or blocklists, through
//! the Admin service with the admin certificate.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use crate::interop::stix;
use crate::model::{KIND_NAMES, kind_name, tlp_name};
use crate::proto::v1::{ExportRequest, ExportedIndicator, Indicator, SightingRecord};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One STIX 2.1 bundle: indicators, their origins' identities, the TLP
    /// 2.0 marking definitions; each indicator carries its origin's signed
    /// envelope as DSSE JSON (x_threatmesh_envelope). Without --partner,
    /// also a `sighting` per sighting report held.
    Stix,
    /// CSV with a header line; list fields joined with ';'.
    Csv,
    /// One value per line, one file per kind (`--out DIR`, or `--kind K`
    /// to standard output): what a firewall or DNS resolver blocks now
    /// (no revoked, expired or not yet valid indicators).
    Blocklist,
    /// A directory MISP can add as a feed (`--out DIR`): manifest.json and
    /// one event per origin org. Revoked indicators are left out.
    MispFeed,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Stix => "stix",
            Format::Csv => "csv",
            Format::Blocklist => "blocklist",
            Format::MispFeed => "misp-feed",
        }
    }
}

/// Arguments of `threatmesh export`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh export --format stix --out all.json
  threatmesh export --format stix --partner isp.example --out isp-view.json
  threatmesh export --format csv --since 2026-12-01T00:00:00Z > recent.csv
  threatmesh export --format blocklist --out blocklists/      # ipv4.txt, domain.txt, ...
  threatmesh export --format blocklist --kind domain > rpz-input.txt
  threatmesh export --format misp-feed --partner misp.example --out feed/  # add as a MISP feed

The latest version of every indicator is exported (and, as STIX, every sighting
report held: `sighting` objects). With --partner, exactly what
that partner's sharing policy releases to it now, decided by the same egress gate
as its live stream (nothing is sent). Every export is on the audit ledger
(`exported`). Files are written whole or not at all, mode 0600: they hold
partners' data.")]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Only what this partner's policy releases to it.
    #[arg(long)]
    pub partner: Option<String>,
    /// Only indicators stored at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Output file (a directory for blocklists); "-" or absent: standard
    /// output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Blocklists: only this kind, to standard output.
    #[arg(long)]
    pub kind: Option<String>,
}

/// Runs `threatmesh export`.
pub async fn run(config: &Path, conn: &ClientArgs, args: &ExportArgs) -> Result<(), CliError> {
    let since = match &args.since {
        Some(s) => super::publish::parse_rfc3339_ms("--since", s).map_err(CliError::Usage)?,
        None => 0,
    };
    let to_stdout = args.out.as_ref().is_none_or(|p| p.as_os_str() == "-");
    let kind = match &args.kind {
        Some(k) if args.format == Format::Blocklist => Some(
            crate::model::parse_kind(k)
                .ok_or_else(|| CliError::Usage(format!("--kind: '{k}' is not a kind")))?,
        ),
        Some(_) => {
            return Err(CliError::Usage(
                "--kind: only with --format blocklist".into(),
            ));
        }
        None => None,
    };
    if args.format == Format::MispFeed && to_stdout {
        return Err(CliError::Usage(
            "--format misp-feed writes a directory: give --out DIR".into(),
        ));
    }
    if args.format == Format::Blocklist && kind.is_none() && to_stdout {
        return Err(CliError::Usage(
            "--format blocklist writes one file per kind: give --out DIR, or --kind K for standard output".into(),
        ));
    }
    let mut a = AdminSession::open(config, conn)?;
    let mut stream = rpc!(
        a,
        export(ExportRequest {
            partner: args.partner.clone().unwrap_or_default(),
            since_unix_ms: since,
            format: args.format.name().into(),
        })
    );
    let now = crate::clock::wall_ms();
    let mut sink: Box<dyn Sink> = match args.format {
        Format::Stix => Box::new(StixBundle::new(Output::open(args.out.as_deref())?, now)),
        Format::Csv => Box::new(Csv(Output::open(args.out.as_deref())?)),
        Format::MispFeed => Box::new(MispFeed {
            dir: args.out.clone().unwrap_or_default(),
            events: BTreeMap::new(),
            now,
        }),
        Format::Blocklist => Box::new(Blocklists {
            out: args.out.clone().filter(|_| !to_stdout),
            only: kind.map(|k| k as i32),
            lists: BTreeMap::new(),
            now,
        }),
    };
    sink.begin().map_err(write_err)?;
    let (mut count, mut withheld, mut sighted) = (0u64, 0u64, 0u64);
    while let Some(page) = stream.message().await.map_err(|s| a.fail(s))? {
        withheld += page.withheld;
        for x in &page.indicators {
            count += 1;
            sink.item(x).map_err(write_err)?;
        }
        for rec in &page.sightings {
            sighted += 1;
            sink.sighting(rec).map_err(write_err)?;
        }
    }
    sink.end().map_err(write_err)?;
    let whose = match &args.partner {
        Some(p) => format!(" ({p}'s policy view; {withheld} withheld)"),
        None => String::new(),
    };
    let sightings = if args.format == Format::Stix && sighted > 0 {
        format!(" and {sighted} sighting report(s)")
    } else {
        String::new()
    };
    eprintln!(
        "exported {count} indicator(s){sightings} as {}{whose}",
        args.format.name()
    );
    Ok(())
}

fn write_err(e: std::io::Error) -> CliError {
    CliError::Failed(format!("cannot write the export: {e}"))
}

/// Where an export goes: standard output, or a file written beside its
/// final name and renamed into place once complete (mode 0600).
enum Output {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        w: std::io::BufWriter<std::fs::File>,
        partial: PathBuf,
        path: PathBuf,
    },
}

impl Output {
    fn open(path: Option<&Path>) -> Result<Self, CliError> {
        match path {
            None => Ok(Output::Stdout(std::io::BufWriter::new(std::io::stdout()))),
            Some(p) if p.as_os_str() == "-" => {
                Ok(Output::Stdout(std::io::BufWriter::new(std::io::stdout())))
            }
            Some(p) => {
                let partial = partial_path(p);
                let f = private_file(&partial)
                    .map_err(|e| CliError::Failed(format!("--out {}: {e}", partial.display())))?;
                Ok(Output::File {
                    w: std::io::BufWriter::new(f),
                    partial,
                    path: p.to_path_buf(),
                })
            }
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Output::Stdout(mut w) => w.flush(),
            Output::File { w, partial, path } => {
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
                std::fs::rename(&partial, &path)
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stdout(w) => w.write(buf),
            Output::File { w, .. } => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(w) => w.flush(),
            Output::File { w, .. } => w.flush(),
        }
    }
}

/// `FILE.partial` beside `FILE`.
fn partial_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    p.with_file_name(name)
}

/// A new file only its owner can read.
fn private_file(p: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(p)
}

/// One export format, fed page by page.
trait Sink {
    fn begin(&mut self) -> std::io::Result<()>;
    fn item(&mut self, x: &ExportedIndicator) -> std::io::Result<()>;
    /// A sighting report (full exports only); formats without a place for
    /// sightings leave them out.
    fn sighting(&mut self, _: &SightingRecord) -> std::io::Result<()> {
        Ok(())
    }
    fn end(self: Box<Self>) -> std::io::Result<()>;
}

/// A STIX 2.1 bundle, one object per line: the TLP marking definitions,
/// the indicators, then the identities of their origins.
struct StixBundle {
    out: Output,
    origins: std::collections::BTreeSet<String>,
    now: i64,
}

impl StixBundle {
    fn new(out: Output, now: i64) -> Self {
        Self {
            out,
            origins: Default::default(),
            now,
        }
    }
}

impl Sink for StixBundle {
    fn begin(&mut self) -> std::io::Result<()> {
        let id = format!("bundle--{}", uuid::Uuid::new_v4());
        write!(
            self.out,
            "{{\"type\":\"bundle\",\"id\":\"{id}\",\"objects\":["
        )?;
        for (i, m) in stix::marking_objects().iter().enumerate() {
            let sep = if i == 0 { "\n" } else { ",\n" };
            write!(self.out, "{sep}{m}")?;
        }
        Ok(())
    }

    fn item(&mut self, x: &ExportedIndicator) -> std::io::Result<()> {
        let Some(ind) = &x.indicator else {
            return Ok(());
        };
        self.origins.insert(ind.origin_org.clone());
        self.out.write_all(b",\n")?;
        serde_json::to_writer(
            &mut self.out,
            &stix::IndicatorObject::new(ind, x.envelope.as_ref()),
        )?;
        Ok(())
    }

    fn sighting(&mut self, rec: &SightingRecord) -> std::io::Result<()> {
        let Some(s) = &rec.sighting else {
            return Ok(());
        };
        self.origins.insert(s.sighter_org.clone());
        let obj = stix::sighting_object(s, rec.envelope.as_ref());
        write!(self.out, ",\n{obj}")
    }

    fn end(mut self: Box<Self>) -> std::io::Result<()> {
        for org in &self.origins {
            let identity = stix::identity_object(org, org, self.now);
            write!(self.out, ",\n{identity}")?;
        }
        writeln!(self.out, "\n]}}")?;
        self.out.finish()
    }
}

/// The CSV header; [`csv_row`] writes the same columns.
pub const CSV_HEADER: &str = "id,version,origin,kind,value,tlp,recipients,may_forward,hop_limit,confidence,tags,jurisdictions,kill_chain_phases,valid_from,valid_until,description,revoked,created,modified";

/// One CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One indicator as a CSV line (no newline).
pub fn csv_row(i: &Indicator) -> String {
    let m = i.marking.clone().unwrap_or_default();
    let time = |ms: i64| {
        if ms == 0 {
            String::new()
        } else {
            stix::timestamp(ms)
        }
    };
    [
        i.id.clone(),
        i.version.to_string(),
        i.origin_org.clone(),
        kind_name(i.kind).unwrap_or("").to_string(),
        i.value.clone(),
        tlp_name(m.tlp).unwrap_or("").to_string(),
        m.recipients.join(";"),
        m.may_forward.to_string(),
        m.hop_limit.to_string(),
        i.confidence.to_string(),
        i.tags.join(";"),
        i.jurisdictions.join(";"),
        i.kill_chain_phases.join(";"),
        time(i.valid_from_unix_ms),
        time(i.valid_until_unix_ms),
        i.description.clone(),
        i.revoked.to_string(),
        time(i.created_unix_ms),
        time(i.modified_unix_ms),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

struct Csv(Output);

impl Sink for Csv {
    fn begin(&mut self) -> std::io::Result<()> {
        writeln!(self.0, "{CSV_HEADER}")
    }

    fn item(&mut self, x: &ExportedIndicator) -> std::io::Result<()> {
        match &x.indicator {
            Some(i) => writeln!(self.0, "{}", csv_row(i)),
            None => Ok(()),
        }
    }

    fn end(self: Box<Self>) -> std::io::Result<()> {
        self.0.finish()
    }
}

/// Values to block now, by kind.
struct Blocklists {
    out: Option<PathBuf>,
    only: Option<i32>,
    lists: BTreeMap<i32, std::collections::BTreeSet<String>>,
    now: i64,
}

/// Whether a firewall should block `i` at `now`: not revoked, valid now.
fn blocks_now(i: &Indicator, now: i64) -> bool {
    !i.revoked
        && i.valid_from_unix_ms <= now
        && (i.valid_until_unix_ms == 0 || i.valid_until_unix_ms > now)
}

impl Sink for Blocklists {
    fn begin(&mut self) -> std::io::Result<()> {
        if let Some(dir) = &self.out {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    fn item(&mut self, x: &ExportedIndicator) -> std::io::Result<()> {
        if let Some(i) = &x.indicator
            && blocks_now(i, self.now)
            && self.only.is_none_or(|k| k == i.kind)
        {
            self.lists
                .entry(i.kind)
                .or_default()
                .insert(i.value.clone());
        }
        Ok(())
    }

    fn end(self: Box<Self>) -> std::io::Result<()> {
        let Some(dir) = &self.out else {
            let mut o = Output::Stdout(std::io::BufWriter::new(std::io::stdout()));
            for v in self.lists.values().flatten() {
                writeln!(o, "{v}")?;
            }
            return o.finish();
        };
        // Every kind gets its file, empty ones too, so a firewall that
        // reads them sees a withdrawn list as empty rather than stale.
        for (name, kind) in KIND_NAMES {
            if self.only.is_some_and(|k| k != kind as i32) {
                continue;
            }
            let path = dir.join(format!("{name}.txt"));
            let mut o =
                Output::open(Some(&path)).map_err(|e| std::io::Error::other(e.to_string()))?;
            for v in self.lists.get(&(kind as i32)).into_iter().flatten() {
                writeln!(o, "{v}")?;
            }
            o.finish()?;
        }
        Ok(())
    }
}

/// A MISP feed directory: one event per origin org (a stable uuid, so
/// MISP updates it on the next fetch) and manifest.json. (MISP's optional
/// hashes.csv cache is not written: it wants MD5s of the values.)
struct MispFeed {
    dir: PathBuf,
    events: BTreeMap<String, Vec<serde_json::Value>>,
    now: i64,
}

impl Sink for MispFeed {
    fn begin(&mut self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)
    }

    fn item(&mut self, x: &ExportedIndicator) -> std::io::Result<()> {
        if let Some(i) = &x.indicator
            && !i.revoked
        {
            self.events
                .entry(i.origin_org.clone())
                .or_default()
                .push(crate::interop::misp::attribute(i));
        }
        Ok(())
    }

    fn end(self: Box<Self>) -> std::io::Result<()> {
        let mut manifest = serde_json::Map::new();
        for (origin, attributes) in self.events {
            let uuid = crate::interop::misp::feed_event_uuid(&origin);
            let (event, entry) = crate::interop::misp::feed_event(&origin, attributes, self.now);
            let mut o = Output::open(Some(&self.dir.join(format!("{uuid}.json"))))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            writeln!(o, "{event}")?;
            o.finish()?;
            manifest.insert(uuid, entry);
        }
        // The manifest last: a feed reader sees the new events only once
        // all of them are in place.
        let mut o = Output::open(Some(&self.dir.join("manifest.json")))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        writeln!(o, "{}", serde_json::Value::Object(manifest))?;
        o.finish()
    }
}
