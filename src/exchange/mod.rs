//! The Exchange gRPC service: Publish for our own publishers, Subscribe for
//! partner nodes, GetCard for anyone authenticated — and [`release`], the
//! single gate every outbound indicator passes.

use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::AuditEntry;
use crate::context::{NodeContext, OverLimit};
use crate::model::{OrgId, prepare_draft, validate_indicator};
use crate::policy::{self, Decision, PartnerPolicy};
use crate::proto::v1::exchange_server::Exchange;
use crate::proto::v1::{
    Delivery, GetCardRequest, GetCardResponse, GetLedgerHeadRequest, GetLedgerHeadResponse,
    Indicator, IndicatorDraft, PublishBatchRequest, PublishBatchResponse, PublishOutcome,
    PublishRequest, PublishResponse, RecipientPreview, SubscribeRequest, SubscribeResponse,
};
use crate::rpc::{Allowed, Deadline, RpcError, authorize};
use crate::signing::INDICATOR_PAYLOAD_TYPE;
use crate::store::{Appended, NewIndicator, PublishKey, Sent, StoredIndicator};

pub use crate::signing::decode_stored;

/// The indicator of a stored row, decoded once per row however many
/// streams release it (the store's shared tail hands every live stream the
/// same cell).
pub fn decoded(row: &StoredIndicator) -> Result<Arc<Indicator>, String> {
    row.decoded
        .get_or_init(|| decode_stored(&row.envelope).map(Arc::new))
        .clone()
}

/// Most items in one PublishBatch.
pub const MAX_BATCH: usize = 1000;

/// Which indicator and version a publish produces.
pub struct Identity {
    /// Indicator id (UUID).
    pub id: String,
    /// Version number.
    pub version: u64,
    /// Creation time of the first version.
    pub created_unix_ms: i64,
}

/// The indicator this org publishes from a prepared (validated, normalised)
/// draft: the one place drafts become signed content.
pub fn assemble(
    own: &OrgId,
    key_id: &str,
    at: Identity,
    now_ms: i64,
    d: IndicatorDraft,
) -> Indicator {
    Indicator {
        origin_org: own.to_string(),
        key_id: key_id.to_string(),
        id: at.id,
        version: at.version,
        created_unix_ms: at.created_unix_ms,
        modified_unix_ms: now_ms,
        marking: d.marking,
        kind: d.kind,
        value: d.value,
        confidence: d.confidence,
        tags: d.tags,
        jurisdictions: d.jurisdictions,
        valid_from_unix_ms: d.valid_from_unix_ms,
        valid_until_unix_ms: d.valid_until_unix_ms,
        kill_chain_phases: d.kill_chain_phases,
        description: d.description,
        revoked: d.revoked,
    }
}

/// What the egress gate decided for one stored row and one partner.
#[derive(Debug)]
pub enum Release {
    /// Not for this partner at all: it is the origin or already on the
    /// row's path (it had it before us). No decision is recorded.
    Skip,
    /// Send it; the entry records the decision.
    Send(Delivery, AuditEntry),
    /// Withhold it; the entry records why.
    Withhold(AuditEntry),
}

/// The egress gate. Every path that sends an indicator to a partner —
/// Subscribe backlog and live tail, for our own indicators and relayed
/// ones — calls this and sends only what it returns, with the partner's
/// policy as it is at send time. It applies [`policy::retraction`] (a
/// revocation always reaches a past recipient) and otherwise
/// [`policy::egress`] with the row's hop count, and returns the audit entry
/// recording the decision, which the caller commits before sending. A
/// released envelope is forwarded byte for byte with our org appended to
/// its path.
pub fn release(
    own: &OrgId,
    row: &StoredIndicator,
    recipient: &OrgId,
    policy: Option<&PartnerPolicy>,
    previously_sent: bool,
    now_ms: i64,
) -> Release {
    let Some((decision, subject)) = decide(own, row, recipient, policy, previously_sent, now_ms)
    else {
        return Release::Skip;
    };
    let policy_ref = policy
        .map(|p| format!("policy {}@{}", p.name, p.version))
        .unwrap_or_else(|| "no policy".into());
    match decision {
        Decision::Allow { rule } => {
            tracing::trace!(seq = row.seq, partner = %recipient, rule, "released");
            let entry = AuditEntry::sent(recipient.as_str(), subject, rule, policy_ref);
            let mut path = row.path.clone();
            path.push(own.to_string());
            let delivery = Delivery {
                seq: row.seq,
                envelope: row.envelope.clone(),
                path,
            };
            Release::Send(delivery, entry)
        }
        Decision::Deny { rule, reason } => {
            tracing::debug!(seq = row.seq, partner = %recipient, rule, %reason, "withheld");
            let why = format!("{reason} ({policy_ref})");
            let entry = AuditEntry::withheld(recipient.as_str(), subject, rule, why);
            Release::Withhold(entry)
        }
    }
}

/// The decision [`release`] makes for `row` towards `recipient`, and the
/// ledger subject it names; `None` when the row is never offered to it (it
/// came from there, or passed through it). Also what a publisher's preview
/// of its recipients uses, so the preview is the send path's decision.
pub fn decide(
    own: &OrgId,
    row: &StoredIndicator,
    recipient: &OrgId,
    policy: Option<&PartnerPolicy>,
    previously_sent: bool,
    now_ms: i64,
) -> Option<(Decision, String)> {
    if row.origin_org == recipient.as_str() || row.path.iter().any(|o| o == recipient.as_str()) {
        return None;
    }
    Some(match decoded(row) {
        Ok(ind) => {
            let hops = u32::try_from(row.path.len()).unwrap_or(u32::MAX);
            let subject = AuditEntry::indicator_subject(&ind.origin_org, &ind.id, ind.version);
            let d = policy::retraction(&ind, previously_sent)
                .unwrap_or_else(|| policy::egress(own, &ind, hops, recipient, policy, now_ms));
            (d, subject)
        }
        Err(e) => (
            Decision::Deny {
                rule: "stored-row-unreadable",
                reason: e,
            },
            format!("seq {}", row.seq),
        ),
    })
}

