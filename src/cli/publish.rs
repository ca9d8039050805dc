//! `threatmesh publish`: one indicator from flags, or many from a JSON-lines
//! file, sent to our node with the publisher certificate.

use std::path::{Path, PathBuf};

use clap::Args;
use futures_util::StreamExt;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::CliError;
use super::client::{As, channel, rpc_error};
use crate::model::{KIND_NAMES, parse_kind, parse_tlp};
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::proto::v1::{IndicatorDraft, Marking, PublishRequest, PublishResponse};

/// Publishes in flight at once with `--file`.
const IN_FLIGHT: usize = 32;
/// PublishBatch requests of `publish --file` in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;
/// Encoded bytes of the drafts in one PublishBatch: under the smallest
/// request a node may be set to accept (`limits.max_message_bytes`).
const BATCH_BYTES: usize = crate::config::MIN_MESSAGE_BYTES * 3 / 4;

/// Arguments of `threatmesh publish`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh publish --kind domain --value evil.example --tlp GREEN --confidence 80 --tag phishing
  threatmesh publish --kind ipv4 --value 192.0.2.7 --tlp RED --recipient bka.example
  threatmesh publish --file indicators.jsonl

A --file holds one JSON object per line, with the same fields as the flags:
  {\"kind\":\"url\",\"value\":\"http://evil.example/x\",\"tlp\":\"AMBER\",\"recipients\":[\"b.example\"],
   \"confidence\":70,\"tags\":[\"c2\"],\"jurisdictions\":[\"DE\"],\"valid_until\":\"2027-01-01T00:00:00Z\"}
Every line is checked before anything is sent, exactly as the node checks it
(kind, value, marking, limits); a bad line is reported with its number and
field, and nothing is published. What only the node can know (an --id it does
not hold) is reported per line after the rest are published.

Each line is sent with an idempotency key made from its content, so running a
file again (after an interruption, a lost connection, a deadline) publishes
only the lines not published yet; the others report their first id as
\"already published\". The node remembers keys for store.publish_keys_kept_ms
(7 days by default).

Kinds: ipv4, ipv6, cidr, domain, url, email, sha256, sha1, md5.
TLP: CLEAR, GREEN, AMBER, AMBER+STRICT, RED (RED and AMBER+STRICT need --recipient).")]
pub struct PublishArgs {
    /// Indicator kind.
    #[arg(long, required_unless_present = "file")]
    pub kind: Option<String>,
    /// Indicator value (normalised by the node).
    #[arg(long, required_unless_present = "file")]
    pub value: Option<String>,
    /// TLP 2.0 label.
    #[arg(long, required_unless_present = "file")]
    pub tlp: Option<String>,
    /// Named recipient org (repeatable).
    #[arg(long = "recipient")]
    pub recipients: Vec<String>,
    /// Confidence 0-100.
    #[arg(long, default_value_t = 50)]
    pub confidence: u32,
    /// Tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// ISO 3166-1 alpha-2 jurisdiction (repeatable).
    #[arg(long = "jurisdiction")]
    pub jurisdictions: Vec<String>,
    /// Kill-chain phase (repeatable).
    #[arg(long = "kill-chain-phase")]
    pub kill_chain_phases: Vec<String>,
    /// Free-text description.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Start of validity, RFC 3339 (default: now).
    #[arg(long)]
    pub valid_from: Option<String>,
    /// End of validity, RFC 3339 (default: none).
    #[arg(long)]
    pub valid_until: Option<String>,
    /// Allow recipients to pass the indicator on (subject to TLP).
    #[arg(long)]
    pub may_forward: bool,
    /// Relay hops allowed beyond the first recipient (needs --may-forward).
    #[arg(long, default_value_t = 0)]
    pub hop_limit: u32,
    /// Publish a new version of an earlier indicator of this org.
    #[arg(long)]
    pub id: Option<String>,
    /// Revoke the indicator named by --id.
    #[arg(long, requires = "id")]
    pub revoke: bool,
    /// JSON-lines file of indicators ("-" for standard input).
    #[arg(long, conflicts_with_all = ["kind", "value", "tlp"])]
    pub file: Option<PathBuf>,
    /// Idempotency key (1-128 printable ASCII characters, e.g. a UUID): a
    /// retry with the same key returns the first attempt's id and version
    /// instead of publishing again.
    #[arg(long, conflicts_with = "file")]
    pub idempotency_key: Option<String>,
    /// Print results as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// One indicator as written in a JSON-lines file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DraftInput {
    /// Kind name.
    pub kind: String,
    /// Value.
    pub value: String,
    /// TLP label.
    pub tlp: String,
    /// Named recipients.
    pub recipients: Vec<String>,
    /// 0-100.
    pub confidence: Option<u32>,
    /// Tags.
    pub tags: Vec<String>,
    /// ISO country codes.
    pub jurisdictions: Vec<String>,
    /// Kill-chain phases.
    pub kill_chain_phases: Vec<String>,
    /// Description.
    pub description: String,
    /// RFC 3339.
    pub valid_from: Option<String>,
    /// RFC 3339.
    pub valid_until: Option<String>,
    /// May recipients forward.
    pub may_forward: bool,
    /// Relay hops.
    pub hop_limit: u32,
    /// Existing id to update.
    pub id: Option<String>,
    /// Revoke.
    pub revoked: bool,
}

/// An RFC 3339 time as Unix milliseconds; `field` names the input in errors.
pub fn parse_rfc3339_ms(field: &str, s: &str) -> Result<i64, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| format!("{field}: '{s}' is not an RFC 3339 time ({e})"))
}

