//! Named constructors for every kind of ledger row, so each row's fields
//! are chosen in one place.

use super::{AuditEntry, event};

/// The actor of decisions the node takes by itself.
const NODE: &str = "node";

impl AuditEntry {
    fn of(
        event: &'static str,
        actor: &str,
        partner: &str,
        subject: String,
        rule: &str,
        detail: String,
    ) -> Self {
        Self {
            event,
            actor: actor.to_string(),
            partner: partner.to_string(),
            subject,
            rule: rule.to_string(),
            detail,
        }
    }

    /// `origin/id#version`, the subject of rows about one indicator version.
    pub fn indicator_subject(origin: &str, id: &str, version: u64) -> String {
        format!("{origin}/{id}#{version}")
    }

    /// An indicator version released to `partner` under `rule`.
    pub fn sent(partner: &str, subject: String, rule: &str, policy_ref: String) -> Self {
        Self::of(event::SENT, NODE, partner, subject, rule, policy_ref)
    }

    /// An indicator version withheld from `partner` by `rule`.
    pub fn withheld(partner: &str, subject: String, rule: &str, why: String) -> Self {
        Self::of(event::WITHHELD, NODE, partner, subject, rule, why)
    }

    /// A version published here by `actor`.
    pub fn published(actor: &str, subject: String) -> Self {
        Self::of(event::PUBLISHED, actor, "", subject, "", String::new())
    }

    /// `actor` exported `count` indicators as `format`: everything we hold
    /// (`partner` ""), or what `partner`'s policy releases to it
    /// (`withheld` more were held back).
    pub fn exported(actor: &str, partner: &str, format: &str, count: u64, withheld: u64) -> Self {
        let (subject, detail) = if partner.is_empty() {
            (
                "all indicators".to_string(),
                format!("{count} indicator(s) as {format}"),
            )
        } else {
            (
                format!("{partner}'s policy view"),
                format!("{count} indicator(s) as {format}; {withheld} withheld by its policy"),
            )
        };
        Self::of(event::EXPORTED, actor, partner, subject, "", detail)
    }

    /// A version from `partner` accepted under ingress `rule`.
    pub fn accepted(partner: &str, subject: String, rule: &str, path: &[String]) -> Self {
        let detail = format!("path {}", path.join(" > "));
        Self::of(event::ACCEPTED, NODE, partner, subject, rule, detail)
    }

    /// An envelope from `partner` (its `seq` there) refused as `kind`.
    pub fn rejected(partner: &str, seq: u64, kind: &str, reason: &str) -> Self {
        let subject = format!("{partner} seq {seq}");
        Self::of(event::REJECTED, NODE, partner, subject, kind, reason.into())
    }

    /// `partner`'s log is another one than our cursor counted in (its store
    /// was restored or re-created): we read it again from the start.
    pub fn log_changed(partner: &str, was: &str, now: &str, why: &str) -> Self {
        Self::of(
            event::LOG_CHANGED,
            NODE,
            partner,
            format!("{partner} log {was} -> {now}"),
            "re-read-from-start",
            why.into(),
        )
    }

    /// An operator reset our cursor in `partner`'s log (it was at `was`).
    pub fn cursor_reset(actor: &str, partner: &str, was: u64) -> Self {
        Self::of(
            event::CURSOR_RESET,
            actor,
            partner,
            format!("{partner} cursor {was} -> 0"),
            "",
            "reset by an operator: the next subscription reads the partner's log from the start"
                .into(),
        )
    }

    /// An operator asked to re-decide our log rows `from..=up_to` for
    /// `partner` under its current policy (`peer resend`).
    pub fn resend(actor: &str, partner: &str, from: u64, up_to: u64, allowed: u64) -> Self {
        Self::of(
            event::RESEND,
            actor,
            partner,
            format!("seq {from}..={up_to}"),
            "",
            format!(
                "re-decide under the current policy; {allowed} now allowed and never sent, sent when {partner} next reads"
            ),
        )
    }

