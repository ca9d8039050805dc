//! What one partner may use of this node at a time: open Subscribe streams
//! and a request rate. Pure bookkeeping (the caller passes the time); the
//! services refuse with `limit-reached` and put one ledger row per partner
//! and limit per minute on record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::OrgId;

/// How often, at most, a limit hit by one partner is put on the ledger.
const RECORD_EVERY_MS: i64 = 60_000;

/// A partner went over one of its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// The setting that bounds it, e.g. `limits.max_streams_per_partner`.
    pub setting: &'static str,
    /// What was exceeded, for the partner's operator and the ledger.
    pub detail: String,
    /// Whether this hit should go on the ledger (the first in a minute).
    pub record: bool,
}

/// Per-partner streams and request rate.
pub struct PartnerQuota {
    /// Most Subscribe streams one partner may hold open.
    max_streams: usize,
    /// Sustained requests per second per partner; bursts of twice that.
    per_second: u32,
    inner: Arc<Mutex<Usage>>,
}

#[derive(Default)]
struct Usage {
    streams: HashMap<OrgId, usize>,
    /// Streams of every partner.
    all_streams: usize,
    buckets: HashMap<OrgId, Bucket>,
    /// When each (partner, setting) hit was last put on the ledger.
    recorded: HashMap<(OrgId, &'static str), i64>,
}

/// A token bucket, in thousandths of a request so refill needs no floats.
struct Bucket {
    milli_tokens: u64,
    at_ms: i64,
}

/// An open Subscribe stream of one partner; the count drops with it.
pub struct StreamSlot {
    org: OrgId,
    inner: Arc<Mutex<Usage>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut u = self.inner.lock().expect("not poisoned");
        u.all_streams = u.all_streams.saturating_sub(1);
        if let Some(n) = u.streams.get_mut(&self.org) {
            *n -= 1;
            if *n == 0 {
                u.streams.remove(&self.org);
            }
        }
    }
}

impl PartnerQuota {
    /// A quota of `max_streams` open streams and `per_second` requests per
    /// partner.
    pub fn new(max_streams: usize, per_second: u32) -> Self {
        Self {
            max_streams,
            per_second,
            inner: Arc::default(),
        }
    }

    /// Counts one request of `org` at `now_ms`.
    pub fn request(&self, org: &OrgId, now_ms: i64) -> Result<(), OverLimit> {
        let mut u = self.inner.lock().expect("not poisoned");
        let rate = u64::from(self.per_second);
        let cap = rate * 2 * 1000;
        let b = u.buckets.entry(org.clone()).or_insert(Bucket {
            milli_tokens: cap,
            at_ms: now_ms,
        });
        let elapsed = u64::try_from(now_ms - b.at_ms).unwrap_or(0);
        b.milli_tokens = (b.milli_tokens + elapsed * rate).min(cap);
        b.at_ms = b.at_ms.max(now_ms);
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            return Ok(());
        }
        let detail = format!(
            "{org} is over {} requests per second (burst {})",
            self.per_second,
            self.per_second * 2
        );
        Err(over(
            &mut u,
            org,
            "limits.partner_requests_per_second",
            detail,
            now_ms,
        ))
    }

    /// Opens a Subscribe stream for `org`, if it holds fewer than the limit.
    pub fn open_stream(&self, org: &OrgId, now_ms: i64) -> Result<StreamSlot, OverLimit> {
        let mut u = self.inner.lock().expect("not poisoned");
        let n = u.streams.entry(org.clone()).or_default();
        if *n >= self.max_streams {
            let detail = format!(
                "{org} already has {} Subscribe streams open (the most one partner may hold)",
                self.max_streams
            );
            return Err(over(
                &mut u,
                org,
                "limits.max_streams_per_partner",
                detail,
                now_ms,
            ));
        }
        *n += 1;
        u.all_streams += 1;
        Ok(StreamSlot {
            org: org.clone(),
            inner: self.inner.clone(),
        })
    }

    /// Subscribe streams open now, of every partner.
    pub fn all_streams(&self) -> usize {
        self.inner.lock().expect("not poisoned").all_streams
    }

    /// Streams `org` holds open now.
    pub fn streams(&self, org: &OrgId) -> usize {
        let u = self.inner.lock().expect("not poisoned");
        u.streams.get(org).copied().unwrap_or(0)
    }
}

fn over(
    u: &mut Usage,
    org: &OrgId,
    setting: &'static str,
    detail: String,
    now_ms: i64,
) -> OverLimit {
    let last = u.recorded.entry((org.clone(), setting)).or_insert(i64::MIN);
    let record = now_ms.saturating_sub(*last) >= RECORD_EVERY_MS;
    if record {
        *last = now_ms;
    }
    OverLimit {
        setting,
        detail,
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    #[test]
    fn requests_refill_at_the_rate_and_burst_to_twice_it() {
        let q = PartnerQuota::new(1, 5);
        let a = org("a.example");
        for _ in 0..10 {
            q.request(&a, 0).unwrap();
        }
        let hit = q.request(&a, 0).unwrap_err();
        assert_eq!(hit.setting, "limits.partner_requests_per_second");
        assert!(hit.record, "the first hit goes on record");
        assert!(!q.request(&a, 100).unwrap_err().record, "once a minute");
        // 200 ms at 5/s refills one request.
        q.request(&a, 200).unwrap();
        // Another partner has its own bucket.
        q.request(&org("b.example"), 200).unwrap();
    }

    #[test]
    fn streams_are_counted_per_partner_and_released_on_drop() {
        let q = PartnerQuota::new(2, 5);
        let a = org("a.example");
        let s1 = q.open_stream(&a, 0).unwrap();
        let _s2 = q.open_stream(&a, 0).unwrap();
        let hit = q.open_stream(&a, 0).err().unwrap();
        assert_eq!(hit.setting, "limits.max_streams_per_partner");
        // A refused stream is not counted among all partners' streams.
        assert_eq!(q.all_streams(), 2);
        let b = q.open_stream(&org("b.example"), 0).unwrap();
        assert_eq!(q.all_streams(), 3);
        drop(b);
        drop(s1);
        assert_eq!(q.streams(&a), 1);
        assert_eq!(q.all_streams(), 1);
        assert!(q.open_stream(&a, 0).is_ok());
    }
}
