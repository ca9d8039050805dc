//! `threatmesh demo`: two agencies and a private partner, each with its own
//! CA and signing key, run real nodes on loopback in one process, register
//! each other's cards, publish indicators under different markings over
//! mutual TLS, and report who received what; then the partner reports
//! seeing one indicator and its signed sighting travels back to the origin.
//! The outcome is checked against the policy function: any difference, any
//! verification failure, or a sighting that does not arrive, makes the demo
//! fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::client::{As, channel};
use super::publish::DraftInput;
use super::table::{col, render};
use super::{CliError, init_logging};
use crate::config::Settings;
use crate::exchange::decode_stored;
use crate::model::{OrgId, kind_name, tlp_name};
use crate::node::{Node, NodeContext, load_signing_key, own_card};
use crate::policy::{self, Decision};
use crate::proto::v1::PublishRequest;
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::provision::{OrgOptions, provision_org};
use crate::store::Store;

/// Arguments of `threatmesh demo`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh demo                       # three orgs, end to end; exits 0 when all checks pass
  threatmesh demo --keep --dir demo     # keep the nodes running to explore them")]
pub struct DemoArgs {
    /// Leave the nodes running after the report and print how to talk to
    /// them; stop with Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Create the organisations here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds to wait for deliveries before declaring failure.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// The figures of the closing line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoSummary {
    /// Indicators published.
    pub published: usize,
    /// (indicator, partner) pairs stored at the partner.
    pub delivered: usize,
    /// (indicator, partner) pairs the policy withheld.
    pub withheld: usize,
    /// Envelopes refused on ingest anywhere.
    pub verification_failures: usize,
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "demo: {} published, {} delivered, {} withheld, {} verification failures",
            self.published, self.delivered, self.withheld, self.verification_failures
        )
    }
}

struct DemoOrg {
    id: OrgId,
    label: &'static str,
    config: PathBuf,
    settings: Settings,
}

const ORGS: [(&str, &str, &str, &str); 3] = [
    (
        "cyberpolice.example",
        "Federal Cyber Police (agency)",
        "DE",
        "law-enforcement",
    ),
    ("cert.example", "National CERT (agency)", "FR", "cert"),
    ("isp.example", "Example ISP (private partner)", "NL", "isp"),
];

/// The example policies shipped in config/policies/.
const POLICIES: [&str; 3] = [
    include_str!("../../config/policies/agency-partner.toml"),
    include_str!("../../config/policies/isp-feed.toml"),
    include_str!("../../config/policies/community-feed.toml"),
];

/// (publisher index, indicator as in a JSON-lines file)
fn indicators() -> Vec<(usize, &'static str)> {
    vec![
        (
            0,
            r#"{"kind":"domain","value":"login-secure-bank.example","tlp":"CLEAR","confidence":90,"tags":["phishing"],"jurisdictions":["DE"]}"#,
        ),
        (
            0,
            r#"{"kind":"ipv4","value":"198.51.100.23","tlp":"GREEN","confidence":80,"tags":["c2","emotet"]}"#,
        ),
        (
            0,
            r#"{"kind":"url","value":"http://dropper.example/payload.bin","tlp":"AMBER","recipients":["cert.example"],"confidence":70}"#,
        ),
        (
            0,
            r#"{"kind":"sha256","value":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","tlp":"AMBER+STRICT","recipients":["cert.example"],"confidence":95}"#,
        ),
        (
            0,
            r#"{"kind":"email","value":"negotiator@ransom-gang.example","tlp":"RED","recipients":["cert.example"],"confidence":99,"description":"live investigation"}"#,
        ),
        (
            1,
            r#"{"kind":"cidr","value":"203.0.113.0/24","tlp":"GREEN","confidence":60,"tags":["scanning"]}"#,
        ),
        (
            1,
            r#"{"kind":"md5","value":"44d88612fea8a8f36de82e1278abb02f","tlp":"CLEAR","confidence":100,"tags":["test-file"]}"#,
        ),
        (
            2,
            r#"{"kind":"ipv6","value":"2001:db8:bad::1","tlp":"GREEN","confidence":75,"tags":["botnet"]}"#,
        ),
    ]
}

/// Runs `threatmesh demo`.
pub async fn run(args: &DemoArgs) -> Result<(), CliError> {
    init_logging("human", "warn");
    let summary = run_demo(args).await?;
    out!("{summary}");
    Ok(())
}