fn rfc3339_ms(field: &str, v: &Option<String>) -> Result<i64, String> {
    v.as_deref().map_or(Ok(0), |s| parse_rfc3339_ms(field, s))
}

impl DraftInput {
    /// Converts to a wire draft, naming the field at fault. Content checks
    /// (value syntax, marking rules) are done by the node.
    pub fn to_draft(&self) -> Result<IndicatorDraft, String> {
        let kind = parse_kind(&self.kind).ok_or_else(|| {
            format!(
                "kind: '{}' is not one of {}",
                self.kind,
                KIND_NAMES.map(|(n, _)| n).join(", ")
            )
        })?;
        let tlp = parse_tlp(&self.tlp).ok_or_else(|| {
            format!(
                "tlp: '{}' is not a TLP 2.0 label (CLEAR, GREEN, AMBER, AMBER+STRICT, RED)",
                self.tlp
            )
        })?;
        Ok(IndicatorDraft {
            kind: kind as i32,
            value: self.value.clone(),
            marking: Some(Marking {
                tlp: tlp as i32,
                recipients: self.recipients.clone(),
                may_forward: self.may_forward,
                hop_limit: self.hop_limit,
            }),
            confidence: self.confidence.unwrap_or(50),
            tags: self.tags.clone(),
            jurisdictions: self.jurisdictions.clone(),
            valid_from_unix_ms: rfc3339_ms("valid_from", &self.valid_from)?,
            valid_until_unix_ms: rfc3339_ms("valid_until", &self.valid_until)?,
            kill_chain_phases: self.kill_chain_phases.clone(),
            description: self.description.clone(),
            id: self.id.clone().unwrap_or_default(),
            revoked: self.revoked,
        })
    }
}

impl PublishArgs {
    fn to_input(&self) -> DraftInput {
        DraftInput {
            kind: self.kind.clone().unwrap_or_default(),
            value: self.value.clone().unwrap_or_default(),
            tlp: self.tlp.clone().unwrap_or_default(),
            recipients: self.recipients.clone(),
            confidence: Some(self.confidence),
            tags: self.tags.clone(),
            jurisdictions: self.jurisdictions.clone(),
            kill_chain_phases: self.kill_chain_phases.clone(),
            description: self.description.clone(),
            valid_from: self.valid_from.clone(),
            valid_until: self.valid_until.clone(),
            may_forward: self.may_forward,
            hop_limit: self.hop_limit,
            id: self.id.clone(),
            revoked: self.revoke,
        }
    }
}

/// One checked line of a `--file`.
#[derive(Debug, Clone)]
pub struct FileLine {
    /// Its line number (from 1).
    pub number: usize,
    /// The indicator it asks for.
    pub draft: IndicatorDraft,
    /// Its idempotency key: the same line, sent again, publishes nothing new.
    pub key: String,
}

/// The idempotency key of a `--file` line: a digest of its (trimmed) text.
pub fn line_key(line: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, line.trim().as_bytes());
    format!("line:{}", hex::encode(digest.as_ref()))
}