/// Streams the local log after `after` in batches, mapping each batch with
/// `map` (which may filter and returns audit entries, and the indicators
/// released to `recipient`, to commit before the batch is sent), then —
/// with `follow` — the live tail. For a partner stream (`recipient` set),
/// `map` also gets the revoked rows' indicators that partner was sent
/// before, so retractions reach past recipients. Reads come from the
/// store, so a slow reader costs a cursor, not memory. A partner stream
/// also carries out its partner's pending `peer resend` (see
/// [`resend_pass`]): `map`'s last argument says a batch is such a pass,
/// whose rows lie at or below the cursor. At most three
/// batches per stream are held (one waiting for its ledger commit, one
/// queued for the connection, one being decided), plus what HTTP/2 flow
/// control lets through. Stops when the client goes away or the node shuts
/// down.
pub fn stream_log<T, F, A>(
    ctx: Arc<NodeContext>,
    after: u64,
    follow: bool,
    recipient: Option<OrgId>,
    refused: A,
    mut map: F,
    heartbeat: Option<Heartbeat<T>>,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnMut(&[StoredIndicator], u64, &SentBefore, bool) -> (Option<T>, Vec<AuditEntry>, Vec<Sent>)
        + Send
        + 'static,
    A: Fn() -> Option<Status> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    // Batches go out through a forwarder that waits for each batch's ledger
    // records to be durable before sending it, so the next batch is read and
    // decided while the previous one commits.
    let (forward, mut queue) = mpsc::channel::<Forward<T>>(1);
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        loop {
            // A client that went away ends the stream now, not at the next
            // batch, so its slot and tasks are freed while the log is idle.
            let next = tokio::select! {
                next = queue.recv() => next,
                _ = tx.closed() => return,
            };
            let Some(next) = next else { return };
            let item = match next {
                Forward::Fail(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                Forward::Item(item, pending, rows_unsynced) => {
                    if let Err(status) = cleared_to_send(rows_unsynced, pending).await {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    item
                }
            };
            if let Some(item) = item
                && tx.send(Ok(item)).await.is_err()
            {
                return;
            }
        }
    });
    tasks.spawn(async move {
        let tx = forward;
        let fail = |status: Status| Forward::Fail(status);
        let mut cursor = after;
        // Rows are read as soon as they are written here, before they are
        // on disk: the batch is decided and its release recorded while the
        // sync runs, and the forwarder sends it once that is done.
        let mut latest = ctx.store.watch_written();
        let shutdown = ctx.shutdown.clone();
        let mut peers = ctx.peer_changes.subscribe();
        let batch = ctx.settings.federation.batch_size;
        let limits = &ctx.settings.limits;
        let mut resends = ctx.resends.subscribe();
        // A request left from before this stream (or this process) began.
        resends.mark_changed();
        // The average size of the rows read last, so the next read asks for
        // about a reply's worth, not `batch` rows of whatever size.
        let mut avg_row = 0usize;
        // Set once a batch went out: the log is read again only if it grew
        // meanwhile, not to find nothing after every batch.
        let mut sent_one = false;
        loop {
            if shutdown.is_cancelled() {
                let _ = tx.send(fail(RpcError::ShuttingDown.into())).await;
                return;
            }
            peers.borrow_and_update();
            if let Some(status) = refused() {
                let _ = tx.send(fail(status)).await;
                return;
            }
            let budget = reply_budget(
                limits.max_message_bytes,
                limits.reply_bytes_all_streams,
                ctx.quota.all_streams(),
            );
            if let Some(r) = &recipient
                && resends.has_changed().unwrap_or(false)
            {
                resends.borrow_and_update();
                let pass = resend_pass(&ctx, r, cursor, (batch, budget), &mut map, &tx).await;
                if let Err(status) = pass {
                    let _ = tx.send(fail(status)).await;
                    return;
                }
            }
            let known = *latest.borrow_and_update();
            let caught_up = std::mem::take(&mut sent_one) && follow && cursor >= known;
            let want = rows_for(budget, avg_row, batch);
            let read = if caught_up {
                Ok((Vec::new(), None))
            } else {
                ctx.store.read_written_after(cursor, want).await
            };
            let (rows, unsynced) = match read {
                Ok((r, unsynced)) => {
                    if !r.is_empty() {
                        avg_row = r.iter().map(row_bytes).sum::<usize>() / r.len();
                    }
                    // (The commit of the last row read covers any rows
                    // the budget leaves out: waiting for it is enough.)
                    (within_budget(r, budget), unsynced)
                }
                Err(e) => {
                    let _ = tx.send(fail(RpcError::Store(e).into())).await;
                    return;
                }
            };
            let Some(last) = rows.last().map(|r| r.seq) else {
                if !follow {
                    return;
                }
                let beat = async {
                    match &heartbeat {
                        Some((every, _)) => tokio::time::sleep(*every).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = latest.changed() => if r.is_err() { return },
                    _ = peers.changed() => {}
                    _ = resends.changed() => resends.mark_changed(),
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {}
                    _ = beat => {
                        // Idle: say so, with where this stream and the log
                        // stand, so the subscriber's lag and last-message
                        // time are true.
                        if let Some((_, make)) = &heartbeat
                            && tx.send(Forward::Item(Some(make(cursor)), None, None)).await.is_err()
                        {
                            return;
                        }
                    }
                }
                continue;
            };
            let sent_before = match &recipient {
                Some(r) => {
                    let revoked: Vec<(String, String)> = rows
                        .iter()
                        .filter(|x| x.revoked)
                        .map(|x| (x.origin_org.clone(), x.indicator_id.clone()))
                        .collect();
                    match ctx.store.sent_before(r, &revoked).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(fail(RpcError::Store(e).into())).await;
                            return;
                        }
                    }
                }
                None => SentBefore::new(),
            };
            let (item, audit, sent) = map(&rows, last, &sent_before, false);
            // The reply holds what it needs; a stream waiting on a slow
            // client holds no rows besides it.
            drop(rows);
            ctx.metrics.count_releases(&audit);
            let pending = match &recipient {
                Some(r) => match ctx.store.enqueue_release(audit, r, sent).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        let _ = tx.send(fail(RpcError::Store(e).into())).await;
                        return;
                    }
                },
                None => {
                    if let Err(e) = ctx.store.append_audit(&audit).await {
                        let _ = tx.send(fail(RpcError::Store(e).into())).await;
                        return;
                    }
                    None
                }
            };
            tokio::select! {
                r = tx.send(Forward::Item(item, pending, unsynced)) => if r.is_err() { return },
                _ = shutdown.cancelled() => {}
            }
            cursor = last;
            sent_one = true;
        }
    });
    ReceiverStream::new(rx)
}