/// Runs the whole demo and returns its summary; fails if the outcome differs
/// from what the policy allows or any envelope failed verification.
pub async fn run_demo(args: &DemoArgs) -> Result<DemoSummary, CliError> {
    let (tmp, base) = match &args.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("threatmesh-demo-")
                .tempdir()
                .map_err(|e| {
                    CliError::Failed(format!("cannot create a temporary directory: {e}"))
                })?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let (orgs, listeners) = provision_orgs(&base, args.dir.is_some()).await?;
    register_each_other(&orgs).await?;
    let nodes = start_nodes(&orgs, listeners).await?;
    let published = publish_examples(&orgs).await?;
    let (expected, decisions) = expected_deliveries(&orgs, &nodes.contexts, &published).await?;
    let received = await_deliveries(&nodes.contexts, &expected, args.timeout).await?;
    let mut failures = 0;
    for c in &nodes.contexts {
        failures += c.store.rejections().await?.len();
    }
    print_outcome(&orgs, &decisions, &received);
    if received == expected {
        sighting_flows_back(&orgs, &nodes.contexts, &published, args.timeout).await?;
    }
    let summary = DemoSummary {
        published: published.len(),
        delivered: received.values().map(BTreeSet::len).sum(),
        withheld: decisions
            .iter()
            .flat_map(|(_, d)| d)
            .filter(|(_, d)| !d.is_allow())
            .count(),
        verification_failures: failures,
    };
    if args.keep {
        out!("Nodes keep running; in another shell, for example:");
        for o in &orgs {
            out!("  threatmesh -c {} tail", o.config.display());
        }
        out!(
            "  threatmesh -c {} publish --kind domain --value another-phish.example --tlp GREEN",
            orgs[0].config.display()
        );
        out!("Press Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    nodes.stop().await?;
    verify_ledgers(&orgs).await?;
    if args.keep
        && let Some(t) = tmp
    {
        // The user was told these paths; leave them.
        let _ = t.keep();
    }
    if received != expected {
        return Err(CliError::Failed(format!(
            "deliveries differ from what the sharing policy allows (see MISSING/LEAKED above)\n{summary}"
        )));
    }
    if failures > 0 {
        return Err(CliError::Failed(format!(
            "{failures} envelope(s) failed verification\n{summary}"
        )));
    }
    Ok(summary)
}

/// Indicator ids per org index.
type Deliveries = BTreeMap<usize, BTreeSet<String>>;

/// Each published indicator with the decision for every other org.
type Decisions = Vec<(crate::proto::v1::Indicator, Vec<(usize, Decision)>)>;

/// Makes the three orgs under `base`, each on a loopback port bound first,
/// so the endpoints in their cards are the real ports.
async fn provision_orgs(
    base: &std::path::Path,
    force: bool,
) -> Result<(Vec<DemoOrg>, Vec<TcpListener>), CliError> {
    let mut listeners = Vec::new();
    let mut orgs = Vec::new();
    for (id, label, country, sector) in ORGS {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::Failed(format!("cannot bind a loopback port: {e}")))?;
        let addr = l
            .local_addr()
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let report = provision_org(&OrgOptions {
            endpoint: Some(addr.to_string()),
            listen: Some(addr.to_string()),
            display_name: Some(label.into()),
            country: country.into(),
            sector: sector.into(),
            force,
            ..OrgOptions::new(id, base.join(id))
        })?;
        let settings = Settings::load(&report.config)?;
        listeners.push(l);
        orgs.push(DemoOrg {
            id: report.org,
            label,
            config: report.config,
            settings,
        });
    }
    out!("ThreatMesh demo in {}", base.display());
    for o in &orgs {
        out!(
            "  {:<20} {:<32} {}",
            o.id.as_str(),
            o.label,
            o.settings.node.endpoint
        );
    }
    Ok((orgs, listeners))
}

/// Each org applies the example policies, then registers the others' cards
/// (exchanged out of band) bound to a policy: the agencies trust each other
/// fully, the ISP gets blockable network indicators only, and the ISP
/// shares up to AMBER back.
async fn register_each_other(orgs: &[DemoOrg]) -> Result<(), CliError> {
    // Each org's card, as it would hand it over.
    let mut cards = Vec::new();
    for o in orgs {
        let ca = std::fs::read_to_string(&o.settings.tls.ca_cert)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        cards.push(own_card(
            &o.settings,
            &load_signing_key(&o.settings)?,
            &ca,
            crate::clock::wall_ms(),
        ));
    }
    for (i, o) in orgs.iter().enumerate() {
        let store = Store::open(&o.settings.store, crate::clock::Clock::system()).await?;
        for doc in POLICIES {
            let name = crate::policy::parse_policy(doc)
                .map_err(|e| CliError::Failed(e.to_string()))?
                .name;
            store.apply_policy(&name, doc, "demo").await?;
        }
        for (j, card) in cards.iter().enumerate().filter(|(j, _)| *j != i) {
            let policy = match (i, j) {
                (2, _) => "community-feed",
                (_, 2) => "isp-feed",
                _ => "agency-partner",
            };
            crate::admin::register_peer(
                &o.settings.org_id(),
                &store,
                card,
                None,
                Some(policy),
                false,
                "demo",
            )
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
        }
        store.close().await;
    }
    Ok(())
}

/// The running demo nodes.
struct Nodes {
    contexts: Vec<Arc<NodeContext>>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), crate::node::NodeError>>>,
}