/// Parses a JSON-lines document into drafts and checks each as the node
/// will (values, markings, limits; at `now_ms`), so that a file with any
/// bad line publishes nothing; all errors are collected with their line
/// numbers. Blank lines and lines starting with `#` are skipped.
pub fn parse_lines(text: &str, now_ms: i64) -> Result<Vec<FileLine>, Vec<String>> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<DraftInput>(line) {
            Ok(input) => match input.to_draft() {
                Ok(d) => match crate::model::prepare_draft(&d, now_ms) {
                    Ok(_) => ok.push(FileLine {
                        number: n,
                        draft: d,
                        key: line_key(line),
                    }),
                    Err(e) => errors.push(format!("line {n}: {e}")),
                },
                Err(e) => errors.push(format!("line {n}: {e}")),
            },
            Err(e) => errors.push(format!("line {n}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

/// Runs `threatmesh publish`.
pub async fn run(
    config: &Path,
    conn: &super::client::PublisherArgs,
    args: &PublishArgs,
) -> Result<(), CliError> {
    let settings = conn.load(config)?;
    let drafts = match &args.file {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| CliError::Usage(format!("standard input: {e}")))?
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))?
            };
            parse_lines(&text, crate::clock::wall_ms()).map_err(|errs| {
                CliError::Usage(format!(
                    "{} has {} bad line(s); nothing was published:\n  {}",
                    path.display(),
                    errs.len(),
                    errs.join("\n  ")
                ))
            })?
        }
        None => vec![FileLine {
            number: 0,
            draft: args
                .to_input()
                .to_draft()
                .map_err(|e| CliError::Usage(format!("--{e}")))?,
            key: args.idempotency_key.clone().unwrap_or_default(),
        }],
    };
    let client = ExchangeClient::new(channel(&settings, As::Publisher)?);
    let total = drafts.len();
    let mut results = if args.file.is_some() {
        in_batches(client, drafts).boxed()
    } else {
        futures_util::stream::iter(drafts)
            .map(|l| {
                let mut c = client.clone();
                async move {
                    let r = c
                        .publish(PublishRequest {
                            indicator: Some(l.draft),
                            idempotency_key: l.key,
                            preview_recipients: true,
                        })
                        .await;
                    (l.number, r.map(tonic::Response::into_inner))
                }
            })
            .buffered(IN_FLIGHT)
            .boxed()
    };
    let (mut published, mut again, mut failed) = (0usize, 0usize, Vec::new());
    let mut reach = Reach::default();
    let progress = args
        .file
        .as_ref()
        .map(|_| super::progress::Progress::new(Some(total as u64), "lines"));
    while let Some((line, r)) = results.next().await {
        if let Some(p) = &progress {
            p.inc(1);
        }
        match r {
            Ok(p) => {
                reach.add(&p.recipients);
                if p.replayed {
                    again += 1;
                } else {
                    published += 1;
                }
                if args.json {
                    let to: Vec<serde_json::Value> = p
                        .recipients
                        .iter()
                        .map(|r| serde_json::json!({"partner": r.partner, "allow": r.allow, "rule": r.rule, "reason": r.reason}))
                        .collect();
                    out!(
                        "{}",
                        serde_json::json!({"line": line, "id": p.id, "version": p.version, "seq": p.seq, "replayed": p.replayed, "recipients": to})
                    );
                } else if args.file.is_none() && p.replayed {
                    out!(
                        "already published {} version {} (seq {}) under this idempotency key; nothing new was published",
                        p.id,
                        p.version,
                        p.seq
                    );
                } else if args.file.is_none() {
                    out!("published {} version {} (seq {})", p.id, p.version, p.seq);
                }
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                if let Some(p) = &progress {
                    p.finish();
                }
                return Err(rpc_error(&settings, s));
            }
            Err(s) => {
                let msg = rpc_error(&settings, s).to_string();
                failed.push(if line > 0 {
                    format!("line {line}: {msg}")
                } else {
                    msg
                });
            }
        }
    }
    if let Some(p) = &progress {
        p.finish();
    }
    if args.file.is_some() && !args.json {
        if again > 0 {
            out!(
                "published {published} of {total} indicator(s); {again} were already published by an earlier run (same line, same key)"
            );
        } else {
            out!("published {published} of {total} indicator(s)");
        }
    }
    if !args.json && published + again > 0 {
        for line in reach.lines() {
            out!("{line}");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Rpc(failed.join("\n")))
    }
}

