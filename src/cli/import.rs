//! `threatmesh import`: STIX 2.1 bundles, MISP event JSON and headed CSV,
//! each indicator signed and published by our node through the normal
//! publish path (publisher certificate), streamed so memory stays flat.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tokio::sync::mpsc;

use super::CliError;
use super::client::{As, channel, rpc_error};
use crate::interop::stix::{StixError, stix_field};
use crate::interop::{csv, misp, stix};
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::proto::v1::{IndicatorDraft, PublishRequest};

/// Entries sent in one PublishBatch (the most a node takes). With
/// [`BATCHES_IN_FLIGHT`], what keeps the node's group commits large: a
/// commit rewrites most index pages it touches, so rows per commit decide
/// the store's cost per row.
const BATCH: usize = 1000;
/// Encoded bytes of the drafts in one PublishBatch: under the smallest
/// request a node may be set to accept (`limits.max_message_bytes`).
const BATCH_BYTES: usize = crate::config::MIN_MESSAGE_BYTES * 3 / 4;
/// PublishBatch calls in flight at once (under a node's default 64
/// streams per connection).
const BATCHES_IN_FLIGHT: usize = 60;
/// Parsed items waiting to be published (bounds memory on huge inputs).
const QUEUED: usize = 1024;
/// Object errors printed in full; the rest are counted.
const SHOWN: usize = 20;

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Decided from the content: a JSON `bundle` is STIX, JSON with
    /// `Event` is MISP, anything else CSV.
    Auto,
    /// A STIX 2.1 bundle (or one STIX object).
    Stix,
    /// MISP event JSON: `{"Event": …}`, a list of those, or a REST
    /// search response.
    Misp,
    /// CSV with a header line (`kind`, `value`, `tlp` required).
    Csv,
}

/// Arguments of `threatmesh import`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh import feed.stix.json
  threatmesh import --format misp misp-event.json
  curl -s https://partner.example/iocs.csv | threatmesh import -

Each indicator is checked as `publish` checks it, then signed and published by
this org through the node (publisher certificate): the importer becomes its
origin. STIX objects other than indicators, compound or unknown patterns,
MISP types without a kind, revoked entries and entries with no TLP marking are
skipped and reported with their index or id, the property and the reason;
properties and columns that nothing carries are listed. Each entry is sent
with an idempotency key (STIX id + modified, MISP uuid + timestamp, CSV line
content), so importing the same input again publishes nothing twice.
Entries are sent 1,000 to a request (fewer when that would pass 192 KiB, and
whatever is left at the end of the input), up to 60 requests at once: a slow
pipe is published in steps of 1,000.
Exit status 0 when every entry was published or deliberately skipped, 1 when
any was refused as invalid.")]
pub struct ImportArgs {
    /// File to import; "-" for standard input.
    pub file: PathBuf,
    /// Input format.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,
    /// Check everything and report, but publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object per entry (published, skipped or refused).
    #[arg(long)]
    pub json: bool,
}

/// One entry of the input: where it is, and what it became.
struct Entry {
    /// `objects[12] (indicator--…)`, `line 7`, `Event[0].Attribute[3]`.
    place: String,
    outcome: Result<(IndicatorDraft, String), StixError>,
}

/// What the reader noticed about the input as a whole.
#[derive(Default)]
struct Notes {
    not_carried: BTreeMap<String, u64>,
}

