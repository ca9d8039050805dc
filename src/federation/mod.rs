//! Outbound partner links. For each registered partner with an endpoint the
//! node dials, subscribes from its committed cursor, verifies every envelope
//! before decoding it, and commits the accepted rows, the refused ones and
//! the cursor in one transaction. Links reconnect with capped exponential
//! backoff; a refused envelope is recorded and skipped, never a stall.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::identity::{SpiffeId, client_config};
use crate::model::{OrgId, now_unix_ms, validate_indicator};
use crate::node::NodeContext;
use crate::policy::{self, Decision, PartnerPolicy};
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::proto::v1::{Delivery, Envelope, Indicator, SubscribeRequest};
use crate::rpc::{SHUTTING_DOWN, verify_code};
use crate::signing::{KeyDirectory, open_indicator};
use crate::store::{NewIndicator, PeerRecord, PeerState, Quarantined, Rejection};

/// The state of an outbound link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Dialling and subscribing.
    Connecting,
    /// Subscribed and receiving.
    Connected,
    /// The last attempt failed; a retry is scheduled.
    Down,
}

impl LinkState {
    /// The name shown by `threatmesh status`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Down => "down",
        }
    }
}

/// Health of one outbound link, as the node last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkHealth {
    /// Current state.
    pub state: LinkState,
    /// When it entered that state (Unix ms).
    pub since_ms: i64,
    /// When the last Subscribe message arrived (0 = none yet).
    pub last_message_ms: i64,
    /// The partner's latest sequence number, as last reported.
    pub upstream_latest: u64,
    /// Why the link last went down ("" if it has not).
    pub last_error: String,
}

/// Outbound link health by partner: written by the links, read by Status.
#[derive(Debug, Default)]
pub struct LinkBoard(std::sync::Mutex<HashMap<OrgId, LinkHealth>>);

impl LinkBoard {
    fn with(&self, org: &OrgId, f: impl FnOnce(&mut LinkHealth)) {
        let mut map = self.0.lock().expect("not poisoned");
        let h = map.entry(org.clone()).or_insert(LinkHealth {
            state: LinkState::Connecting,
            since_ms: now_unix_ms(),
            last_message_ms: 0,
            upstream_latest: 0,
            last_error: String::new(),
        });
        f(h);
    }

    fn set_state(&self, org: &OrgId, state: LinkState, error: Option<String>) {
        self.with(org, |h| {
            if h.state != state {
                h.state = state;
                h.since_ms = now_unix_ms();
            }
            if let Some(e) = error {
                h.last_error = e;
            }
        });
    }

    fn remove(&self, org: &OrgId) {
        self.0.lock().expect("not poisoned").remove(org);
    }

    /// A copy of every link's health.
    pub fn snapshot(&self) -> HashMap<OrgId, LinkHealth> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// Largest Subscribe message accepted from a partner.
const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Longest path accepted: more relays than this is a loop or an attack.
pub const MAX_PATH_LEN: usize = 16;

/// A refused envelope: the gRPC code it maps to and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Status code.
    pub code: Code,
    /// Reason, naming the key, org or field.
    pub reason: String,
    /// The signing key we do not know yet, when that is the only problem:
    /// such an envelope waits in quarantine instead of being refused.
    pub unknown_key: Option<String>,
}

impl Refusal {
    fn new(code: Code, reason: String) -> Self {
        Self {
            code,
            reason,
            unknown_key: None,
        }
    }
}

/// An envelope from a partner whose signature, content and path checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The indicator, decoded from exactly the verified bytes.
    pub indicator: Indicator,
    /// The envelope as received, to be stored byte for byte.
    pub envelope: Vec<u8>,
    /// Its path, origin first, ending at the partner that sent it.
    pub path: Vec<String>,
    /// Its sequence number at that partner.
    pub upstream_seq: u64,
}

