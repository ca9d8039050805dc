//! What sightings and statistics share as signed reports from partners:
//! the request bound, their makers' cards, opening each report (verified
//! before it is decoded), the path check, per-report outcomes and their
//! ledger rows, the bound on what one partner can make us keep, and the
//! names of refusal codes.

use prost::Message;
use tonic::Code;

use crate::audit::AuditEntry;
use crate::context::NodeContext;
use crate::model::OrgId;
use crate::policy::Decision;
use crate::proto::v1::{Envelope, ReportOutcome, SignedReport};
use crate::refusal::RefusalKind;
use crate::rpc::{RpcError, refusal_code};
use crate::signing::{KeyDirectory, VerifyError};
use crate::store::{KeptReport, StoreError};

/// Most reports one request may carry.
pub const MAX_REPORTS_PER_REQUEST: usize = 500;

/// Refuses a request of more than [`MAX_REPORTS_PER_REQUEST`] reports.
pub fn check_count(n: usize) -> Result<(), RpcError> {
    if n > MAX_REPORTS_PER_REQUEST {
        return Err(RpcError::BadRequest(format!(
            "reports: at most {MAX_REPORTS_PER_REQUEST} a request, got {n}"
        )));
    }
    Ok(())
}

/// A report refused: its code, why, and its ledger subject once it is
/// known (after verification).
#[derive(Debug)]
pub struct Refused {
    /// The gRPC code answered for it.
    pub code: Code,
    /// Why, naming the field.
    pub message: String,
    /// What it reports, when that was read.
    pub subject: Option<String>,
}

impl Refused {
    /// A refusal.
    pub fn new(code: Code, message: impl Into<String>, subject: Option<String>) -> Self {
        Self {
            code,
            message: message.into(),
            subject,
        }
    }
}

/// Report `i`'s envelope, opened by `open` (which verifies before it
/// decodes); refusals name `reports[i]`.
pub fn open_report<T>(
    report: &SignedReport,
    i: usize,
    keys: &KeyDirectory,
    open: impl FnOnce(&Envelope, &KeyDirectory) -> Result<T, VerifyError>,
) -> Result<T, Refused> {
    let env = Envelope::decode(report.envelope.as_slice()).map_err(|e| {
        Refused::new(
            Code::InvalidArgument,
            format!("reports[{i}].envelope: not an envelope: {e}"),
            None,
        )
    })?;
    open(&env, keys).map_err(|e| {
        Refused::new(
            refusal_code(RefusalKind::from(&e)),
            format!("reports[{i}]: {e}"),
            None,
        )
    })
}

/// Which bound a kind of report counts against, for its refusal.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The RPC the reports came by.
    pub rpc: &'static str,
    /// The setting that bounds them per partner.
    pub setting: &'static str,
    /// What they are, in words.
    pub what: &'static str,
}

/// The outcome of keeping a report from `from`.
pub async fn kept_outcome(
    ctx: &NodeContext,
    from: &OrgId,
    kept: KeptReport,
    bound: Bound,
) -> Result<ReportOutcome, StoreError> {
    Ok(match kept {
        KeptReport::New | KeptReport::Replaced => taken(true),
        KeptReport::AlreadyHeld => taken(false),
        KeptReport::OverLimit(n) => {
            over_bound(ctx, from, bound.rpc, bound.setting, bound.what, n).await?
        }
    })
}

/// The outcome of refusing report `i` from `from`, on the ledger (by
/// `row`, the kind's refused-row constructor) and in the node log — unless
/// it only waits for its maker's key, which the partner offers again.
pub async fn refused_outcome(
    ctx: &NodeContext,
    from: &OrgId,
    i: usize,
    r: Refused,
    row: fn(&str, String, &str, &str, bool) -> AuditEntry,
) -> Result<ReportOutcome, StoreError> {
    if r.code != Code::FailedPrecondition {
        tracing::warn!(partner = %from, code = ?r.code, reason = %r.message, "partner's report refused");
        let subject = r.subject.unwrap_or_else(|| format!("{from} report {i}"));
        let entry = row(from.as_str(), subject, code_name(r.code), &r.message, false);
        ctx.store.append_audit(&[entry]).await?;
    }
    Ok(refused(r.code, r.message))
}