    /// Our store was restored from the backup `from`: our log has a new
    /// identity, so partners read it again from the start.
    pub fn store_restored(actor: &str, from: &str, old: &str, new: &str) -> Self {
        Self::of(
            event::STORE_RESTORED,
            actor,
            "",
            format!("log {old} -> {new}"),
            "",
            format!("restored from {from}"),
        )
    }

    /// A signed ledger head of `partner` disagreed with the one we hold.
    pub fn ledger_inconsistent(partner: &str, why: &str) -> Self {
        Self::of(
            event::LEDGER_WITNESS,
            NODE,
            partner,
            format!("{partner} ledger"),
            "ledger-inconsistent",
            why.into(),
        )
    }

    /// A request of `partner` refused because it is over a limit
    /// (`setting`); put on record once a minute per partner and limit.
    pub fn over_limit(partner: &str, rpc: &str, setting: &str, detail: &str) -> Self {
        let subject = format!("{partner} {rpc}");
        let detail = format!("{setting}: {detail}");
        Self::of(
            event::REJECTED,
            NODE,
            partner,
            subject,
            "limit-reached",
            detail,
        )
    }

    /// An envelope from `partner` put in quarantine until `key_id` is known.
    pub fn quarantined(partner: &str, q: &crate::store::Quarantined) -> Self {
        let subject = format!("{partner} seq {}", q.upstream_seq);
        let path = q.path.join(" > ");
        let (reason, detail) = if q.due_ms == 0 {
            (
                "unknown-signing-key",
                format!("signed by unknown key {} (path {path})", q.key_id),
            )
        } else {
            (
                "dated-ahead-of-clock",
                format!(
                    "dated ahead of our clock; waits until {} (path {path})",
                    crate::clock::rfc3339(q.due_ms)
                ),
            )
        };
        Self::of(event::QUARANTINED, NODE, partner, subject, reason, detail)
    }

    /// A quarantined envelope dropped because its key never arrived (or,
    /// with `due_ms`, our clock never reached its date).
    pub fn quarantine_expired(partner: &str, seq: u64, key_id: &str, due_ms: i64) -> Self {
        let subject = format!("{partner} seq {seq}");
        let (reason, detail) = if due_ms == 0 {
            (
                "signing-key-never-arrived",
                format!("key {key_id} unknown until the quarantine time ran out; dropped"),
            )
        } else {
            (
                "clock-never-reached-its-date",
                format!(
                    "dated ahead of our clock until {} (past the quarantine time); dropped",
                    crate::clock::rfc3339(due_ms)
                ),
            )
        };
        Self::of(
            event::QUARANTINE_EXPIRED,
            NODE,
            partner,
            subject,
            reason,
            detail,
        )
    }

    /// A card of `org` (a directory org) stored as `event` by `actor`.
    pub fn directory_card(
        event: &'static str,
        actor: &str,
        org: &str,
        version: u64,
        via: &str,
        key_ids: &[&str],
    ) -> Self {
        let detail = format!("via {via}; keys {}", key_ids.join(", "));
        Self::of(event, actor, org, format!("card v{version}"), "", detail)
    }

    /// A partner's newer card, signed by its current key, taken via `via`.
    pub fn card_updated(org: &str, version: u64, via: &str) -> Self {
        Self::of(
            event::CARD_UPDATED,
            NODE,
            org,
            format!("card v{version}"),
            "signed-by-current-key",
            format!("via {via}"),
        )
    }

    /// A card of `org` that arrived via `via` and was refused.
    pub fn card_refused(org: &str, via: &str, why: String) -> Self {
        Self::of(
            event::CARD_REFUSED,
            NODE,
            org,
            format!("card via {via}"),
            "",
            why,
        )
    }