/// Runs `threatmesh import`.
pub async fn run(
    config: &Path,
    conn: &super::client::PublisherArgs,
    args: &ImportArgs,
) -> Result<(), CliError> {
    let settings = conn.load(config)?;
    let mut input: Box<dyn BufRead + Send> = if args.file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(&args.file)
            .map_err(|e| CliError::Usage(format!("{}: {e}", args.file.display())))?;
        Box::new(std::io::BufReader::with_capacity(1 << 16, f))
    };
    let format = match args.format {
        InputFormat::Auto => sniff(&mut input)
            .map_err(|e| CliError::Usage(format!("{}: {e}", args.file.display())))?,
        f => f,
    };
    let now = crate::clock::wall_ms();
    let (tx, mut rx) = mpsc::channel::<Entry>(QUEUED);
    let reader = tokio::task::spawn_blocking(move || read_all(format, input, &tx, now));
    let client = (!args.dry_run)
        .then(|| channel(&settings, As::Publisher).map(ExchangeClient::new))
        .transpose()?;
    let progress = super::progress::Progress::new(None, "entries");
    let mut tally = Tally::default();
    let mut results = batches(async_stream(&mut rx))
        .map(|chunk| publish_chunk(client.clone(), chunk))
        .buffered(BATCHES_IN_FLIGHT)
        .flat_map(futures_util::stream::iter);
    while let Some((place, outcome)) = results.next().await {
        if let Outcome::Refused(s) = &outcome
            && s.code() == tonic::Code::Unavailable
        {
            progress.finish();
            return Err(rpc_error(&settings, s.clone()));
        }
        tally.record(&place, outcome, args.json);
        progress.inc(1);
        if tally.invalid > 0 || tally.again > 0 {
            progress.message(format!(
                "{} published, {} already, {} invalid",
                tally.published, tally.again, tally.invalid
            ));
        }
    }
    progress.finish();
    let notes = reader
        .await
        .map_err(|e| CliError::Failed(format!("reading the input: {e}")))?
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.file.display())))?;
    tally.summary(&notes, args.dry_run);
    if tally.invalid > 0 {
        return Err(CliError::Failed(format!(
            "{} entr{} refused as invalid (listed above)",
            tally.invalid,
            if tally.invalid == 1 {
                "y was"
            } else {
                "ies were"
            }
        )));
    }
    Ok(())
}

/// `entries` as the PublishBatch requests they are sent in: [`BATCH`] at a
/// time (or what is left at the end), each cut to [`BATCH_BYTES`]. Full
/// batches, not whatever is ready: batches of what was ready held one entry
/// each whenever the reader fell behind, and each cost a request and a
/// place in a group commit.
fn batches(
    entries: impl futures_util::Stream<Item = Entry>,
) -> impl futures_util::Stream<Item = Vec<Entry>> {
    entries
        .chunks(BATCH)
        .flat_map(|chunk| futures_util::stream::iter(within_bytes(chunk, BATCH_BYTES)))
}

/// What `e` adds to a PublishBatch request: its draft and key, and the
/// item's own field tags and lengths (nothing if it is not sent).
fn entry_bytes(e: &Entry) -> usize {
    match &e.outcome {
        Ok((draft, key)) => prost::Message::encoded_len(draft) + key.len() + 16,
        Err(_) => 0,
    }
}

/// `chunk` cut, in order, into runs whose drafts and keys encode to at
/// most `budget` bytes (an entry larger than that alone).
fn within_bytes(chunk: Vec<Entry>, budget: usize) -> Vec<Vec<Entry>> {
    let mut runs: Vec<Vec<Entry>> = Vec::new();
    let mut used = 0;
    for e in chunk {
        let size = entry_bytes(&e);
        match runs.last_mut() {
            Some(run) if used + size <= budget => run.push(e),
            _ => {
                runs.push(vec![e]);
                used = 0;
            }
        }
        used += size;
    }
    runs
}

/// Publishes the valid entries of `chunk` in one PublishBatch (or only
/// checks them, without a client: --dry-run); what became of each entry,
/// in order.
async fn publish_chunk(
    client: Option<ExchangeClient<tonic::transport::Channel>>,
    chunk: Vec<Entry>,
) -> Vec<(String, Outcome)> {
    let mut items = Vec::new();
    let mut out: Vec<(String, Option<Outcome>)> = Vec::with_capacity(chunk.len());
    for Entry { place, outcome } in chunk {
        match outcome {
            Err(skip) => out.push((place, Some(Outcome::Skipped(skip)))),
            Ok(_) if client.is_none() => out.push((place, Some(Outcome::Checked))),
            Ok((draft, key)) => {
                items.push(PublishRequest {
                    indicator: Some(draft),
                    idempotency_key: key,
                    preview_recipients: false,
                });
                out.push((place, None));
            }
        }
    }
    let mut answers: Vec<Outcome> = match (client, items.is_empty()) {
        (Some(mut c), false) => super::client::publish_batch(&mut c, items)
            .await
            .into_iter()
            .map(|a| match a {
                Ok(p) => Outcome::Published(p),
                Err(s) => Outcome::Refused(s),
            })
            .collect(),
        _ => Vec::new(),
    };
    answers.reverse();
    out.into_iter()
        .map(|(place, o)| {
            let o = o.or_else(|| answers.pop()).unwrap_or_else(|| {
                Outcome::Refused(tonic::Status::internal(
                    "the node answered fewer outcomes than items",
                ))
            });
            (place, o)
        })
        .collect()
}