/// Checks the path of a delivery from `upstream`: 1 to [`MAX_PATH_LEN`]
/// valid org ids, no org twice, ending at the authenticated sender.
fn check_path(own: &OrgId, upstream: &OrgId, path: &[String]) -> Result<bool, Refusal> {
    let bad = |why: String| Refusal::new(Code::InvalidArgument, format!("path: {why}"));
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(bad(format!(
            "{} hops; 1 to {MAX_PATH_LEN} are accepted",
            path.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for o in path {
        OrgId::parse(o).map_err(|e| bad(e.to_string()))?;
        if !seen.insert(o.as_str()) {
            return Err(bad(format!("{o} appears twice (a loop)")));
        }
    }
    if path.iter().any(|o| o == own.as_str()) {
        return Ok(true);
    }
    if path.last().map(String::as_str) != Some(upstream.as_str()) {
        return Err(bad(format!(
            "ends at {}, but it was sent by {upstream}",
            path.last().map(String::as_str).unwrap_or("")
        )));
    }
    Ok(false)
}

/// Checks one delivery from `upstream`: its path, then the envelope frame,
/// then the signature against the key directory (before the payload is
/// decoded), that the signed origin starts the path, and the content.
/// `None`: it passed through this node already (we are on its path), a copy
/// coming back round a loop, dropped unopened. Pure.
pub fn verify_delivery(
    own: &OrgId,
    upstream: &OrgId,
    d: &Delivery,
    keys: &KeyDirectory,
    now_ms: i64,
) -> Result<Option<Verified>, Refusal> {
    if check_path(own, upstream, &d.path)? {
        return Ok(None);
    }
    let env = Envelope::decode(d.envelope.as_slice()).map_err(|e| {
        Refusal::new(
            Code::InvalidArgument,
            format!("envelope does not decode: {e}"),
        )
    })?;
    let indicator = open_indicator(&env, keys).map_err(|e| Refusal {
        code: verify_code(&e),
        reason: e.to_string(),
        unknown_key: match &e {
            crate::signing::VerifyError::UnknownKey(k) => Some(k.clone()),
            _ => None,
        },
    })?;
    if d.path.first().map(String::as_str) != Some(indicator.origin_org.as_str()) {
        return Err(Refusal::new(
            Code::InvalidArgument,
            format!(
                "path: starts at {}, but the signed origin is {}",
                d.path.first().map(String::as_str).unwrap_or(""),
                indicator.origin_org
            ),
        ));
    }
    validate_indicator(&indicator, now_ms).map_err(|e| {
        Refusal::new(
            Code::InvalidArgument,
            format!("indicator {}: {e}", indicator.id),
        )
    })?;
    Ok(Some(Verified {
        indicator,
        envelope: d.envelope.clone(),
        path: d.path.clone(),
        upstream_seq: d.seq,
    }))
}

/// Applies our ingress policy for `upstream` to a verified envelope. A
/// revocation of an indicator we hold (`held_earlier`) is always admitted.
/// Pure.
pub fn admit(
    own: &OrgId,
    upstream: &OrgId,
    v: Verified,
    policy: Option<&PartnerPolicy>,
    held_earlier: bool,
) -> Result<NewIndicator, Refusal> {
    let decision = policy::accept_retraction(&v.indicator, held_earlier)
        .unwrap_or_else(|| policy::ingress(own, &v.indicator, upstream, policy));
    let rule = match decision {
        Decision::Allow { rule } => rule,
        Decision::Deny { rule, reason } => {
            return Err(Refusal::new(
                Code::PermissionDenied,
                format!("ingress rule {rule}: {reason}"),
            ));
        }
    };
    Ok(NewIndicator {
        indicator: v.indicator,
        envelope: v.envelope,
        rule,
        path: v.path,
        upstream_seq: v.upstream_seq,
    })
}

/// What [`verify_delivery`] found, through [`admit`]: for a revocation it
/// first looks up whether we hold the indicator (a retraction of something
/// held passes ingress filters). `None`: an echo, dropped. The one step from
/// a verified envelope to a row, for live links and the quarantine alike.
pub async fn admit_checked(
    ctx: &NodeContext,
    upstream: &OrgId,
    verified: Result<Option<Verified>, Refusal>,
    policy: Option<&PartnerPolicy>,
) -> Result<Option<Result<NewIndicator, Refusal>>, crate::store::StoreError> {
    let v = match verified {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(None),
        Err(r) => return Ok(Some(Err(r))),
    };
    let held = v.indicator.revoked
        && ctx
            .store
            .latest_version(&v.indicator.origin_org, &v.indicator.id)
            .await?
            .is_some();
    Ok(Some(admit(&ctx.own, upstream, v, policy, held)))
}

impl Refusal {
    /// The rejection recorded for this refusal of `envelope` (`seq` at its
    /// upstream).
    pub fn into_rejection(self, seq: u64, envelope: Vec<u8>) -> Rejection {
        Rejection {
            upstream_seq: seq,
            code: format!("{:?}", self.code),
            reason: self.reason,
            envelope,
        }
    }
}

/// Why a link session ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Capped exponential backoff.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Self {
        let min = Duration::from_millis(min_ms);
        Self {
            min,
            max: Duration::from_millis(max_ms),
            next: min,
        }
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// Runs one partner link until `stop` turns true.
async fn run_link(ctx: Arc<NodeContext>, peer: PeerRecord, mut stop: watch::Receiver<bool>) {
    let f = &ctx.settings.federation;
    let mut backoff = Backoff::new(f.reconnect_min_ms, f.reconnect_max_ms);
    loop {
        ctx.links.set_state(&peer.org, LinkState::Connecting, None);
        let ended = tokio::select! {
            r = session(&ctx, &peer, &mut backoff) => r,
            _ = stop.changed() => {
                ctx.links.remove(&peer.org);
                return;
            }
        };
        if *stop.borrow() {
            ctx.links.remove(&peer.org);
            return;
        }
        let reason = match &ended {
            Ok(()) => "subscription ended by the partner".to_string(),
            Err(e) => e.to_string(),
        };
        ctx.links
            .set_state(&peer.org, LinkState::Down, Some(reason));
        let delay = backoff.step();
        match ended {
            Ok(()) => {
                tracing::info!(partner = %peer.org, "subscription ended by partner; reconnecting")
            }
            Err(LinkError::Status(s))
                if s.code() == Code::Unavailable && s.message() == SHUTTING_DOWN =>
            {
                tracing::info!(partner = %peer.org, retry_in_ms = delay.as_millis() as u64, "partner node is shutting down")
            }
            Err(e) => tracing::warn!(
                partner = %peer.org, endpoint = %peer.endpoint, error = %e,
                retry_in_ms = delay.as_millis() as u64, "partner link down"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {
                ctx.links.remove(&peer.org);
                return;
            }
        }
    }
}

async fn session(
    ctx: &NodeContext,
    peer: &PeerRecord,
    backoff: &mut Backoff,
) -> Result<(), LinkError> {
    // The node certificate current now: a rotated one is used from the next connect.
    let client = ctx.tls.cert.load_full();
    let tls = client_config(ctx.trust.clone(), SpiffeId::node(&peer.org), Some(&client))?;
    let channel = crate::net::mtls_channel(&peer.endpoint, peer.org.as_str(), tls)?;
    let mut exchange = ExchangeClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let cursor = ctx.store.cursor(&peer.org).await?;
    let mut stream = exchange
        .subscribe(SubscribeRequest {
            from_cursor: cursor,
        })
        .await?
        .into_inner();
    tracing::info!(partner = %peer.org, from = cursor, "subscribed");
    ctx.links.set_state(&peer.org, LinkState::Connected, None);
    // Verified batches are committed by a writer task, several at a time
    // when they queue up, while the next message is verified.
    let (commits, pending) = tokio::sync::mpsc::channel::<Batch>(4);
    let writer = tokio::spawn(commit_batches(ctx.store.clone(), peer.org.clone(), pending));
    let ended = receive(ctx, peer, &mut stream, cursor, &commits, backoff).await;
    drop(commits);
    let committed = writer
        .await
        .map_err(|e| LinkError::Protocol(format!("commit task: {e}")))?;
    ended.and(committed)
}

/// One verified Subscribe message, ready to commit.
struct Batch {
    rows: Vec<NewIndicator>,
    refused: Vec<Rejection>,
    quarantined: Vec<Quarantined>,
    cursor: u64,
}

/// Commits batches in order, merging those that queued up into one
/// transaction (one fsync).
async fn commit_batches(
    store: crate::store::Store,
    upstream: OrgId,
    mut pending: tokio::sync::mpsc::Receiver<Batch>,
) -> Result<(), LinkError> {
    let mut queued = Vec::new();
    while pending.recv_many(&mut queued, 16).await > 0 {
        let mut merged = Batch {
            rows: Vec::new(),
            refused: Vec::new(),
            quarantined: Vec::new(),
            cursor: 0,
        };
        for b in queued.drain(..) {
            merged.rows.extend(b.rows);
            merged.refused.extend(b.refused);
            merged.quarantined.extend(b.quarantined);
            merged.cursor = merged.cursor.max(b.cursor);
        }
        let out = store
            .ingest_batch(
                &upstream,
                &merged.rows,
                &merged.refused,
                &merged.quarantined,
                merged.cursor,
            )
            .await?;
        if out.stored + out.rejected + out.quarantined > 0 {
            tracing::debug!(
                partner = %upstream, stored = out.stored, duplicates = out.duplicates,
                rejected = out.rejected, quarantined = out.quarantined, cursor = merged.cursor,
                "batch committed"
            );
        }
    }
    Ok(())
}

/// Verifies deliveries on every core (signature checks dominate ingest).
async fn verify_all(
    own: &OrgId,
    upstream: &OrgId,
    deliveries: Vec<Delivery>,
    keys: Arc<KeyDirectory>,
    now: i64,
) -> Result<Vec<(Delivery, Result<Option<Verified>, Refusal>)>, LinkError> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if deliveries.len() < 64 || cores == 1 {
        return Ok(deliveries
            .into_iter()
            .map(|d| {
                let r = verify_delivery(own, upstream, &d, &keys, now);
                (d, r)
            })
            .collect());
    }
    let per = deliveries.len().div_ceil(cores);
    let mut chunks = Vec::new();
    let mut rest = deliveries;
    while !rest.is_empty() {
        let tail = rest.split_off(per.min(rest.len()));
        chunks.push(std::mem::replace(&mut rest, tail));
    }
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (own, upstream, keys) = (own.clone(), upstream.clone(), keys.clone());
            tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|d| {
                        let r = verify_delivery(&own, &upstream, &d, &keys, now);
                        (d, r)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.extend(
            t.await
                .map_err(|e| LinkError::Protocol(format!("verify task: {e}")))?,
        );
    }
    Ok(out)
}

/// Receives, checks and hands batches to the writer until the stream ends.
async fn receive(
    ctx: &NodeContext,
    peer: &PeerRecord,
    stream: &mut tonic::Streaming<crate::proto::v1::SubscribeResponse>,
    mut cursor: u64,
    commits: &tokio::sync::mpsc::Sender<Batch>,
    backoff: &mut Backoff,
) -> Result<(), LinkError> {
    while let Some(msg) = stream.message().await? {
        ctx.links.with(&peer.org, |h| {
            h.last_message_ms = now_unix_ms();
            h.upstream_latest = msg.latest.max(msg.cursor);
        });
        if msg.cursor < cursor {
            return Err(LinkError::Protocol(format!(
                "{} moved the cursor back from {cursor} to {}",
                peer.org, msg.cursor
            )));
        }
        // Cards first: they may carry the keys the deliveries need.
        let mut learned = false;
        for card in &msg.cards {
            learned |= ctx.learn_card(card, &peer.org).await?;
        }
        if learned {
            ctx.reload_peers()
                .await
                .map_err(|e| LinkError::Protocol(format!("reloading keys: {e}")))?;
        }
        let mut prev = cursor;
        for d in &msg.deliveries {
            if d.seq <= prev || d.seq > msg.cursor {
                return Err(LinkError::Protocol(format!(
                    "{} sent seq {} outside ({prev}, {}]",
                    peer.org, d.seq, msg.cursor
                )));
            }
            prev = d.seq;
        }
        let now = now_unix_ms();
        let checked = verify_all(
            &ctx.own,
            &peer.org,
            msg.deliveries,
            ctx.keys.load_full(),
            now,
        )
        .await?;
        let policies = ctx.policies.load();
        let policy = policies.get(&peer.org).map(|p| p.as_ref());
        let mut batch = Batch {
            rows: Vec::with_capacity(checked.len()),
            refused: Vec::new(),
            quarantined: Vec::new(),
            cursor: msg.cursor,
        };
        for (d, verified) in checked {
            let Some(admitted) = admit_checked(ctx, &peer.org, verified, policy).await? else {
                continue;
            };
            match admitted {
                Ok(row) => batch.rows.push(row),
                Err(Refusal {
                    unknown_key: Some(key_id),
                    ..
                }) => {
                    tracing::info!(partner = %peer.org, seq = d.seq, key = %key_id, "signing key unknown; envelope quarantined");
                    batch.quarantined.push(Quarantined {
                        upstream_seq: d.seq,
                        key_id,
                        envelope: d.envelope,
                        path: d.path,
                    });
                }
                Err(r) => {
                    tracing::warn!(
                        partner = %peer.org, seq = d.seq, code = ?r.code, reason = %r.reason,
                        "envelope refused"
                    );
                    batch.refused.push(r.into_rejection(d.seq, d.envelope));
                }
            }
        }
        if commits.send(batch).await.is_err() {
            // The writer stopped on an error; the session reports it.
            return Ok(());
        }
        cursor = msg.cursor;
        backoff.reset();
    }
    Ok(())
}

/// Keeps one link per partner with an endpoint in step with the store: new
/// partners get a link, changed ones a fresh link, removed ones none. Also
/// refreshes the trust store, key directory and policies, and picks up a
/// rotated node certificate. Returns when `stop` is set.
pub async fn supervise(ctx: Arc<NodeContext>, mut stop: watch::Receiver<bool>) {
    let mut links: HashMap<OrgId, (PeerRecord, watch::Sender<bool>, JoinHandle<()>)> =
        HashMap::new();
    let period = Duration::from_millis(ctx.settings.federation.peer_refresh_ms);
    loop {
        ctx.reload_node_cert();
        let ttl = i64::try_from(ctx.settings.federation.quarantine_ttl_ms).unwrap_or(i64::MAX);
        match ctx
            .store
            .expire_quarantine(now_unix_ms().saturating_sub(ttl))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                dropped = n,
                "quarantined envelopes dropped: their signing key never arrived"
            ),
            Err(e) => tracing::error!(error = %e, "cannot expire quarantined envelopes"),
        }
        match ctx.reload_peers().await {
            Ok(peers) => {
                links.retain(|org, (rec, stop_link, _)| {
                    let keep = peers.iter().any(|p| p == rec);
                    if !keep {
                        tracing::info!(partner = %org, "partner changed or removed; closing link");
                        stop_link.send_replace(true);
                    }
                    keep
                });
                for p in peers
                    .into_iter()
                    .filter(|p| !p.endpoint.is_empty() && p.state == PeerState::Active)
                {
                    if links.contains_key(&p.org) {
                        continue;
                    }
                    let (tx, rx) = watch::channel(false);
                    let h = tokio::spawn(run_link(ctx.clone(), p.clone(), rx));
                    links.insert(p.org.clone(), (p, tx, h));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read partners from the store"),
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => break,
        }
    }
    for (_, (_, tx, h)) in links {
        tx.send_replace(true);
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`verify_delivery`] then [`admit`] (as for an indicator not held yet);
    /// `None` for an echo.
    fn check_delivery(
        own: &OrgId,
        upstream: &OrgId,
        d: &Delivery,
        keys: &KeyDirectory,
        policy: Option<&PartnerPolicy>,
        now_ms: i64,
    ) -> Result<Option<NewIndicator>, Refusal> {
        match verify_delivery(own, upstream, d, keys, now_ms)? {
            None => Ok(None),
            Some(v) => admit(own, upstream, v, policy, false).map(Some),
        }
    }
    use crate::proto::v1::{Indicator, IndicatorKind, Marking, Tlp};
    use crate::signing::{INDICATOR_PAYLOAD_TYPE, KnownKey, OrgSigningKey};

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(100, 700);
        let steps: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [100, 200, 400, 700, 700]);
        b.reset();
        assert_eq!(b.step().as_millis(), 100);
    }

    #[test]
    fn delivery_checks_map_to_codes() {
        let a = OrgId::parse("a.example").unwrap();
        let b = OrgId::parse("b.example").unwrap();
        let (key, _) = OrgSigningKey::generate().unwrap();
        let mut keys = KeyDirectory::default();
        keys.insert(KnownKey {
            key_id: key.key_id().into(),
            org: a.clone(),
            public_key: key.public_key().to_vec(),
            not_before_ms: 0,
            not_after_ms: 0,
            revoked: false,
        })
        .unwrap();
        let now = 1_700_000_000_000;
        let ind = Indicator {
            origin_org: a.to_string(),
            key_id: key.key_id().into(),
            id: uuid::Uuid::new_v4().to_string(),
            version: 1,
            created_unix_ms: now,
            modified_unix_ms: now,
            marking: Some(Marking {
                tlp: Tlp::Green as i32,
                ..Default::default()
            }),
            kind: IndicatorKind::Domain as i32,
            value: "evil.example".into(),
            valid_from_unix_ms: now,
            ..Default::default()
        };
        let good = key
            .seal(INDICATOR_PAYLOAD_TYPE, ind.encode_to_vec())
            .encode_to_vec();
        let from = |envelope: &[u8], path: &[&str]| Delivery {
            seq: 1,
            envelope: envelope.to_vec(),
            path: path.iter().map(|s| s.to_string()).collect(),
        };
        let row = check_delivery(&b, &a, &from(&good, &["a.example"]), &keys, None, now)
            .unwrap()
            .unwrap();
        assert_eq!(row.envelope, good);
        assert_eq!(row.path, ["a.example"]);

        let code = |d: Delivery, upstream: &OrgId| {
            check_delivery(&b, upstream, &d, &keys, None, now)
                .unwrap_err()
                .code
        };
        assert_eq!(
            code(from(b"\xff\xff", &["a.example"]), &a),
            Code::InvalidArgument
        );
        let mut env = Envelope::decode(good.as_slice()).unwrap();
        env.payload[3] ^= 0x01;
        assert_eq!(
            code(from(&env.encode_to_vec(), &["a.example"]), &a),
            Code::Unauthenticated
        );
        // Arrives from c.example but originates at a.example: relayed data
        // is not accepted without a policy saying so.
        let c = OrgId::parse("c.example").unwrap();
        assert_eq!(
            code(from(&good, &["a.example", "c.example"]), &c),
            Code::PermissionDenied
        );
        // Paths: empty, not ending at the sender, not starting at the signed
        // origin, with a loop — all refused; through us — an echo.
        assert_eq!(code(from(&good, &[]), &a), Code::InvalidArgument);
        assert_eq!(code(from(&good, &["a.example"]), &c), Code::InvalidArgument);
        assert_eq!(code(from(&good, &["c.example"]), &c), Code::InvalidArgument);
        assert_eq!(
            code(from(&good, &["a.example", "c.example", "a.example"]), &a),
            Code::InvalidArgument
        );
        assert!(
            check_delivery(
                &b,
                &c,
                &from(&good, &["a.example", "b.example", "c.example"]),
                &keys,
                None,
                now
            )
            .unwrap()
            .is_none()
        );
        // Far-future timestamp.
        let mut future = ind.clone();
        future.modified_unix_ms = now + 3_600_000;
        future.created_unix_ms = future.modified_unix_ms;
        let env = key
            .seal(INDICATOR_PAYLOAD_TYPE, future.encode_to_vec())
            .encode_to_vec();
        assert_eq!(code(from(&env, &["a.example"]), &a), Code::InvalidArgument);
    }
}