impl Nodes {
    /// Stops every node and waits for it.
    async fn stop(self) -> Result<(), CliError> {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(CliError::Failed(format!("node failed: {e}"))),
                Err(e) => return Err(CliError::Failed(format!("node task failed: {e}"))),
            }
        }
        Ok(())
    }
}

/// Starts one node per org on its listener.
async fn start_nodes(orgs: &[DemoOrg], listeners: Vec<TcpListener>) -> Result<Nodes, CliError> {
    let mut nodes = Nodes {
        contexts: Vec::new(),
        stops: Vec::new(),
        tasks: Vec::new(),
    };
    for (o, l) in orgs.iter().zip(listeners) {
        let node = Node::open(o.settings.clone()).await?;
        nodes.contexts.push(node.context());
        let (tx, rx) = oneshot::channel::<()>();
        nodes.stops.push(tx);
        nodes.tasks.push(tokio::spawn(node.serve(l, async move {
            let _ = rx.await;
        })));
    }
    Ok(nodes)
}

/// Publishes the example indicators through each org's node with its
/// publisher certificate; returns (org index, indicator id).
async fn publish_examples(orgs: &[DemoOrg]) -> Result<Vec<(usize, String)>, CliError> {
    let mut published = Vec::new();
    for (who, line) in indicators() {
        let input: DraftInput =
            serde_json::from_str(line).map_err(|e| CliError::Failed(e.to_string()))?;
        let draft = input.to_draft().map_err(CliError::Failed)?;
        let mut client = ExchangeClient::new(channel(&orgs[who].settings, As::Publisher)?);
        let resp = client
            .publish(PublishRequest {
                indicator: Some(draft),
                ..Default::default()
            })
            .await
            .map_err(|s| CliError::Rpc(format!("publish at {}: {}", orgs[who].id, s.message())))?
            .into_inner();
        published.push((who, resp.id));
    }
    Ok(published)
}

/// What the policy says should happen, pair by pair.
async fn expected_deliveries(
    orgs: &[DemoOrg],
    contexts: &[Arc<NodeContext>],
    published: &[(usize, String)],
) -> Result<(Deliveries, Decisions), CliError> {
    let mut expected = Deliveries::new();
    let mut decisions = Vec::new();
    for (who, id) in published {
        let stored = contexts[*who]
            .store
            .indicators(Some(orgs[*who].id.as_str()))
            .await?;
        let row = stored
            .iter()
            .find(|r| &r.indicator_id == id)
            .ok_or_else(|| CliError::Failed(format!("{id} missing at its origin")))?;
        let ind = decode_stored(&row.envelope).map_err(CliError::Failed)?;
        let mut per_partner = Vec::new();
        let view = contexts[*who].view.load();
        for (to, p) in orgs.iter().enumerate().filter(|(i, _)| i != who) {
            let bound = view.policies.get(&p.id).map(|x| x.as_ref());
            let d = policy::egress(
                &orgs[*who].id,
                &ind,
                0,
                &p.id,
                bound,
                crate::clock::wall_ms(),
            );
            if d.is_allow() {
                expected.entry(to).or_default().insert(id.clone());
            }
            per_partner.push((to, d));
        }
        decisions.push((ind, per_partner));
    }
    Ok((expected, decisions))
}

