//! What sightings and statistics share as signed reports from partners:
//! their makers' cards, the path check, per-report outcomes, the bound on
//! what one partner can make us keep, and the names of refusal codes.

use tonic::Code;

use crate::audit::AuditEntry;
use crate::context::NodeContext;
use crate::model::OrgId;
use crate::policy::Decision;
use crate::proto::v1::{Envelope, ReportOutcome};
use crate::rpc::RpcError;
use crate::store::StoreError;

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