/// Entries as they arrive from the reader thread.
fn async_stream(rx: &mut mpsc::Receiver<Entry>) -> impl futures_util::Stream<Item = Entry> + '_ {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The format of `input`, from its first bytes (not consumed).
fn sniff(input: &mut Box<dyn BufRead + Send>) -> Result<InputFormat, String> {
    let head = input.fill_buf().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&head[..head.len().min(4096)]).to_string();
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if !t.starts_with('{') && !t.starts_with('[') {
        return Ok(InputFormat::Csv);
    }
    if t.contains("\"Event\"") || t.contains("\"response\"") {
        return Ok(InputFormat::Misp);
    }
    if t.contains("\"type\"") || t.contains("\"objects\"") {
        return Ok(InputFormat::Stix);
    }
    Err("JSON that is neither a STIX bundle nor MISP events (give --format)".into())
}

/// Reads every entry of `input` and hands it on, in order.
fn read_all(
    format: InputFormat,
    input: Box<dyn BufRead + Send>,
    tx: &mpsc::Sender<Entry>,
    now: i64,
) -> Result<Notes, String> {
    let mut notes = Notes::default();
    let send = |place: String, outcome: Result<(IndicatorDraft, String), StixError>| {
        // A closed channel means the importer stopped (node unreachable).
        let _ = tx.blocking_send(Entry { place, outcome });
    };
    match format {
        InputFormat::Stix | InputFormat::Auto => {
            let mut index = 0usize;
            let mut on_object = |obj: Value| {
                match obj.get("type").and_then(Value::as_str) {
                    // What the indicators refer to: their TLP markings are
                    // read from the ids, the extension needs nothing.
                    Some("marking-definition" | "extension-definition") => return,
                    Some("identity") => {
                        *notes
                            .not_carried
                            .entry("identity objects (the importer becomes the origin)".into())
                            .or_default() += 1;
                        return;
                    }
                    _ => {}
                }
                let id = obj
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let place = if id.is_empty() {
                    format!("objects[{index}]")
                } else {
                    format!("objects[{index}] ({id})")
                };
                index += 1;
                let outcome = stix::draft_from_object(&obj).and_then(|imp| {
                    for p in imp.not_carried {
                        *notes.not_carried.entry(p).or_default() += 1;
                    }
                    checked(imp.draft, now, stix_field).map(|d| (d, imp.key))
                });
                send(place, outcome);
            };
            let mut de = serde_json::Deserializer::from_reader(input);
            BundleSeed(&mut on_object)
                .deserialize(&mut de)
                .map_err(|e| format!("not a STIX bundle: {e}"))?;
        }
        InputFormat::Misp => {
            let mut events = 0usize;
            let mut on_event = |event: Value| {
                for (where_, attr) in misp::attributes(&event) {
                    let uuid = attr.get("uuid").and_then(Value::as_str).unwrap_or("");
                    let place = format!("Event[{events}].{where_} {uuid}")
                        .trim_end()
                        .to_string();
                    let outcome = misp::draft_from_attribute(&event, attr)
                        .and_then(|(d, key)| checked(d, now, misp::misp_field).map(|d| (d, key)));
                    send(place, outcome);
                }
                events += 1;
            };
            let mut de = serde_json::Deserializer::from_reader(input);
            MispSeed(&mut on_event)
                .deserialize(&mut de)
                .map_err(|e| format!("not MISP event JSON: {e}"))?;
            if events == 0 {
                return Err("no MISP event (expected {\"Event\": …})".into());
            }
        }
        InputFormat::Csv => {
            let mut records = csv::Records::new(input);
            let header = match records.next_record().map_err(|e| e.to_string())? {
                Some((_, names)) => csv::Header::parse(&names).map_err(|e| e.to_string())?,
                None => return Err("empty input: no header line".into()),
            };
            for c in &header.not_carried {
                *notes.not_carried.entry(c.clone()).or_default() += 1;
            }
            while let Some((line, record)) = records.next_record().map_err(|e| e.to_string())? {
                if record.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                let key = format!(
                    "csv:{}",
                    hex::encode(
                        &ring::digest::digest(
                            &ring::digest::SHA256,
                            record.join("\u{1f}").as_bytes()
                        )
                        .as_ref()[..16]
                    )
                );
                let outcome = header
                    .draft(&record)
                    .and_then(|d| checked(d, now, csv::csv_field))
                    .map(|d| (d, key));
                send(format!("line {line}"), outcome);
            }
        }
    }
    Ok(notes)
}