    /// Our signing key `old` replaced by `new` at `at_ms`.
    pub fn signing_key_rotated(actor: &str, old: &str, new: &str, at_ms: i64) -> Self {
        Self::of(
            event::SIGNING_KEY,
            actor,
            "",
            format!("rotated {old} -> {new}"),
            "",
            format!(
                "{old} signs nothing dated from {} on",
                crate::clock::rfc3339(at_ms)
            ),
        )
    }

    /// Our retired signing key `key_id` revoked.
    pub fn signing_key_revoked(actor: &str, key_id: &str) -> Self {
        Self::of(
            event::SIGNING_KEY,
            actor,
            "",
            format!("revoked {key_id}"),
            "",
            "nothing newly received under it is accepted".into(),
        )
    }

    /// Partner `org` registered (or its card replaced) by `actor`.
    pub fn peer_registered(
        actor: &str,
        org: &str,
        version: u64,
        endpoint: &str,
        introducer: bool,
    ) -> Self {
        Self::of(
            event::PEER_REGISTERED,
            actor,
            org,
            format!("card v{version}"),
            "",
            format!("endpoint '{endpoint}', introducer {introducer}"),
        )
    }

    /// Partner `org` bound to policy `name`.
    pub fn peer_policy(actor: &str, org: &str, name: &str) -> Self {
        Self::of(
            event::PEER_POLICY,
            actor,
            org,
            name.into(),
            "",
            String::new(),
        )
    }

    /// Partner `org` moved from state `before` to `after`.
    pub fn peer_state(actor: &str, org: &str, after: &str, before: &str) -> Self {
        let detail = format!("was {before}");
        Self::of(event::PEER_STATE, actor, org, after.into(), "", detail)
    }

    /// Partner `org`'s endpoint or introducer flag changed.
    pub fn peer_updated(actor: &str, org: &str, now: (&str, bool), was: (&str, bool)) -> Self {
        Self::of(
            event::PEER_UPDATED,
            actor,
            org,
            format!("endpoint '{}', introducer {}", now.0, now.1),
            "",
            format!("was endpoint '{}', introducer {}", was.0, was.1),
        )
    }

    /// Version `version` of policy `name` applied.
    pub fn policy_applied(actor: &str, name: &str, version: u64) -> Self {
        let subject = format!("{name}@{version}");
        Self::of(event::POLICY_APPLIED, actor, "", subject, "", String::new())
    }

    /// One of our certificates issued (or first seen).
    pub fn cert_issued(actor: &str, spiffe_id: &str, serial: &str, not_after_ms: i64) -> Self {
        Self::of(
            event::CERT_ISSUED,
            actor,
            "",
            format!("{spiffe_id} serial {serial}"),
            "",
            format!("valid until {}", crate::clock::rfc3339(not_after_ms)),
        )
    }

    /// One of our certificates revoked.
    pub fn cert_revoked(actor: &str, spiffe_id: &str, serial: &str, reason: &str) -> Self {
        let subject = format!("{spiffe_id} serial {serial}");
        Self::of(event::CERT_REVOKED, actor, "", subject, "", reason.into())
    }

    /// Our CRL number `number` signed with `revoked` entries.
    pub fn crl_signed(actor: &str, number: i64, revoked: usize) -> Self {
        Self::of(
            event::CRL_SIGNED,
            actor,
            "",
            format!("CRL number {number}"),
            "",
            format!("{revoked} revoked"),
        )
    }

    /// A partner's CRL imported.
    pub fn crl_imported(actor: &str, org: &str, this_update_ms: i64, summary: &str) -> Self {
        let subject = format!("thisUpdate {this_update_ms}");
        Self::of(event::CRL_IMPORTED, actor, org, subject, "", summary.into())
    }

    /// `sighter saw origin/id on YYYY-MM-DD`, the subject of rows about one
    /// sighting report.
    pub fn sighting_subject(sighter: &str, origin: &str, id: &str, window_ms: i64) -> String {
        let day = crate::clock::rfc3339(window_ms);
        format!(
            "{sighter} saw {origin}/{id} on {}",
            day.get(..10).unwrap_or(&day)
        )
    }

