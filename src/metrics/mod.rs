//! The node's Prometheus metrics: counters the paths increment as they go
//! (publishes, releases per partner and rule, refusals per reason, TLS
//! handshake failures per reason, commit latency), and gauges set from the
//! node's state when scraped (links, lag, clock offset, quarantine, store
//! size). Exposition is `prometheus-client`'s OpenMetrics text; the
//! listener is [`http`]. Nothing here does I/O.

pub mod http;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::audit::AuditEntry;

/// A partner.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartnerLabel {
    /// Partner org id.
    pub partner: String,
}

/// A release decision: partner, rule, and `sent` or `withheld`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    /// Partner org id.
    pub partner: String,
    /// The policy rule that decided.
    pub rule: String,
    /// `sent` or `withheld`.
    pub decision: String,
}

/// A refusal: who, and why (the refusal kind's code).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Partner org id.
    pub partner: String,
    /// The refusal kind.
    pub reason: String,
}

/// A reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// A partner link and one of its states.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    /// Partner org id.
    pub partner: String,
    /// `connecting`, `connected`, `backoff`, ...
    pub state: String,
}

/// Every metric of a node, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Indicator versions our publishers published.
    pub published: Counter,
    /// Requests answered DEADLINE_EXCEEDED because the caller's deadline
    /// (grpc-timeout) passed first (nothing of them was stored).
    pub deadline_exceeded: Counter,
    /// Requests whose caller went away (cancelled, disconnected) before
    /// the node answered.
    pub abandoned: Counter,
    /// Release decisions towards partners (Subscribe, TAXII), by rule.
    pub releases: Family<ReleaseLabels, Counter>,
    /// Envelopes refused from partners, by reason.
    pub refused: Family<RefusalLabels, Counter>,
    /// TLS handshakes (and client certificates) refused, by reason.
    pub tls_failures: Family<ReasonLabel, Counter>,
    /// Seconds one durable group commit of local publishes took.
    pub commit_seconds: Histogram,
    /// 1 for each partner link's current state.
    pub link_state: Family<LinkLabels, Gauge>,
    /// How many sequence numbers each partner's log is ahead of our cursor.
    pub lag: Family<PartnerLabel, Gauge>,
    /// How far each partner's clock is ahead of ours, seconds.
    pub clock_offset: Family<PartnerLabel, Gauge<f64, AtomicU64>>,
    /// Envelopes in quarantine, per partner they came from.
    pub quarantined: Family<PartnerLabel, Gauge>,
    /// Bytes of the store on disk (database and write-ahead log).
    pub store_bytes: Gauge,
    /// Our log's newest sequence number.
    pub log_seq: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics, registered under the `threatmesh_` prefix.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("threatmesh");
        let m = Self {
            registry: Registry::default(),
            published: Counter::default(),
            deadline_exceeded: Counter::default(),
            abandoned: Counter::default(),
            releases: Family::default(),
            refused: Family::default(),
            tls_failures: Family::default(),
            // 0.5 ms .. about 4 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            link_state: Family::default(),
            lag: Family::default(),
            clock_offset: Family::default(),
            quarantined: Family::default(),
            store_bytes: Gauge::default(),
            log_seq: Gauge::default(),
        };
        r.register(
            "published",
            "Indicator versions our publishers published",
            m.published.clone(),
        );
        r.register(
            "deadline_exceeded",
            "Requests whose caller's deadline (grpc-timeout) passed before the node answered",
            m.deadline_exceeded.clone(),
        );
        r.register(
            "requests_abandoned",
            "Requests whose caller went away (cancelled, disconnected) before the node answered",
            m.abandoned.clone(),
        );
        r.register(
            "releases",
            "Release decisions towards partners, by rule (sent or withheld)",
            m.releases.clone(),
        );
        r.register(
            "refused_envelopes",
            "Envelopes refused from partners, by reason",
            m.refused.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes and client certificates refused, by reason",
            m.tls_failures.clone(),
        );
        r.register_with_unit(
            "commit",
            "Time of one durable group commit of local publishes",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register(
            "link_state",
            "1 for each partner link's current state",
            m.link_state.clone(),
        );
        r.register(
            "link_lag",
            "Sequence numbers a partner's log is ahead of our cursor in it",
            m.lag.clone(),
        );
        r.register_with_unit(
            "link_clock_offset",
            "How far a partner's clock is ahead of ours (negative: behind)",
            Unit::Seconds,
            m.clock_offset.clone(),
        );
        r.register(
            "quarantined_envelopes",
            "Envelopes waiting in quarantine, per partner they came from",
            m.quarantined.clone(),
        );
        r.register_with_unit(
            "store",
            "Size of the store on disk (database and write-ahead log)",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        r.register(
            "log_seq",
            "Newest sequence number of our log",
            m.log_seq.clone(),
        );
        Self { registry: r, ..m }
    }

    /// Counts the release decisions of `entries` (ledger rows `sent` and
    /// `withheld`; a row may name several indicators).
    pub fn count_releases(&self, entries: &[AuditEntry]) {
        for e in entries {
            let decision = match e.event {
                crate::audit::event::SENT => "sent",
                crate::audit::event::WITHHELD => "withheld",
                _ => continue,
            };
            let n = e.subject.split(' ').filter(|s| !s.is_empty()).count() as u64;
            self.releases
                .get_or_create(&ReleaseLabels {
                    partner: e.partner.clone(),
                    rule: e.rule.clone(),
                    decision: decision.into(),
                })
                .inc_by(n);
        }
    }

    /// Counts one envelope refused from `partner` for `reason`.
    pub fn count_refusal(&self, partner: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusalLabels {
                partner: partner.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts one refused TLS handshake or client certificate.
    pub fn count_tls_failure(&self, reason: &str) {
        self.tls_failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Why a TLS handshake failed, as a metric label: a small fixed set, so a
/// flood of odd errors cannot grow the label space.
pub fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "closed",
            _ => "io",
        };
    };
    match t {
        E::NoCertificatesPresented => "no-client-certificate",
        E::InvalidMessage(_) => "not-tls",
        E::InvalidCertificate(C::Revoked) => "revoked",
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        E::InvalidCertificate(C::Other(o)) => {
            match o.0.downcast_ref::<crate::identity::IdentityError>() {
                Some(id) => identity_failure_reason(id),
                None => "bad-certificate",
            }
        }
        E::InvalidCertificate(_) => "bad-certificate",
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown) => {
            "client-refused-our-certificate"
        }
        E::PeerIncompatible(_) | E::NoApplicationProtocol => "incompatible",
        _ => "other",
    }
}

/// A client identity refusal as a metric label.
pub fn identity_failure_reason(e: &crate::identity::IdentityError) -> &'static str {
    use crate::identity::IdentityError as I;
    match e {
        I::NoClientCert => "no-client-certificate",
        I::UnknownOrg(_) => "unknown-org",
        I::Blocked { .. } => "partner-suspended",
        I::Revoked { .. } => "revoked",
        I::CrlStale { .. } => "stale-crl",
        I::Chain { .. } => "bad-chain",
        _ => "bad-certificate",
    }
}