/// `draft` as the node will check it, errors named as the input names them
/// (`naming`).
fn checked(
    draft: IndicatorDraft,
    now: i64,
    naming: fn(&crate::model::ValidationError) -> StixError,
) -> Result<IndicatorDraft, StixError> {
    crate::model::prepare_draft(&draft, now)
        .map(|_| draft)
        .map_err(|e| naming(&e))
}

/// Streams the `objects` of a STIX bundle to a callback, one at a time; a
/// single STIX object (not a bundle) is handed over as it is.
struct BundleSeed<'a, F: FnMut(Value)>(&'a mut F);

impl<'de, F: FnMut(Value)> DeserializeSeed<'de> for BundleSeed<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(Value)> Visitor<'de> for BundleSeed<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a STIX bundle: {\"type\": \"bundle\", \"objects\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut single = serde_json::Map::new();
        let mut bundle = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "objects" {
                bundle = true;
                map.next_value_seed(ObjectsSeed(&mut *self.0))?;
            } else if bundle {
                map.next_value::<IgnoredAny>()?;
            } else {
                let v: Value = map.next_value()?;
                if key == "type" && v == "bundle" {
                    bundle = true;
                } else {
                    single.insert(key, v);
                }
            }
        }
        if !bundle {
            (self.0)(Value::Object(single));
        }
        Ok(())
    }
}

struct ObjectsSeed<'a, F: FnMut(Value)>(&'a mut F);

impl<'de, F: FnMut(Value)> DeserializeSeed<'de> for ObjectsSeed<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Value)> Visitor<'de> for ObjectsSeed<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of STIX objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            (self.0)(v);
        }
        Ok(())
    }
}

/// Streams the events of a MISP document to a callback, one at a time:
/// `{"Event": …}`, a list of those, or a REST search response
/// `{"response": [{"Event": …}, …]}`. Memory holds one event, not the file
/// (an event's tags and distribution, which its attributes need, may come
/// after them, so an event is read whole).
struct MispSeed<'a, F: FnMut(Value)>(&'a mut F);

impl<'de, F: FnMut(Value)> DeserializeSeed<'de> for MispSeed<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: FnMut(Value)> Visitor<'de> for MispSeed<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MISP event JSON: {\"Event\": …}, a list of those, or {\"response\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "Event" => (self.0)(map.next_value()?),
                "response" => map.next_value_seed(MispSeed(&mut *self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<Value>()? {
            if let Value::Object(mut item) = item
                && let Some(event) = item.remove("Event")
            {
                (self.0)(event);
            }
        }
        Ok(())
    }
}

/// What became of one entry.
enum Outcome {
    Published(crate::proto::v1::PublishResponse),
    /// Checked only (--dry-run).
    Checked,
    Skipped(StixError),
    Refused(tonic::Status),
}

#[derive(Default)]
struct Tally {
    published: u64,
    again: u64,
    checked: u64,
    unsupported: BTreeMap<String, u64>,
    invalid: u64,
    shown: usize,
}

impl Tally {
    fn record(&mut self, place: &str, outcome: Outcome, json: bool) {
        let line = match outcome {
            Outcome::Published(p) => {
                if p.replayed {
                    self.again += 1;
                } else {
                    self.published += 1;
                }
                json.then(|| {
                    serde_json::json!({"entry": place, "published": p.id, "version": p.version,
                        "seq": p.seq, "replayed": p.replayed})
                })
            }
            Outcome::Checked => {
                self.checked += 1;
                json.then(|| serde_json::json!({"entry": place, "valid": true}))
            }
            Outcome::Skipped(e) if e.unsupported => {
                *self.unsupported.entry(e.problem.clone()).or_default() += 1;
                json.then(|| serde_json::json!({"entry": place, "skipped": e.to_string()}))
            }
            Outcome::Skipped(e) => {
                self.invalid += 1;
                self.show(place, &e.to_string(), json)
            }
            Outcome::Refused(s) => {
                self.invalid += 1;
                self.show(place, s.message(), json)
            }
        };
        if let Some(l) = line {
            out!("{l}");
        }
    }

    fn show(&mut self, place: &str, why: &str, json: bool) -> Option<Value> {
        if json {
            return Some(serde_json::json!({"entry": place, "refused": why}));
        }
        if self.shown < SHOWN {
            eprintln!("{place}: {why}");
        }
        self.shown += 1;
        None
    }