    /// Our publisher `actor` reported `count` more sightings; the day's
    /// report now totals `total`.
    pub fn sighted(actor: &str, subject: String, count: u64, total: u64) -> Self {
        let detail = format!("{count} more; {total} that day");
        Self::of(event::SIGHTED, actor, "", subject, "", detail)
    }

    /// A sighting from `partner` accepted under `rule`, along `path`.
    pub fn sighting_accepted(partner: &str, subject: String, rule: &str, path: &[String]) -> Self {
        let detail = format!("path {}", path.join(" > "));
        Self::of(
            event::SIGHTING_ACCEPTED,
            NODE,
            partner,
            subject,
            rule,
            detail,
        )
    }

    /// A sighting sent to `partner` under `rule` (it answered that it holds
    /// it).
    pub fn sighting_sent(partner: &str, subject: String, rule: &str) -> Self {
        Self::of(
            event::SIGHTING_SENT,
            NODE,
            partner,
            subject,
            rule,
            String::new(),
        )
    }

    /// A sighting withheld from `partner` by `rule`.
    pub fn sighting_withheld(partner: &str, subject: String, rule: &str, why: String) -> Self {
        Self::of(event::SIGHTING_WITHHELD, NODE, partner, subject, rule, why)
    }

    /// A sighting refused as `code` (a gRPC code name): `ours` = one we
    /// sent that `partner` refused; otherwise one `partner` sent us.
    pub fn sighting_refused(
        partner: &str,
        subject: String,
        code: &str,
        why: &str,
        ours: bool,
    ) -> Self {
        Self::report_refused(event::SIGHTING_REFUSED, partner, subject, code, why, ours)
    }

    fn report_refused(
        event: &'static str,
        partner: &str,
        subject: String,
        code: &str,
        why: &str,
        ours: bool,
    ) -> Self {
        let detail = if ours {
            format!("refused by {partner}: {why}")
        } else {
            why.to_string()
        };
        Self::of(event, NODE, partner, subject, code, detail)
    }

    /// `statistics of reporter, day from YYYY-MM-DD`, the subject of rows
    /// about one statistics report.
    pub fn statistics_subject(reporter: &str, period: &str, start_ms: i64) -> String {
        let day = crate::clock::rfc3339(start_ms);
        format!(
            "statistics of {reporter}, {period} from {}",
            day.get(..10).unwrap_or(&day)
        )
    }

    /// A statistics report sent to `partner` under `rule`; `detail` says
    /// its noise and cells.
    pub fn statistics_sent(partner: &str, subject: String, rule: &str, detail: String) -> Self {
        Self::of(event::STATISTICS_SENT, NODE, partner, subject, rule, detail)
    }

    /// A statistics report withheld from `partner` by `rule`.
    pub fn statistics_withheld(partner: &str, subject: String, rule: &str, why: String) -> Self {
        Self::of(
            event::STATISTICS_WITHHELD,
            NODE,
            partner,
            subject,
            rule,
            why,
        )
    }

    /// A statistics report from `partner` accepted under `rule`, along `path`.
    pub fn statistics_accepted(
        partner: &str,
        subject: String,
        rule: &str,
        path: &[String],
    ) -> Self {
        let detail = format!("path {}", path.join(" > "));
        Self::of(
            event::STATISTICS_ACCEPTED,
            NODE,
            partner,
            subject,
            rule,
            detail,
        )
    }

    /// A statistics report refused as `code`: `ours` = one we sent that
    /// `partner` refused; otherwise one `partner` sent us.
    pub fn statistics_refused(
        partner: &str,
        subject: String,
        code: &str,
        why: &str,
        ours: bool,
    ) -> Self {
        Self::report_refused(event::STATISTICS_REFUSED, partner, subject, code, why, ours)
    }
}
