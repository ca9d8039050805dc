//! Health of the outbound partner links: written by the links, read by
//! `Status`.

use std::collections::HashMap;

use crate::clock::Clock;
use crate::model::OrgId;

/// The state of an outbound link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Dialling and subscribing.
    Connecting,
    /// Subscribed and receiving.
    Connected,
    /// The last attempt failed; a retry is scheduled.
    Down,
    /// Another replica of this node (sharing its PostgreSQL store) dials
    /// this partner; this one takes over if that one stops.
    Standby,
}

impl LinkState {
    /// The name shown by `threatmesh status`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Down => "down",
            LinkState::Standby => "standby",
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
    /// When that was (Unix ms; 0 = never).
    pub last_error_ms: i64,
    /// The delay before the last retry (ms; 0 = none yet): it grows while
    /// the link keeps failing, and starts over once it works.
    pub retry_in_ms: u64,
    /// How far the partner's clock is ahead of ours (ms; negative: behind),
    /// once a message has said.
    pub clock_offset_ms: Option<i64>,
    /// When that estimate was taken (our clock, Unix ms).
    pub clock_offset_at_ms: i64,
}

/// How long an offset estimate stands against later, larger-looking
/// differences: a message that waited in buffers looks as if its sender's
/// clock were behind, so the least delayed sample of a while is kept.
const CLOCK_SAMPLE_KEPT_MS: i64 = 30_000;

impl LinkHealth {
    /// Takes one sample of the partner's clock: a message it sent at
    /// `sent_ms` (its clock) arrived at `now_ms` (ours).
    fn sample_clock(&mut self, sent_ms: i64, now_ms: i64) {
        let sample = sent_ms.saturating_sub(now_ms);
        let stale = now_ms.saturating_sub(self.clock_offset_at_ms) > CLOCK_SAMPLE_KEPT_MS;
        if self.clock_offset_ms.is_none_or(|o| sample >= o || stale) {
            self.clock_offset_ms = Some(sample);
            self.clock_offset_at_ms = now_ms;
        }
    }

    /// Whether the last error is history: the link has been connected since.
    pub fn error_is_past(&self) -> bool {
        self.state == LinkState::Connected && self.last_error_ms <= self.since_ms
    }
}

/// What an operator should know about `partner`'s clock being `offset_ms`
/// ahead of ours (negative: behind), when that is more than `warn_ms`.
pub fn clock_warning(partner: &OrgId, offset_ms: i64, warn_ms: u64) -> Option<String> {
    if offset_ms.unsigned_abs() <= warn_ms {
        return None;
    }
    let secs = offset_ms.unsigned_abs() / 1000;
    let (way, then) = if offset_ms > 0 {
        (
            "ahead of ours",
            "its indicators dated more than 5 minutes ahead of our clock wait in quarantine until our clock reaches them",
        )
    } else {
        (
            "behind ours",
            "ours are dated ahead of its clock and wait at its node",
        )
    };
    Some(format!(
        "{partner}'s clock is {}m{:02}s {way}: {then}; check NTP on both nodes",
        secs / 60,
        secs % 60
    ))
}

/// Outbound link health by partner.
#[derive(Debug)]
pub struct LinkBoard {
    links: std::sync::Mutex<HashMap<OrgId, LinkHealth>>,
    /// Per partner: tells its link to end its session and subscribe again
    /// (after an operator reset its cursor).
    restarts: std::sync::Mutex<HashMap<OrgId, std::sync::Arc<tokio::sync::Notify>>>,
    clock: Clock,
}

impl LinkBoard {
    /// An empty board stamping times from `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            links: Default::default(),
            restarts: Default::default(),
            clock,
        }
    }

    fn with(&self, org: &OrgId, f: impl FnOnce(&mut LinkHealth)) {
        let mut map = self.links.lock().expect("not poisoned");
        let h = map.entry(org.clone()).or_insert(LinkHealth {
            state: LinkState::Connecting,
            since_ms: self.clock.now_ms(),
            last_message_ms: 0,
            upstream_latest: 0,
            last_error: String::new(),
            last_error_ms: 0,
            retry_in_ms: 0,
            clock_offset_ms: None,
            clock_offset_at_ms: 0,
        });
        f(h);
    }

    /// Moves `org`'s link to `state`, recording `error` as its last error.
    pub fn set_state(&self, org: &OrgId, state: LinkState, error: Option<String>) {
        let now = self.clock.now_ms();
        self.with(org, |h| {
            if h.state != state {
                h.state = state;
                h.since_ms = now;
            }
            if let Some(e) = error {
                h.last_error = e;
                h.last_error_ms = now;
            }
        });
    }

    /// Records the delay before `org`'s link tries again.
    pub fn set_retry(&self, org: &OrgId, retry_in_ms: u64) {
        self.with(org, |h| h.retry_in_ms = retry_in_ms);
    }

    /// Records a message from `org` reporting its latest sequence number,
    /// sent at `sent_ms` by its clock (0: it did not say). Returns the
    /// partner's clock offset as estimated now.
    pub fn message(&self, org: &OrgId, upstream_latest: u64, sent_ms: i64) -> Option<i64> {
        let now = self.clock.now_ms();
        let mut offset = None;
        self.with(org, |h| {
            h.last_message_ms = now;
            h.upstream_latest = upstream_latest;
            if sent_ms > 0 {
                h.sample_clock(sent_ms, now);
            }
            offset = h.clock_offset_ms;
        });
        offset
    }

    /// What `org`'s link waits on to subscribe again.
    pub fn restart_signal(&self, org: &OrgId) -> std::sync::Arc<tokio::sync::Notify> {
        self.restarts
            .lock()
            .expect("not poisoned")
            .entry(org.clone())
            .or_default()
            .clone()
    }

    /// Asks `org`'s link to end its session and subscribe again (at once if
    /// it is receiving, else at its next session).
    pub fn restart(&self, org: &OrgId) {
        self.restart_signal(org).notify_one();
    }

    /// Forgets `org`'s link (it was stopped).
    pub fn remove(&self, org: &OrgId) {
        self.links.lock().expect("not poisoned").remove(org);
    }

    /// A copy of every link's health.
    pub fn snapshot(&self) -> HashMap<OrgId, LinkHealth> {
        self.links.lock().expect("not poisoned").clone()
    }
}