/// Carries out `recipient`'s pending `peer resend`, if any: its rows up
/// to `cursor` (what the stream has already considered), minus the
/// versions it was ever sent, decided again by `map` under the current
/// policy; what is allowed goes out as replies marked resent (the cursor
/// unchanged), each decision on the ledger before its reply is sent. The
/// request is removed when its range is done; a crash before that runs it
/// again, and what was sent by then is not offered twice.
async fn resend_pass<T, F>(
    ctx: &NodeContext,
    recipient: &OrgId,
    cursor: u64,
    (batch, budget): (u32, usize),
    map: &mut F,
    tx: &mpsc::Sender<Forward<T>>,
) -> Result<(), Status>
where
    F: FnMut(&[StoredIndicator], u64, &SentBefore, bool) -> (Option<T>, Vec<AuditEntry>, Vec<Sent>),
{
    let store = |e| Status::from(RpcError::Store(e));
    let Some(req) = ctx.store.resend_request(recipient).await.map_err(store)? else {
        return Ok(());
    };
    let end = req.up_to_seq.min(cursor);
    let mut at = req.from_seq.saturating_sub(1);
    let (mut offered, mut sent_now) = (0usize, 0usize);
    while at < end {
        let mut rows = ctx.store.read_after(at, batch).await.map_err(store)?;
        rows.retain(|r| r.seq <= end);
        let rows = within_budget(rows, budget);
        let Some(last) = rows.last().map(|r| r.seq) else {
            break;
        };
        let fresh = ctx.store.never_sent(recipient, rows).await.map_err(store)?;
        at = last;
        if fresh.is_empty() {
            continue;
        }
        offered += fresh.len();
        let (item, audit, sent) = map(&fresh, cursor, &SentBefore::new(), true);
        drop(fresh);
        sent_now += sent.len();
        ctx.metrics.count_releases(&audit);
        let pending = ctx
            .store
            .enqueue_release(audit, recipient, sent)
            .await
            .map_err(store)?;
        if tx
            .send(Forward::Item(item, Some(pending), None))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    // Removed only once the release records of every reply of the pass are
    // durable: the release writer commits in queue order, so an empty write
    // queued now resolves after them. A crash before that runs the pass
    // again, and what was recorded as sent is not offered twice.
    let flushed = ctx
        .store
        .enqueue_release(Vec::new(), recipient, Vec::new())
        .await
        .map_err(store)?;
    match flushed.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(store(e)),
        Err(_) => return Err(RpcError::ShuttingDown.into()),
    }
    ctx.store
        .finish_resend(recipient, &req)
        .await
        .map_err(store)?;
    tracing::info!(partner = %recipient, from = req.from_seq, up_to = end, offered, sent = sent_now, "peer resend carried out");
    Ok(())
}

/// Bytes of envelopes one reply carries at most. Each stream holds up to
/// three replies (one committing, one queued, one being decided), so this,
/// not the row count, bounds what a subscriber costs; 256 KiB is still
/// hundreds of typical envelopes. Never more than what is left of the
/// message limit after room for the cards, paths and framing that go with
/// them, nor more than this stream's share of `all_streams` bytes among the
/// `open` streams (but at least [`MIN_REPLY_BYTES`]): with many
/// subscribers each reply is smaller, so what they hold in flight stays
/// about the same.
fn reply_budget(max_message_bytes: usize, all_streams: usize, open: usize) -> usize {
    let share = (all_streams / open.max(1)).max(MIN_REPLY_BYTES);
    (max_message_bytes / 2).min(REPLY_BYTES).min(share)
}

/// See [`reply_budget`].
const REPLY_BYTES: usize = 256 * 1024;
/// See [`reply_budget`].
const MIN_REPLY_BYTES: usize = 16 * 1024;