/// Waits until every node holds what it should, or `timeout_secs` pass;
/// returns what each received.
async fn await_deliveries(
    contexts: &[Arc<NodeContext>],
    expected: &Deliveries,
    timeout_secs: u64,
) -> Result<Deliveries, CliError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let mut got = Deliveries::new();
        for (i, c) in contexts.iter().enumerate() {
            for r in c.store.indicators(None).await? {
                if r.received_from.is_some() {
                    got.entry(i).or_default().insert(r.indicator_id.clone());
                }
            }
        }
        if &got == expected || tokio::time::Instant::now() > deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ISP reports seeing the police's first indicator; its signed
/// sighting goes back to the police (the ISP's community-feed policy sends
/// sightings, the police's isp-feed accepts them). Fails if it does not
/// arrive in time.
async fn sighting_flows_back(
    orgs: &[DemoOrg],
    contexts: &[Arc<NodeContext>],
    published: &[(usize, String)],
    timeout_secs: u64,
) -> Result<(), CliError> {
    let (origin, isp) = (&orgs[0], &orgs[2]);
    let Some((_, id)) = published.iter().find(|(who, _)| *who == 0) else {
        return Ok(());
    };
    let mut client = ExchangeClient::new(channel(&isp.settings, As::Publisher)?);
    client
        .sight(crate::proto::v1::SightRequest {
            indicator_origin: origin.id.to_string(),
            indicator_id: id.clone(),
            count: 3,
            ..Default::default()
        })
        .await
        .map_err(|s| CliError::Rpc(format!("sight at {}: {}", isp.id, s.message())))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let held = contexts[0]
            .store
            .sightings_of(Some(origin.id.as_str()), id)
            .await?;
        if let Some(s) = held.iter().find(|s| s.sighter == isp.id.as_str()) {
            out!(
                "sighting: {} saw {}'s indicator {} {}x; its signed report reached {} (ledger: sighting-accepted)",
                isp.id,
                origin.id,
                id,
                s.count,
                origin.id
            );
            out!();
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::Failed(format!(
                "{}'s sighting of {id} did not reach {} within {timeout_secs} s",
                isp.id, origin.id
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Who received what under which rule, one indicator a row.
fn print_outcome(orgs: &[DemoOrg], decisions: &Decisions, received: &Deliveries) {
    let rows: Vec<Vec<String>> = decisions
        .iter()
        .map(|(ind, per_partner)| {
            let tlp = tlp_name(ind.marking.as_ref().map(|m| m.tlp).unwrap_or(0)).unwrap_or("?");
            let fate: Vec<String> = per_partner
                .iter()
                .map(|(to, d)| {
                    let to_id = &orgs[*to].id;
                    let got = received.get(to).is_some_and(|s| s.contains(&ind.id));
                    match d {
                        Decision::Allow { .. } if got => format!("{to_id}: received"),
                        Decision::Allow { .. } => format!("{to_id}: MISSING"),
                        Decision::Deny { rule, .. } if got => format!("{to_id}: LEAKED ({rule})"),
                        Decision::Deny { rule, .. } => format!("{to_id}: withheld ({rule})"),
                    }
                })
                .collect();
            vec![
                ind.origin_org.clone(),
                tlp.to_string(),
                kind_name(ind.kind).unwrap_or("?").to_string(),
                ind.value.clone(),
                fate.join(", "),
            ]
        })
        .collect();
    out!();
    let cols = [
        col("origin"),
        col("TLP"),
        col("kind"),
        col("value"),
        col("delivery"),
    ];
    for line in render(&cols, &rows) {
        out!("{line}");
    }
    out!();
}

/// Every decision is on each node's ledger; checks the chains.
async fn verify_ledgers(orgs: &[DemoOrg]) -> Result<(), CliError> {
    for o in orgs {
        let store = Store::open(&o.settings.store, crate::clock::Clock::system()).await?;
        let verdict = store.verify_audit().await?;
        store.close().await;
        match verdict {
            Ok(n) => out!("audit ledger of {:<20} intact ({n} rows)", o.id.as_str()),
            Err(b) => return Err(CliError::Failed(format!("{}: {b}", o.id))),
        }
    }
    Ok(())
}
