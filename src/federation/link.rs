//! One outbound partner link: dial, subscribe from the committed cursor,
//! verify each message, and hand batches to a writer that commits rows,
//! refusals, quarantined envelopes and the cursor in one transaction.
//! Reconnects with capped, jittered exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::verify::{admit_checked, verify_all};
use crate::context::{LinkState, NodeContext, clock_warning};
use crate::identity::{SpiffeId, client_config};
use crate::model::OrgId;
use crate::proto::v1::SubscribeRequest;
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::refusal::Wait;
use crate::rpc::SHUTTING_DOWN;
use crate::store::{NewIndicator, OrgPath, PeerRecord, Quarantined, Rejection};

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
    #[error("lost the lease on this link (the database connection holding it broke)")]
    LeaseLost,
}

/// Capped exponential backoff with jitter, so links that failed together
/// (a partner restarting) do not all retry in the same instant.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starting at `min_ms`, doubling up to `max_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        let min = Duration::from_millis(min_ms);
        Self {
            min,
            max: Duration::from_millis(max_ms),
            next: min,
        }
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay's ceiling; each call doubles it up to the cap.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// The next delay with jitter: uniformly between half and all of
    /// [`Backoff::step`].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.step();
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=spread))
    }
}

/// Runs one partner link until `stop` turns true.
pub(super) async fn run_link(ctx: Arc<NodeContext>, peer: PeerRecord, stop: CancellationToken) {
    let f = &ctx.settings.federation;
    let mut backoff = Backoff::new(f.reconnect_min_ms, f.reconnect_max_ms);
    let mut lease = None;
    loop {
        // Replicas sharing a PostgreSQL store: one dials, the others wait
        // to take over.
        let held = match lease.take() {
            Some(held) => held,
            None => match take_lease(&ctx, &peer, &stop).await {
                Some(held) => held,
                None => {
                    ctx.links.remove(&peer.org);
                    return;
                }
            },
        };
        ctx.links.set_state(&peer.org, LinkState::Connecting, None);
        let ended = tokio::select! {
            r = session(&ctx, &peer, &mut backoff) => r,
            _ = held.lost() => Err(LinkError::LeaseLost),
            _ = stop.cancelled() => {
                ctx.links.remove(&peer.org);
                return;
            }
        };
        if !matches!(ended, Err(LinkError::LeaseLost)) {
            lease = Some(held);
        }
        if stop.is_cancelled() {
            ctx.links.remove(&peer.org);
            return;
        }
        let reason = match &ended {
            Ok(()) => "subscription ended by the partner".to_string(),
            Err(e) => e.to_string(),
        };
        ctx.links
            .set_state(&peer.org, LinkState::Down, Some(reason));
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        ctx.links.set_retry(&peer.org, retry_in_ms);
        match ended {
            Ok(()) => {
                tracing::info!(partner = %peer.org, "subscription ended by partner; reconnecting")
            }
            Err(LinkError::Status(s))
                if s.code() == Code::Unavailable && s.message() == SHUTTING_DOWN =>
            {
                tracing::info!(partner = %peer.org, retry_in_ms, "partner node is shutting down")
            }
            Err(e) => tracing::warn!(
                partner = %peer.org, endpoint = %peer.endpoint, error = %e,
                retry_in_ms, "partner link down"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {
                ctx.links.remove(&peer.org);
                return;
            }
        }
    }
}

/// Waits until this replica holds the lease on dialling `peer` (at once,
/// with SQLite); `None` once `stop` is cancelled.
async fn take_lease(
    ctx: &Arc<NodeContext>,
    peer: &PeerRecord,
    stop: &CancellationToken,
) -> Option<crate::store::LinkLease> {
    // How soon a standby replica notices that the one dialling has gone.
    let retry = Duration::from_millis(ctx.settings.federation.reconnect_min_ms.clamp(100, 1000));
    let mut told = false;
    loop {
        match ctx.store.lease_link(&peer.org).await {
            Ok(Some(lease)) => {
                if told {
                    tracing::info!(partner = %peer.org, "took over the link from another replica");
                }
                return Some(lease);
            }
            Ok(None) => {
                if !told {
                    tracing::info!(partner = %peer.org, "another replica dials this partner; standing by");
                    ctx.links.set_state(&peer.org, LinkState::Standby, None);
                    told = true;
                }
            }
            Err(e) => {
                tracing::warn!(partner = %peer.org, error = %e, "cannot take the link lease");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.cancelled() => return None,
        }
    }
}

async fn session(
    ctx: &Arc<NodeContext>,
    peer: &PeerRecord,
    backoff: &mut Backoff,
) -> Result<(), LinkError> {
    // The node certificate current now: a rotated one is used from the next connect.
    let client = ctx.tls.cert.load_full();
    let tls = client_config(ctx.trust(), SpiffeId::node(&peer.org), Some(&client))?;
    let channel = crate::net::mtls_channel_with(
        &peer.endpoint,
        peer.org.as_str(),
        tls,
        crate::net::Keepalive::from_settings(&ctx.settings.node),
    )?;
    let mut exchange = ExchangeClient::new(channel)
        .max_decoding_message_size(ctx.settings.limits.max_message_bytes);
    let (log_id, cursor) = ctx.store.cursor_in(&peer.org).await?;
    let mut stream = exchange
        .subscribe(SubscribeRequest {
            from_cursor: cursor,
            log_id: log_id.clone(),
        })
        .await?
        .into_inner();
    tracing::info!(partner = %peer.org, from = cursor, "subscribed");
    ctx.links.set_state(&peer.org, LinkState::Connected, None);
    // Verified batches are committed by a writer task, several at a time
    // when they queue up, while the next message is verified.
    let (commits, pending) = tokio::sync::mpsc::channel::<Batch>(4);
    // Set by the writer after each commit: the backoff starts over only once
    // the link has really worked (received *and* stored), so a link whose
    // own store fails backs off instead of retrying at the shortest delay.
    let progress = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = ctx.tasks.spawn(commit_batches(
        ctx.clone(),
        peer.org.clone(),
        pending,
        progress.clone(),
    ));
    let ended = receive(
        ctx,
        peer,
        (&mut stream, exchange),
        (log_id, cursor),
        &commits,
        (backoff, &progress),
    )
    .await;
    drop(commits);
    let committed = writer
        .await
        .map_err(|e| LinkError::Protocol(format!("commit task: {e}")))?;
    if progress.load(std::sync::atomic::Ordering::Relaxed) {
        backoff.reset();
    }
    ended.and(committed)
}

/// One verified Subscribe message, ready to commit.
#[derive(Default)]
struct Batch {
    rows: Vec<NewIndicator>,
    refused: Vec<Rejection>,
    quarantined: Vec<Quarantined>,
    /// The log the cursor counts in (one per session).
    log_id: String,
    cursor: u64,
}

/// Commits batches in order, merging those that queued up into one
/// transaction (one fsync). Envelopes just put in quarantine whose key has
/// arrived meanwhile (a card on a later message, learnt while this batch
/// waited to commit) are released at once.
async fn commit_batches(
    ctx: Arc<NodeContext>,
    upstream: OrgId,
    mut pending: tokio::sync::mpsc::Receiver<Batch>,
    progress: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), LinkError> {
    let mut queued = Vec::new();
    while pending.recv_many(&mut queued, 16).await > 0 {
        let mut merged = Batch::default();
        for b in queued.drain(..) {
            merged.rows.extend(b.rows);
            merged.refused.extend(b.refused);
            merged.quarantined.extend(b.quarantined);
            merged.cursor = merged.cursor.max(b.cursor);
            merged.log_id = b.log_id;
        }
        if !merged.quarantined.is_empty() {
            let used = ctx.store.quarantine_usage(&upstream).await?;
            let f = &ctx.settings.federation;
            let share = super::quarantine::Share {
                used,
                max_rows: f.quarantine_max_per_partner,
                max_bytes: f.quarantine_max_bytes_per_partner,
            };
            let (kept, over) = super::quarantine::within_share(
                &upstream,
                std::mem::take(&mut merged.quarantined),
                share,
            );
            merged.quarantined = kept;
            if let Some(r) = over {
                tracing::warn!(partner = %upstream, reason = %r.refusal.reason, "quarantine share used up");
                merged.refused.push(r);
            }
        }
        let out = ctx
            .store
            .ingest_batch(
                &upstream,
                &merged.rows,
                &merged.refused,
                &merged.quarantined,
                (&merged.log_id, merged.cursor),
                ctx.settings.federation.refusals_kept(),
            )
            .await?;
        progress.store(true, std::sync::atomic::Ordering::Relaxed);
        if out.stored + out.rejected + out.quarantined > 0 {
            tracing::debug!(
                partner = %upstream, stored = out.stored, duplicates = out.duplicates,
                rejected = out.rejected, quarantined = out.quarantined, cursor = merged.cursor,
                "batch committed"
            );
        }
        if out.quarantined > 0 {
            super::quarantine::release_if_keys_known(&ctx).await?;
        }
    }
    Ok(())
}

/// Receives, checks and hands batches to the writer until the stream ends.
async fn receive(
    ctx: &NodeContext,
    peer: &PeerRecord,
    (stream, mut client): (
        &mut tonic::Streaming<crate::proto::v1::SubscribeResponse>,
        ExchangeClient<tonic::transport::Channel>,
    ),
    (mut log_id, mut cursor): (String, u64),
    commits: &tokio::sync::mpsc::Sender<Batch>,
    (backoff, progress): (&mut Backoff, &std::sync::atomic::AtomicBool),
) -> Result<(), LinkError> {
    // The partner's ledger head is asked for at once, then at intervals.
    let mut witness = tokio::time::interval(std::time::Duration::from_millis(
        ctx.settings.federation.witness_interval_ms,
    ));
    witness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    // Sightings waiting for this partner go when queued, and are retried
    // at intervals.
    let mut sightings = tokio::time::interval(std::time::Duration::from_millis(
        ctx.settings.federation.sightings_interval_ms,
    ));
    sightings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queued = ctx.sightings_queued.subscribe();
    // Statistics reports are offered at once, then at intervals.
    let mut statistics = tokio::time::interval(std::time::Duration::from_millis(
        ctx.settings.federation.statistics_interval_ms,
    ));
    statistics.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut offered = crate::statistics::push::Offered::default();
    let mut clock_warned = false;
    let restart = ctx.links.restart_signal(&peer.org);
    loop {
        let msg = tokio::select! {
            _ = restart.notified() => {
                return Err(LinkError::Protocol(
                    "our cursor was reset by an operator; subscribing again".into(),
                ));
            }
            msg = stream.message() => match msg? {
                Some(msg) => msg,
                None => break,
            },
            _ = witness.tick() => {
                super::witness::witness(ctx, &peer.org, &mut client, &mut reported).await?;
                continue;
            }
            _ = statistics.tick() => {
                crate::statistics::push::push(ctx, &peer.org, &mut client, &mut offered).await?;
                continue;
            }
            _ = sightings.tick() => {
                crate::sightings::push::push(ctx, &peer.org, &mut client).await?;
                continue;
            }
            Ok(()) = queued.changed() => {
                queued.mark_unchanged();
                crate::sightings::push::push(ctx, &peer.org, &mut client).await?;
                continue;
            }
        };
        let offset = ctx
            .links
            .message(&peer.org, msg.latest.max(msg.cursor), msg.sent_unix_ms);
        if !clock_warned
            && let Some(why) = offset.and_then(|o| {
                clock_warning(&peer.org, o, ctx.settings.federation.clock_offset_warn_ms)
            })
        {
            tracing::warn!(partner = %peer.org, "{why}");
            clock_warned = true;
        }
        // The partner's log is another than our cursor counted in (its
        // store was restored or re-created): it streams from the start, and
        // our cursor starts again. Only the first message can say so: a
        // node's log does not change while it serves.
        if !msg.log_id.is_empty() && msg.log_id != log_id {
            let why = "its store was restored or re-created; reading its log again from the start";
            let was = std::mem::replace(&mut log_id, msg.log_id.clone());
            cursor = ctx.store.adopt_log(&peer.org, &msg.log_id, why).await?;
            if !was.is_empty() {
                tracing::warn!(partner = %peer.org, was = %was, now = %log_id, "partner's log changed; {why}");
                ctx.links.set_state(
                    &peer.org,
                    LinkState::Connected,
                    Some(format!("partner's log changed ({was} -> {log_id}): {why}")),
                );
            }
        }
        if msg.cursor < cursor {
            return Err(LinkError::Protocol(format!(
                "{} moved the cursor back from {cursor} to {}",
                peer.org, msg.cursor
            )));
        }
        // A heartbeat: nothing to store, the cursor unchanged; the link
        // works.
        if msg.deliveries.is_empty() && msg.cards.is_empty() && msg.cursor == cursor {
            backoff.reset();
            continue;
        }
        // Cards first: they may carry the keys the deliveries need.
        let learned = super::cards::learn_cards(ctx, &msg.cards, &peer.org).await?;
        if learned {
            super::apply_trust_change(ctx)
                .await
                .map_err(|e| LinkError::Protocol(format!("reloading keys: {e}")))?;
        }
        if msg.resent {
            // Rows offered again after a policy change at the partner
            // (`peer resend`): older than our cursor, which stays.
            if msg.cursor != cursor {
                return Err(LinkError::Protocol(format!(
                    "{} resent rows with cursor {} instead of leaving it at {cursor}",
                    peer.org, msg.cursor
                )));
            }
            let mut prev = 0;
            for d in &msg.deliveries {
                if d.seq <= prev || d.seq > cursor {
                    return Err(LinkError::Protocol(format!(
                        "{} resent seq {} outside ({prev}, {cursor}]",
                        peer.org, d.seq
                    )));
                }
                prev = d.seq;
            }
        } else {
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
        }
        let view = ctx.view.load_full();
        let checked = verify_all(
            &ctx.own,
            &peer.org,
            msg.deliveries,
            view.keys.clone(),
            ctx.clock.now_ms(),
        )
        .await
        .map_err(|e| LinkError::Protocol(format!("verify task: {e}")))?;
        let policy = view.policies.get(&peer.org).map(|p| p.as_ref());
        let mut batch = Batch {
            rows: Vec::with_capacity(checked.len()),
            log_id: log_id.clone(),
            cursor: msg.cursor,
            ..Batch::default()
        };
        for (d, verified) in checked {
            let Some(admitted) = admit_checked(ctx, &peer.org, verified, policy).await? else {
                continue;
            };
            match admitted {
                Ok(row) => batch.rows.push(row),
                Err(r) => match r.waits() {
                    Some(wait) => {
                        let (key_id, due_ms) = match wait {
                            Wait::Key(key_id) => {
                                tracing::info!(partner = %peer.org, seq = d.seq, key = %key_id, "signing key unknown; envelope quarantined");
                                (key_id, 0)
                            }
                            Wait::Clock { key_id, due_ms } => {
                                tracing::warn!(partner = %peer.org, seq = d.seq, reason = %r.reason, "envelope dated ahead of our clock; held until it is due");
                                (key_id, due_ms)
                            }
                        };
                        batch.quarantined.push(Quarantined {
                            upstream_seq: d.seq,
                            key_id: key_id.to_string(),
                            due_ms,
                            envelope: d.envelope.to_vec(),
                            path: OrgPath(d.path),
                        });
                    }
                    None => {
                        tracing::warn!(
                            partner = %peer.org, seq = d.seq, kind = %r.kind, reason = %r.reason,
                            "envelope refused"
                        );
                        ctx.metrics
                            .count_refusal(peer.org.as_str(), r.kind.as_str());
                        batch.refused.push(Rejection {
                            upstream_seq: d.seq,
                            refusal: r,
                            envelope: d.envelope.to_vec(),
                        });
                    }
                },
            }
        }
        if commits.send(batch).await.is_err() {
            // The writer stopped on an error; the session reports it.
            return Ok(());
        }
        cursor = msg.cursor;
        if progress.swap(false, std::sync::atomic::Ordering::Relaxed) {
            backoff.reset();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(100, 700);
        let steps: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [100, 200, 400, 700, 700]);
        b.reset();
        assert_eq!(b.step().as_millis(), 100);
    }

    /// The jittered delays, slept on tokio's paused clock, stay between half
    /// and all of each ceiling, and the whole sequence takes what they add
    /// up to — no real time passes.
    #[tokio::test(start_paused = true)]
    async fn jittered_backoff_sleeps_between_half_and_the_full_ceiling() {
        let mut b = Backoff::new(100, 700);
        let ceilings = [100u64, 200, 400, 700, 700, 700];
        let start = tokio::time::Instant::now();
        let mut total = Duration::ZERO;
        for c in ceilings {
            let d = b.next_delay();
            let c = Duration::from_millis(c);
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            tokio::time::sleep(d).await;
            total += d;
        }
        assert_eq!(start.elapsed(), total);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