/// The bytes a row adds to a reply.
fn row_bytes(r: &StoredIndicator) -> usize {
    r.envelope.len() + r.path.iter().map(|p| p.len() + 4).sum::<usize>()
}

/// How many rows to read for a reply of `budget` bytes when rows average
/// `avg_row` bytes (unknown: 0): at most `batch`, at least one, and a
/// little over the budget so a reply is full.
fn rows_for(budget: usize, avg_row: usize, batch: u32) -> u32 {
    if avg_row == 0 {
        return batch;
    }
    u32::try_from(budget / avg_row + 1)
        .unwrap_or(u32::MAX)
        .clamp(1, batch)
}

/// The leading rows whose envelopes fit in `budget` bytes (at least one:
/// the smallest message limit holds the largest envelope).
fn within_budget(mut rows: Vec<StoredIndicator>, budget: usize) -> Vec<StoredIndicator> {
    let mut used = 0usize;
    let keep = rows
        .iter()
        .position(|r| {
            used += row_bytes(r);
            used > budget
        })
        .unwrap_or(rows.len())
        .max(1);
    rows.truncate(keep);
    rows
}

/// Counts one request of partner `org`; over its rate, refuses it.
async fn charge(ctx: &NodeContext, org: &OrgId, rpc: &str) -> Result<(), RpcError> {
    match ctx.quota.request(org, ctx.clock.now_ms()) {
        Ok(()) => Ok(()),
        Err(hit) => Err(over_limit(ctx, org, rpc, hit).await),
    }
}

/// The refusal of a request over one of `org`'s limits, put on the ledger
/// the first time in a minute.
async fn over_limit(ctx: &NodeContext, org: &OrgId, rpc: &str, hit: OverLimit) -> RpcError {
    if hit.record {
        tracing::warn!(partner = %org, setting = hit.setting, "{}", hit.detail);
        let row = AuditEntry::over_limit(org.as_str(), rpc, hit.setting, &hit.detail);
        if let Err(e) = ctx.store.append_audit(&[row]).await {
            tracing::warn!(error = %e, "could not record a limit hit");
        }
    }
    RpcError::OverLimit {
        setting: hit.setting,
        detail: hit.detail,
    }
}

/// How often an idle stream sends a heartbeat, and the heartbeat for a
/// stream at a cursor.
pub type Heartbeat<T> = (std::time::Duration, Box<dyn Fn(u64) -> T + Send + Sync>);

/// What resolves when its ledger records are written (a partner stream's
/// release records).
type ReleaseWritten = tokio::sync::oneshot::Receiver<Result<(), crate::store::StoreError>>;

/// Returns once a batch may leave: its rows on disk here (`rows`, when
/// they were read before their commit was synced) and its decisions on
/// record (`pending`); the status to end the stream with if either fails.
async fn cleared_to_send(
    rows: Option<crate::store::Unsynced>,
    pending: Option<ReleaseWritten>,
) -> Result<(), Status> {
    if let Some(rows) = rows {
        rows.synced().await.map_err(RpcError::Store)?;
    }
    let Some(pending) = pending else {
        return Ok(());
    };
    match pending.await {
        Ok(Ok(())) => Ok(()),
        // Nothing leaves unless its decision is on record.
        Ok(Err(e)) => Err(RpcError::Store(e).into()),
        Err(_) => Err(RpcError::ShuttingDown.into()),
    }
}

/// What a log stream hands its forwarder.
enum Forward<T> {
    /// A batch (or nothing to send), for partner streams what resolves
    /// when its ledger records are written, and, when its rows were read
    /// before their commit was on disk, what resolves once it is.
    Item(
        Option<T>,
        Option<ReleaseWritten>,
        Option<crate::store::Unsynced>,
    ),
    /// End the stream with this status.
    Fail(Status),
}

/// Indicators (origin, id) a partner was sent before.
pub type SentBefore = std::collections::HashSet<(String, String)>;

/// The Exchange service of one node.
pub struct ExchangeService {
    /// Shared node state.
    ctx: Arc<NodeContext>,
}

impl ExchangeService {
    /// A service over the node's context.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    async fn publish_inner(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<PublishResponse, RpcError> {
        let ctx = &self.ctx;
        let caller = authorize(&req, &ctx.own, Allowed::OwnPublisher, "Exchange/Publish")?;
        let deadline = Deadline::of(&req);
        let req = req.into_inner();
        let draft = req.indicator.ok_or(RpcError::Missing("indicator"))?;
        let key = publish_key(&req.idempotency_key, &draft)?;
        let mut published = publish_draft(ctx, &caller, draft, key, deadline).await?;
        if req.preview_recipients {
            published.recipients = recipients_of(ctx, &published.id).await?;
        }
        Ok(published)
    }
}

/// Which partners the current policies send our indicator `id` to (its
/// newest version), decided as the send path decides: for a publisher who
/// asked, so they know who will receive what they published.
async fn recipients_of(ctx: &NodeContext, id: &str) -> Result<Vec<RecipientPreview>, RpcError> {
    let row = ctx
        .store
        .indicator_by_id(id)
        .await?
        .ok_or_else(|| RpcError::NotFound(format!("indicator {id} is not in the log")))?;
    Ok(recipients(ctx, &row))
}