/// The lines of a file as PublishBatch requests (at most
/// [`crate::exchange::MAX_BATCH`] lines and [`BATCH_BYTES`] of drafts each,
/// [`BATCHES_IN_FLIGHT`] at a time): what became of each line, in order.
fn in_batches(
    client: ExchangeClient<tonic::transport::Channel>,
    lines: Vec<FileLine>,
) -> impl futures_util::Stream<Item = (usize, Result<PublishResponse, tonic::Status>)> {
    let mut batches: Vec<Vec<FileLine>> = Vec::new();
    let mut bytes = 0;
    for l in lines {
        let size = prost::Message::encoded_len(&l.draft) + l.key.len() + 16;
        match batches.last_mut() {
            Some(b) if b.len() < crate::exchange::MAX_BATCH && bytes + size <= BATCH_BYTES => {
                b.push(l)
            }
            _ => {
                batches.push(vec![l]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    futures_util::stream::iter(batches)
        .map(move |batch| {
            let mut c = client.clone();
            async move {
                let numbers: Vec<usize> = batch.iter().map(|l| l.number).collect();
                let items = batch
                    .into_iter()
                    .map(|l| PublishRequest {
                        indicator: Some(l.draft),
                        idempotency_key: l.key,
                        preview_recipients: true,
                    })
                    .collect();
                let answers = super::client::publish_batch(&mut c, items).await;
                let out: Vec<_> = numbers.into_iter().zip(answers).collect();
                futures_util::stream::iter(out)
            }
        })
        .buffered(BATCHES_IN_FLIGHT)
        .flatten()
}

/// Who receives what was published, under the current policies: per
/// partner, how many indicators each rule sends or withholds.
#[derive(Default)]
struct Reach {
    /// Partner → (sent, rule → count) and (withheld, rule → (count, a reason)).
    partners: std::collections::BTreeMap<String, PartnerReach>,
}

#[derive(Default)]
struct PartnerReach {
    sent: std::collections::BTreeMap<String, usize>,
    withheld: std::collections::BTreeMap<String, (usize, String)>,
}

impl Reach {
    fn add(&mut self, recipients: &[crate::proto::v1::RecipientPreview]) {
        for r in recipients {
            let p = self.partners.entry(r.partner.clone()).or_default();
            if r.allow {
                *p.sent.entry(r.rule.clone()).or_default() += 1;
            } else {
                let w = p.withheld.entry(r.rule.clone()).or_default();
                w.0 += 1;
                if w.1.is_empty() {
                    w.1 = r.reason.clone();
                }
            }
        }
    }

    /// One line per partner: what it will be sent and what is withheld,
    /// by rule (with the reason for a single indicator).
    fn lines(&self) -> Vec<String> {
        if self.partners.is_empty() {
            return vec![
                "no partner has a sharing policy bound: nothing is sent to anyone (`threatmesh peer add --policy`)".into(),
            ];
        }
        let mut out = vec!["under the current policies:".to_string()];
        for (partner, p) in &self.partners {
            let sent: usize = p.sent.values().sum();
            let withheld: usize = p.withheld.values().map(|w| w.0).sum();
            let rules = |m: Vec<(String, usize)>| {
                m.into_iter()
                    .map(|(rule, n)| format!("{n} by rule {rule}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut parts = Vec::new();
            if sent > 0 {
                parts.push(format!(
                    "sent {sent} ({})",
                    rules(p.sent.iter().map(|(r, n)| (r.clone(), *n)).collect())
                ));
            }
            if withheld > 0 {
                let why = if sent + withheld == 1 {
                    p.withheld
                        .values()
                        .next()
                        .map(|w| format!(": {}", w.1))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                parts.push(format!(
                    "withheld {withheld} ({}){why}",
                    rules(p.withheld.iter().map(|(r, w)| (r.clone(), w.0)).collect())
                ));
            }
            out.push(format!("  {partner:<24} {}", parts.join("; ")));
        }
        out
    }
}

#[cfg(test)]
mod reach_tests {
    use super::Reach;
    use crate::proto::v1::RecipientPreview;

    fn to(partner: &str, allow: bool, rule: &str, reason: &str) -> RecipientPreview {
        RecipientPreview {
            partner: partner.into(),
            allow,
            rule: rule.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn the_summary_names_each_partner_its_rules_and_a_lone_reason() {
        let mut one = Reach::default();
        one.add(&[
            to("b.example", true, "green", ""),
            to(
                "c.example",
                false,
                "red-not-named",
                "TLP:RED names only d.example",
            ),
        ]);
        assert_eq!(
            one.lines(),
            [
                "under the current policies:",
                "  b.example                sent 1 (1 by rule green)",
                "  c.example                withheld 1 (1 by rule red-not-named): TLP:RED names only d.example",
            ]
        );
        let mut file = Reach::default();
        for allow in [true, true, false] {
            file.add(&[to(
                "b.example",
                allow,
                if allow { "green" } else { "no-red" },
                "x",
            )]);
        }
        assert_eq!(
            file.lines()[1],
            "  b.example                sent 2 (2 by rule green); withheld 1 (1 by rule no-red)"
        );
        assert!(Reach::default().lines()[0].contains("nothing is sent to anyone"));
    }
}