    fn summary(&self, notes: &Notes, dry_run: bool) {
        let skipped: u64 = self.unsupported.values().sum();
        if dry_run {
            eprintln!(
                "dry run: {} would be published, {skipped} skipped, {} invalid; nothing was published",
                self.checked, self.invalid
            );
        } else {
            eprintln!(
                "imported {} indicator(s); {} already imported earlier (same key); {skipped} skipped; {} invalid",
                self.published, self.again, self.invalid
            );
        }
        if self.shown > SHOWN {
            eprintln!(
                "  ({} more invalid entries not shown; --json lists every one)",
                self.shown - SHOWN
            );
        }
        for (why, n) in &self.unsupported {
            eprintln!("  skipped {n}: {why}");
        }
        if !notes.not_carried.is_empty() {
            let list: Vec<String> = notes
                .not_carried
                .iter()
                .map(|(p, n)| {
                    if *n > 1 {
                        format!("{p} ({n})")
                    } else {
                        p.clone()
                    }
                })
                .collect();
            eprintln!(
                "  not carried (nothing of ours holds them): {}",
                list.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events `MispSeed` hands over from `json`, by their `info`, and
    /// the parse error if any.
    fn misp_events(json: &str) -> (Vec<String>, Option<String>) {
        let mut seen = Vec::new();
        let mut on_event = |e: Value| seen.push(e["info"].as_str().unwrap_or("").to_string());
        let mut de = serde_json::Deserializer::from_reader(json.as_bytes());
        let err = MispSeed(&mut on_event)
            .deserialize(&mut de)
            .err()
            .map(|e| e.to_string());
        (seen, err)
    }

    #[test]
    fn misp_events_are_read_one_at_a_time_in_every_document_form() {
        let one = r#"{"Event": {"info": "a", "Attribute": []}}"#;
        assert_eq!(misp_events(one), (vec!["a".to_string()], None));
        let list = r#"[{"Event": {"info": "a"}}, {"other": 1}, {"Event": {"info": "b"}}]"#;
        assert_eq!(misp_events(list).0, ["a", "b"]);
        let search =
            r#"{"response": [{"Event": {"info": "a"}}, {"Event": {"info": "b"}}], "x": 2}"#;
        assert_eq!(misp_events(search).0, ["a", "b"]);
        // Streamed: a file cut off in its third event has handed over the
        // first two before the error (a whole-document parse hands over none).
        let cut = r#"[{"Event": {"info": "a"}}, {"Event": {"info": "b"}}, {"Event": {"info": "#;
        let (seen, err) = misp_events(cut);
        assert_eq!(seen, ["a", "b"]);
        assert!(err.unwrap().contains("EOF"));
    }

    fn entry(description_len: usize) -> Entry {
        Entry {
            place: format!("line {description_len}"),
            outcome: Ok((
                IndicatorDraft {
                    description: "x".repeat(description_len),
                    ..Default::default()
                },
                "k".into(),
            )),
        }
    }

    #[test]
    fn batches_stay_under_the_byte_budget_and_keep_their_order() {
        let sizes = [4000, 4000, 100, 9000, 10, 10];
        let chunk: Vec<Entry> = sizes.iter().map(|&n| entry(n)).collect();
        let runs = within_bytes(chunk, 8200);
        let places: Vec<Vec<&str>> = runs
            .iter()
            .map(|r| r.iter().map(|e| e.place.as_str()).collect())
            .collect();
        // The 9,000-byte entry is over the budget on its own: sent alone.
        assert_eq!(
            places,
            vec![
                vec!["line 4000", "line 4000", "line 100"],
                vec!["line 9000"],
                vec!["line 10", "line 10"],
            ]
        );
        let bytes: usize = runs[0].iter().map(entry_bytes).sum();
        assert!(bytes <= 8200, "{bytes}");
    }

    /// `import --help` promises requests of 1,000 entries, fewer only at the
    /// end of the input, even when the reader is slower than the sender
    /// (batches of whatever was ready held one entry each then).
    #[tokio::test]
    async fn a_slow_reader_still_sends_full_batches() {
        let (tx, mut rx) = mpsc::channel::<Entry>(QUEUED);
        let reader = tokio::spawn(async move {
            for i in 0..2_500 {
                tx.send(entry(i % 50)).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let sizes: Vec<usize> = batches(async_stream(&mut rx))
            .map(|b| b.len())
            .collect()
            .await;
        reader.await.unwrap();
        assert_eq!(sizes, [BATCH, BATCH, 500]);
    }
}