/// Which partners the current policies send `row` to: [`decide`] for
/// every partner with a bound policy, in partner order.
fn recipients(ctx: &NodeContext, row: &StoredIndicator) -> Vec<RecipientPreview> {
    let view = ctx.view.load();
    let now = ctx.clock.now_ms();
    let mut partners: Vec<_> = view.policies.iter().collect();
    partners.sort_by(|a, b| a.0.cmp(b.0));
    partners
        .into_iter()
        .filter_map(|(partner, policy)| {
            let (d, _) = decide(&ctx.own, row, partner, Some(policy), false, now)?;
            Some(RecipientPreview {
                partner: partner.to_string(),
                allow: d.is_allow(),
                rule: d.rule().to_string(),
                reason: d.reason().to_string(),
            })
        })
        .collect()
}

/// Publishes `draft` as our org for `caller` (one of our publishers): the
/// one path from a draft to a signed, stored version, for gRPC Publish and
/// TAXII POST alike. With an idempotency `key` used before, answers with
/// what it published then; past the caller's `deadline`, stores nothing.
pub async fn publish_draft(
    ctx: &NodeContext,
    caller: &crate::identity::SpiffeId,
    draft: IndicatorDraft,
    key: Option<PublishKey>,
    deadline: Option<Deadline>,
) -> Result<PublishResponse, RpcError> {
    // A retry: answer with what the first attempt published.
    if let Some(key) = &key
        && let Some(again) = ctx.store.published_under(&caller.to_string(), key).await?
    {
        return Ok(response(again, None));
    }
    sign_and_store(ctx, caller, draft, key, deadline).await
}

/// [`publish_draft`] once its key is known not to be a retry (the store
/// checks again as it commits, so a race stays a replay).
async fn sign_and_store(
    ctx: &NodeContext,
    caller: &crate::identity::SpiffeId,
    draft: IndicatorDraft,
    key: Option<PublishKey>,
    deadline: Option<Deadline>,
) -> Result<PublishResponse, RpcError> {
    let signer = ctx.signing.load_full();
    let ind = next_version(ctx, signer.key_id(), draft, ctx.clock.now_ms()).await?;
    let (id, version) = (ind.id.clone(), ind.version);
    let row = seal(&signer, ind);
    check_deadline(deadline)?;
    let appended = ctx
        .store
        .append_local(row, &caller.to_string(), key)
        .await?;
    let (seq, again) = match &appended {
        Appended::New(seq) => (*seq, false),
        Appended::Again { seq, .. } => (*seq, true),
    };
    tracing::debug!(publisher = %caller, %id, version, seq, again, "published");
    Ok(response(appended, Some((id, version))))
}

/// The version a draft becomes when we publish it at `now`: checked and
/// normalised, numbered (a new id, or the next version of one of ours),
/// and passing the same check every receiver applies. Not yet signed.
async fn next_version(
    ctx: &NodeContext,
    key_id: &str,
    draft: IndicatorDraft,
    now: i64,
) -> Result<Indicator, RpcError> {
    let d = prepare_draft(&draft, now)?;
    let (id, version, created) = if d.id.is_empty() {
        (uuid::Uuid::new_v4().to_string(), 1, now)
    } else {
        match ctx.store.latest_version(ctx.own.as_str(), &d.id).await? {
            Some((v, created)) => (d.id.clone(), v + 1, created),
            None => {
                return Err(RpcError::NotFound(format!(
                    "id: {} was never published by {}; omit id to publish a new indicator",
                    d.id, ctx.own
                )));
            }
        }
    };
    let ind = assemble(
        &ctx.own,
        key_id,
        Identity {
            id,
            version,
            created_unix_ms: created,
        },
        now,
        d,
    );
    validate_indicator(&ind, now)?;
    Ok(ind)
}

/// `ind` signed by our org: the row to store.
pub fn seal(signer: &crate::signing::OrgSigningKey, ind: Indicator) -> NewIndicator {
    let envelope = signer
        .seal(INDICATOR_PAYLOAD_TYPE, ind.encode_to_vec())
        .encode_to_vec();
    NewIndicator {
        indicator: ind,
        envelope,
        rule: "published-here",
        path: Vec::new(),
        upstream_seq: 0,
    }
}

/// Signs many versions on the blocking pool, split over the machine's
/// cores, so signing a large batch neither waits on one core nor holds up
/// the runtime's workers (the store's writer among them).
async fn seal_all(
    signer: Arc<crate::signing::OrgSigningKey>,
    inds: Vec<Indicator>,
) -> Result<Vec<NewIndicator>, RpcError> {
    let cores = crate::signing::cores();
    let per = inds.len().div_ceil(cores).max(1);
    let mut parts = Vec::new();
    let mut rest = inds.into_iter().peekable();
    while rest.peek().is_some() {
        let part: Vec<Indicator> = rest.by_ref().take(per).collect();
        let signer = signer.clone();
        parts.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|i| seal(&signer, i))
                .collect::<Vec<_>>()
        }));
    }
    let mut out = Vec::new();
    for part in parts {
        match part.await {
            Ok(rows) => out.extend(rows),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => return Err(RpcError::ShuttingDown),
        }
    }
    Ok(out)
}

/// Nobody waits for a publish past its caller's deadline: say so rather
/// than store it.
fn check_deadline(deadline: Option<Deadline>) -> Result<(), RpcError> {
    if deadline.is_some_and(|d| d.passed()) {
        return Err(RpcError::DeadlineExceeded(
            "the caller's deadline (grpc-timeout) passed before the publish was stored; \
             nothing was stored"
                .into(),
        ));
    }
    Ok(())
}