/// Takes the makers' cards that came with reports from `from`, only when
/// `accept` (our policy for `from`) takes its reports at all; rebuilds the
/// node's view when they changed it.
pub async fn learn_cards(
    ctx: &NodeContext,
    accept: &Decision,
    cards: &[Envelope],
    from: &OrgId,
) -> Result<(), RpcError> {
    if accept.is_allow() && !cards.is_empty() && super::cards::learn_cards(ctx, cards, from).await?
    {
        super::apply_trust_change(ctx)
            .await
            .map_err(|e| RpcError::Precondition(format!("reloading keys: {e}")))?;
    }
    Ok(())
}

/// A report's path starts at its `maker`, ends at the sender `from`, passes
/// no org twice and not us, and has at most `max_relays` relays.
pub fn check_path(
    path: &[String],
    maker: &str,
    from: &OrgId,
    own: &OrgId,
    max_relays: usize,
) -> Result<(), String> {
    if path.first().map(String::as_str) != Some(maker) {
        return Err(format!("must start at the signer {maker}"));
    }
    if path.last().map(String::as_str) != Some(from.as_str()) {
        return Err(format!("must end at the sender {from}"));
    }
    let mut seen = std::collections::HashSet::new();
    for org in path {
        if org == own.as_str() {
            return Err(format!("already passed through {own} (a loop)"));
        }
        if !seen.insert(org.as_str()) {
            return Err(format!("names {org} twice (a loop)"));
        }
    }
    let relays = path.len() - 1;
    if relays > max_relays {
        return Err(format!("{relays} relay hop(s); at most {max_relays}"));
    }
    Ok(())
}

/// A report taken (`stored`: new, not one already held).
pub fn taken(stored: bool) -> ReportOutcome {
    ReportOutcome {
        code: 0,
        message: String::new(),
        stored,
    }
}

/// A report refused with `code`, saying why.
pub fn refused(code: Code, message: String) -> ReportOutcome {
    ReportOutcome {
        code: code as u32,
        message,
        stored: false,
    }
}

/// The refusal of a report because `from` already brought `n` of `what`,
/// the most `setting` lets one partner make us keep; on the ledger and in
/// the node log.
pub async fn over_bound(
    ctx: &NodeContext,
    from: &OrgId,
    rpc: &str,
    setting: &str,
    what: &str,
    n: u64,
) -> Result<ReportOutcome, StoreError> {
    let detail = format!("{from} already brought {n} {what}, the most one partner may");
    tracing::warn!(partner = %from, "{detail}");
    let row = AuditEntry::over_limit(from.as_str(), rpc, setting, &detail);
    ctx.store.append_audit(&[row]).await?;
    Ok(refused(
        Code::ResourceExhausted,
        format!("{detail} ({setting}); retry later"),
    ))
}

/// The gRPC name of a code, as ledger rows give it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "REFUSED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_runs_from_the_maker_to_the_sender_without_loops_or_us() {
        let org = |s: &str| OrgId::parse(s).unwrap();
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (from, own) = (org("b.example"), org("a.example"));
        assert!(check_path(&p(&["d.example", "b.example"]), "d.example", &from, &own, 4).is_ok());
        let cases = [
            (p(&["c.example", "b.example"]), "must start at the signer"),
            (p(&["d.example", "c.example"]), "must end at the sender"),
            (p(&["d.example", "a.example", "b.example"]), "a loop"),
            (
                p(&["d.example", "b.example", "d.example", "b.example"]),
                "twice",
            ),
            (
                p(&["d.example", "c.example", "e.example", "b.example"]),
                "at most 2",
            ),
            (Vec::new(), "must start"),
        ];
        for (path, why) in cases {
            let e = check_path(&path, "d.example", &from, &own, 2).unwrap_err();
            assert!(e.contains(why), "{path:?}: {e}");
        }
    }
}
