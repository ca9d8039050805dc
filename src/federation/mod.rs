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
use crate::proto::v1::{Envelope, SubscribeRequest};
use crate::rpc::{SHUTTING_DOWN, verify_code};
use crate::signing::{KeyDirectory, open_indicator};
use crate::store::{NewIndicator, PeerRecord, PeerState, Rejection};

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

/// A refused envelope: the gRPC code it maps to and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Status code.
    pub code: Code,
    /// Reason, naming the key, org or field.
    pub reason: String,
}

/// Checks one envelope received from `upstream`: decode the envelope frame,
/// verify the signature against the key directory (before the payload is
/// decoded), validate the content, apply the ingress policy. Pure.
pub fn check_delivery(
    own: &OrgId,
    upstream: &OrgId,
    bytes: &[u8],
    keys: &KeyDirectory,
    policy: Option<&PartnerPolicy>,
    now_ms: i64,
) -> Result<NewIndicator, Refusal> {
    let env = Envelope::decode(bytes).map_err(|e| Refusal {
        code: Code::InvalidArgument,
        reason: format!("envelope does not decode: {e}"),
    })?;
    let indicator = open_indicator(&env, keys).map_err(|e| Refusal {
        code: verify_code(&e),
        reason: e.to_string(),
    })?;
    validate_indicator(&indicator, now_ms).map_err(|e| Refusal {
        code: Code::InvalidArgument,
        reason: format!("indicator {}: {e}", indicator.id),
    })?;
    let rule = match policy::ingress(own, &indicator, upstream, policy) {
        Decision::Allow { rule } => rule,
        Decision::Deny { rule, reason } => {
            return Err(Refusal {
                code: Code::PermissionDenied,
                reason: format!("ingress rule {rule}: {reason}"),
            });
        }
    };
    Ok(NewIndicator {
        indicator,
        envelope: bytes.to_vec(),
        rule,
    })
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
    let mut cursor = ctx.store.cursor(&peer.org).await?;
    let mut stream = exchange
        .subscribe(SubscribeRequest {
            from_cursor: cursor,
        })
        .await?
        .into_inner();
    tracing::info!(partner = %peer.org, from = cursor, "subscribed");
    ctx.links.set_state(&peer.org, LinkState::Connected, None);
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
        let keys = ctx.keys.load();
        let policies = ctx.policies.load();
        let policy = policies.get(&peer.org).map(|p| p.as_ref());
        let now = now_unix_ms();
        let mut rows = Vec::with_capacity(msg.deliveries.len());
        let mut refused = Vec::new();
        let mut prev = cursor;
        for d in msg.deliveries {
            if d.seq <= prev || d.seq > msg.cursor {
                return Err(LinkError::Protocol(format!(
                    "{} sent seq {} outside ({prev}, {}]",
                    peer.org, d.seq, msg.cursor
                )));
            }
            prev = d.seq;
            match check_delivery(&ctx.own, &peer.org, &d.envelope, &keys, policy, now) {
                Ok(row) => rows.push(row),
                Err(r) => {
                    tracing::warn!(
                        partner = %peer.org, seq = d.seq, code = ?r.code, reason = %r.reason,
                        "envelope refused"
                    );
                    refused.push(Rejection {
                        upstream_seq: d.seq,
                        code: format!("{:?}", r.code),
                        reason: r.reason,
                        envelope: d.envelope,
                    });
                }
            }
        }
        let out = ctx
            .store
            .ingest_batch(&peer.org, &rows, &refused, msg.cursor)
            .await?;
        if out.stored + out.rejected > 0 {
            tracing::debug!(
                partner = %peer.org, stored = out.stored, duplicates = out.duplicates,
                rejected = out.rejected, cursor = msg.cursor, "batch committed"
            );
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
        let row = check_delivery(&b, &a, &good, &keys, None, now).unwrap();
        assert_eq!(row.envelope, good);

        assert_eq!(
            check_delivery(&b, &a, b"\xff\xff", &keys, None, now)
                .unwrap_err()
                .code,
            Code::InvalidArgument
        );
        let mut env = Envelope::decode(good.as_slice()).unwrap();
        env.payload[3] ^= 0x01;
        let err = check_delivery(&b, &a, &env.encode_to_vec(), &keys, None, now).unwrap_err();
        assert_eq!(err.code, Code::Unauthenticated);
        // Arrives from c.example but originates at a.example: not accepted yet.
        let c = OrgId::parse("c.example").unwrap();
        assert_eq!(
            check_delivery(&b, &c, &good, &keys, None, now)
                .unwrap_err()
                .code,
            Code::PermissionDenied
        );
        // Far-future timestamp.
        let mut future = ind.clone();
        future.modified_unix_ms = now + 3_600_000;
        future.created_unix_ms = future.modified_unix_ms;
        let env = key
            .seal(INDICATOR_PAYLOAD_TYPE, future.encode_to_vec())
            .encode_to_vec();
        assert_eq!(
            check_delivery(&b, &a, &env, &keys, None, now)
                .unwrap_err()
                .code,
            Code::InvalidArgument
        );
    }
}