/// A Publish's idempotency key, checked (1-128 printable ASCII
/// characters), with the digest of the draft it is sent with; `None` when
/// the publisher sent none.
pub fn publish_key(key: &str, draft: &IndicatorDraft) -> Result<Option<PublishKey>, RpcError> {
    idempotency_key(key, || draft.encode_to_vec())
}

/// An idempotency key as publishers send them (1-128 printable ASCII
/// characters), with the digest of the `request` bytes it is sent with;
/// `None` when the key is empty. Publish and Sight alike.
pub fn idempotency_key(
    key: &str,
    request: impl FnOnce() -> Vec<u8>,
) -> Result<Option<PublishKey>, RpcError> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RpcError::BadRequest(
            "idempotency_key: must be 1-128 printable ASCII characters (no spaces)".into(),
        ));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &request());
    Ok(Some(PublishKey {
        key: key.to_string(),
        request_digest: digest.as_ref().to_vec(),
    }))
}

/// The answer to a Publish: what was stored now (`stored` the id and
/// version signed for it), or what an earlier attempt under the same key
/// stored.
fn response(appended: Appended, stored: Option<(String, u64)>) -> PublishResponse {
    match (appended, stored) {
        (Appended::New(seq), Some((id, version))) => PublishResponse {
            id,
            version,
            seq,
            replayed: false,
            ..Default::default()
        },
        (Appended::New(seq), None) => PublishResponse {
            seq,
            ..Default::default()
        },
        (Appended::Again { id, version, seq }, _) => PublishResponse {
            id,
            version,
            seq,
            replayed: true,
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl Exchange for ExchangeService {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        Ok(Response::new(self.publish_inner(req).await?))
    }

    async fn publish_batch(
        &self,
        req: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let ctx = &self.ctx;
        let caller = authorize(
            &req,
            &ctx.own,
            Allowed::OwnPublisher,
            "Exchange/PublishBatch",
        )?;
        let deadline = Deadline::of(&req);
        let items = req.into_inner().items;
        if items.len() > MAX_BATCH {
            return Err(RpcError::BadRequest(format!(
                "items: {} in one batch; at most {MAX_BATCH}",
                items.len()
            ))
            .into());
        }
        let previews: Vec<bool> = items.iter().map(|i| i.preview_recipients).collect();
        // The retries among them in one look-up, not one per item.
        let checked: Vec<Result<(IndicatorDraft, Option<PublishKey>), RpcError>> = items
            .into_iter()
            .map(|item| {
                let draft = item.indicator.ok_or(RpcError::Missing("indicator"))?;
                let key = publish_key(&item.idempotency_key, &draft)?;
                Ok((draft, key))
            })
            .collect();
        let keys: Vec<&PublishKey> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().and_then(|(_, k)| k.as_ref()))
            .collect();
        let publisher = caller.to_string();
        let mut again = ctx
            .store
            .published_under_many(&publisher, &keys)
            .await
            .map_err(RpcError::from)?;
        // The rest numbered (a look-up only for new versions of known
        // ids), signed on every core, and stored in one group commit.
        let signer = ctx.signing.load_full();
        let now = ctx.clock.now_ms();
        let mut outcomes: Vec<Option<Result<PublishResponse, RpcError>>> = Vec::new();
        let mut fresh: Vec<(usize, Option<PublishKey>)> = Vec::new();
        let versions = futures_util::future::join_all(checked.into_iter().map(|c| {
            let replay = c
                .as_ref()
                .ok()
                .and_then(|(_, k)| k.as_ref())
                .and_then(|k| again.remove(&k.key));
            let key_id = signer.key_id();
            async move {
                let (draft, key) = c?;
                match replay {
                    Some(r) => Ok(Err(response(r?, None))),
                    None => Ok(Ok((next_version(ctx, key_id, draft, now).await?, key))),
                }
            }
        }))
        .await;
        let mut inds = Vec::new();
        for (i, v) in versions.into_iter().enumerate() {
            outcomes.push(match v {
                Ok(Ok((ind, key))) => {
                    inds.push(ind);
                    fresh.push((i, key));
                    None
                }
                Ok(Err(replayed)) => Some(Ok(replayed)),
                Err(e) => Some(Err(e)),
            });
        }
        let rows = seal_all(signer, inds).await?;
        check_deadline(deadline)?;
        let ids: Vec<(String, u64)> = rows
            .iter()
            .map(|r| (r.indicator.id.clone(), r.indicator.version))
            .collect();
        let (slots, keys): (Vec<usize>, Vec<Option<PublishKey>>) = fresh.into_iter().unzip();
        let stored = ctx
            .store
            .append_local_many(rows.into_iter().zip(keys).collect(), &publisher)
            .await
            .map_err(RpcError::from)?;
        for ((slot, (id, version)), appended) in slots.into_iter().zip(ids).zip(stored) {
            outcomes[slot] = Some(
                appended
                    .map_err(RpcError::from)
                    .map(|a| response(a, Some((id, version)))),
            );
        }
        // Who receives each one, for the items that asked: their rows read
        // in one look-up, not one per item.
        let asking: Vec<&mut PublishResponse> = outcomes
            .iter_mut()
            .zip(previews)
            .filter_map(|(outcome, preview)| match outcome {
                Some(Ok(p)) if preview => Some(p),
                _ => None,
            })
            .collect();
        if !asking.is_empty() {
            let ids: Vec<&str> = asking.iter().map(|p| p.id.as_str()).collect();
            let rows = ctx
                .store
                .indicators_by_ids(&ids)
                .await
                .map_err(|e| Status::from(RpcError::from(e)))?;
            for p in asking {
                let row = rows.get(&p.id).ok_or_else(|| {
                    Status::from(RpcError::NotFound(format!(
                        "indicator {} is not in the log",
                        p.id
                    )))
                })?;
                p.recipients = recipients(ctx, row);
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|r| match r.expect("every item is decided") {
                Ok(p) => PublishOutcome {
                    published: Some(p),
                    code: 0,
                    message: String::new(),
                },
                Err(e) => {
                    let s = Status::from(e);
                    PublishOutcome {
                        published: None,
                        code: s.code() as u32,
                        message: s.message().to_string(),
                    }
                }
            })
            .collect();
        Ok(Response::new(PublishBatchResponse { outcomes }))
    }

    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let ctx = self.ctx.clone();
        let caller = authorize(&req, &ctx.own, Allowed::PartnerNode, "Exchange/Subscribe")?;
        charge(&ctx, &caller.org, "Exchange/Subscribe").await?;
        let slot = match ctx.quota.open_stream(&caller.org, ctx.clock.now_ms()) {
            Ok(slot) => slot,
            Err(hit) => {
                return Err(over_limit(&ctx, &caller.org, "Exchange/Subscribe", hit)
                    .await
                    .into());
            }
        };
        let req = req.into_inner();
        let latest = ctx.store.latest_seq().await.map_err(RpcError::from)?;
        // A cursor in another log (our store was restored or re-created
        // since) means nothing here: that subscriber reads from the start.
        let from = if !req.log_id.is_empty() && req.log_id != ctx.log_id {
            tracing::info!(partner = %caller.org, their = %req.log_id, ours = %ctx.log_id, "subscriber's cursor counts in another log; streaming from the start");
            0
        } else {
            req.from_cursor
        };
        if from > latest {
            return Err(RpcError::OutOfRange(format!(
                "from_cursor {from} is beyond this node's log (latest {latest}), in the same log: \
                 {}'s store was replaced without `threatmesh store restore` (which gives it a new log identity); \
                 its operator should run that, or ours `threatmesh peer reset-cursor`",
                ctx.own
            ))
            .into());
        }
        tracing::info!(partner = %caller.org, from, "subscription opened");
        let partner = caller.org;
        if let Some(why) = ctx.partner_refused(&partner) {
            return Err(RpcError::PartnerRefused(why).into());
        }
        let gate = ctx.clone();
        let heartbeat_ctx = ctx.clone();
        let check = (ctx.clone(), partner.clone());
        // The stream's slot is held by its reader and freed when it ends.
        let refused = move || {
            let _held = &slot;
            check
                .0
                .partner_refused(&check.1)
                .map(|why| RpcError::PartnerRefused(why).into())
        };
        let recipient = Some(partner.clone());
        // Card versions this stream has carried, per org.
        let mut cards_sent: std::collections::HashMap<String, u64> = Default::default();
        let stream = stream_log(
            ctx,
            from,
            true,
            recipient,
            refused,
            move |rows, last, before, resent| {
                let view = gate.view.load();
                let policy = view.policies.get(&partner).map(|p| p.as_ref());
                let known_cards = &view.cards;
                let now = gate.clock.now_ms();
                let mut deliveries = Vec::new();
                let mut cards = Vec::new();
                let mut audit = Vec::with_capacity(rows.len());
                let mut sent = Vec::new();
                for r in rows {
                    // Only revocations are looked up (see `stream_log`).
                    let sent_before = r.revoked
                        && before.contains(&(r.origin_org.clone(), r.indicator_id.clone()));
                    match release(&gate.own, r, &partner, policy, sent_before, now) {
                        Release::Skip => {}
                        Release::Send(d, entry) => {
                            // The origin's card travels with its first
                            // indicator on this stream, and again whenever
                            // we hold a newer one.
                            if let Ok(origin) = OrgId::parse(&r.origin_org)
                                && let Some((version, card)) = known_cards.get(&origin)
                                && cards_sent.get(&r.origin_org).is_none_or(|v| v < version)
                            {
                                cards_sent.insert(r.origin_org.clone(), *version);
                                cards.push(card.as_ref().clone());
                            }
                            deliveries.push(d);
                            audit.push(entry);
                            sent.push((r.origin_org.clone(), r.indicator_id.clone(), r.version));
                        }
                        Release::Withhold(entry) => audit.push(entry),
                    }
                }
                // A resend pass with nothing allowed sends nothing.
                if resent && deliveries.is_empty() {
                    return (None, crate::audit::coalesce(audit), sent);
                }
                let response = SubscribeResponse {
                    deliveries,
                    cursor: last,
                    latest: gate.store.latest_known().max(last),
                    cards,
                    log_id: gate.log_id.clone(),
                    sent_unix_ms: gate.clock.now_ms(),
                    resent,
                };
                (Some(response), crate::audit::coalesce(audit), sent)
            },
            Some((
                std::time::Duration::from_millis(heartbeat_ctx.settings.federation.heartbeat_ms),
                Box::new(move |cursor| SubscribeResponse {
                    deliveries: Vec::new(),
                    cursor,
                    latest: heartbeat_ctx.store.latest_known().max(cursor),
                    cards: Vec::new(),
                    log_id: heartbeat_ctx.log_id.clone(),
                    sent_unix_ms: heartbeat_ctx.clock.now_ms(),
                    resent: false,
                }),
            )),
        );
        Ok(Response::new(stream))
    }

    async fn get_card(
        &self,
        req: Request<GetCardRequest>,
    ) -> Result<Response<GetCardResponse>, Status> {
        let caller = authorize(&req, &self.ctx.own, Allowed::Anyone, "Exchange/GetCard")?;
        if caller.org != self.ctx.own {
            charge(&self.ctx, &caller.org, "Exchange/GetCard").await?;
        }
        Ok(Response::new(GetCardResponse {
            card: Some(self.ctx.card.load().as_ref().clone()),
        }))
    }

    async fn get_ledger_head(
        &self,
        req: Request<GetLedgerHeadRequest>,
    ) -> Result<Response<GetLedgerHeadResponse>, Status> {
        let ctx = &self.ctx;
        let caller = authorize(
            &req,
            &ctx.own,
            Allowed::PartnerNode,
            "Exchange/GetLedgerHead",
        )?;
        charge(ctx, &caller.org, "Exchange/GetLedgerHead").await?;
        let asked = req.into_inner().witnessed_rows;
        // Head and the asked row's hash from one transaction. A row we no
        // longer have answers with an empty hash: the caller sees the
        // ledger lost it.
        let (head, at) = ctx
            .store
            .ledger_head_at(asked)
            .await
            .map_err(RpcError::from)?;
        let at = if asked <= head.rows {
            at.unwrap_or_default()
        } else {
            Vec::new()
        };
        let env = crate::audit::witness::seal_head(
            &ctx.signing.load(),
            &ctx.own,
            head,
            (asked, at),
            ctx.clock.now_ms(),
        );
        Ok(Response::new(GetLedgerHeadResponse { head: Some(env) }))
    }

    async fn sight(
        &self,
        req: Request<crate::proto::v1::SightRequest>,
    ) -> Result<Response<crate::proto::v1::SightResponse>, Status> {
        let ctx = &self.ctx;
        let caller = authorize(&req, &ctx.own, Allowed::OwnPublisher, "Exchange/Sight")?;
        let answer = crate::sightings::sight(ctx, &caller.to_string(), req.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn report_sightings(
        &self,
        req: Request<crate::proto::v1::ReportSightingsRequest>,
    ) -> Result<Response<crate::proto::v1::ReportSightingsResponse>, Status> {
        let ctx = &self.ctx;
        let caller = authorize(
            &req,
            &ctx.own,
            Allowed::PartnerNode,
            "Exchange/ReportSightings",
        )?;
        charge(ctx, &caller.org, "Exchange/ReportSightings").await?;
        if let Some(why) = ctx.partner_refused(&caller.org) {
            return Err(RpcError::PartnerRefused(why).into());
        }
        let answer = crate::sightings::receive(ctx, &caller.org, req.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn share_statistics(
        &self,
        req: Request<crate::proto::v1::ShareStatisticsRequest>,
    ) -> Result<Response<crate::proto::v1::ShareStatisticsResponse>, Status> {
        let ctx = &self.ctx;
        let caller = authorize(
            &req,
            &ctx.own,
            Allowed::PartnerNode,
            "Exchange/ShareStatistics",
        )?;
        charge(ctx, &caller.org, "Exchange/ShareStatistics").await?;
        if let Some(why) = ctx.partner_refused(&caller.org) {
            return Err(RpcError::PartnerRefused(why).into());
        }
        let answer = crate::statistics::receive(ctx, &caller.org, req.into_inner()).await?;
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch leaves only once its rows are on disk here and its release
    /// records are written: the check returns after the rows' sync (the
    /// log then has nothing unsynced), and ends the stream, sending
    /// nothing, when the sync fails, the records failed, or the writer
    /// stopped.
    #[tokio::test]
    async fn a_batch_is_cleared_to_leave_only_once_its_rows_are_on_disk_and_its_release_recorded() {
        let dir = crate::store::scratch_dir("cleared");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("store.db-wal"), b"frames").unwrap();
        let answered = |r: Result<(), crate::store::StoreError>| {
            let (done, written) = tokio::sync::oneshot::channel();
            done.send(r).unwrap();
            written
        };
        let rows = crate::store::Unsynced::of_log_at(&dir.join("store.db"));
        let on_disk = rows.on_disk_probe();
        assert!(!on_disk());
        cleared_to_send(Some(rows), Some(answered(Ok(()))))
            .await
            .unwrap();
        assert!(on_disk(), "cleared only after the rows' sync");
        // A log that cannot be synced (its directory is a file).
        let broken = crate::store::Unsynced::of_log_at(&dir.join("store.db-wal").join("x"));
        let e = cleared_to_send(Some(broken), Some(answered(Ok(()))))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
        let e = cleared_to_send(
            None,
            Some(answered(Err(crate::store::StoreError::Database(
                "x".into(),
            )))),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
        let (done, written) = tokio::sync::oneshot::channel();
        drop(done);
        let e = cleared_to_send(None, Some(written)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn replies_shrink_as_streams_open_between_the_floor_and_the_cap() {
        let all = 32 << 20;
        // Few streams: the fixed cap, or half the message limit if smaller.
        assert_eq!(reply_budget(4 << 20, all, 0), REPLY_BYTES);
        assert_eq!(reply_budget(4 << 20, all, 10), REPLY_BYTES);
        assert_eq!(reply_budget(256 << 10, all, 1), 128 << 10);
        // Many: a share of the node-wide bytes...
        assert_eq!(reply_budget(4 << 20, all, 1000), all / 1000);
        // ...never below the floor.
        assert_eq!(reply_budget(4 << 20, all, 100_000), MIN_REPLY_BYTES);
    }
}
