//! `threatmesh policy apply|show|history|explain`: named, versioned sharing
//! policies, and "would partner P receive indicator I, and why?", through
//! the node's Admin service.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use super::publish::DraftInput;
use super::table::{col, listing, num};
use crate::model::tlp_name;
use crate::proto::v1::explain_policy_request::Subject;
use crate::proto::v1::{
    ApplyPolicyRequest, ExplainPolicyRequest, ListPoliciesRequest, PolicyHistoryRequest,
    ShowPolicyRequest,
};

/// `threatmesh policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy TOML file and store it as the next version of its
    /// name. Partners bound to the name get it at once, for everything not
    /// yet sent.
    #[command(
        after_help = "Examples:\n  threatmesh policy apply policies/isp-feed.toml\n  threatmesh policy explain --partner isp.example --file draft.json   # then check a case\nExample policy files: config/policies/*.toml, or `threatmesh init --with-examples`"
    )]
    Apply {
        /// The policy document.
        file: PathBuf,
    },
    /// List policies, or print one (its latest or a given version).
    #[command(after_help = "\
Examples:
  threatmesh policy show                       # every policy, latest version
  threatmesh policy show isp-feed --version 1   # the document as applied")]
    Show {
        /// Policy name.
        name: Option<String>,
        /// Version to print (default: latest).
        #[arg(long, requires = "name")]
        version: Option<u64>,
        /// One JSON object per policy (per line).
        #[arg(long)]
        json: bool,
    },
    /// Every version of a policy: when, and by whom.
    #[command(after_help = "\
Examples:
  threatmesh policy history isp-feed")]
    History {
        /// Policy name.
        name: String,
        /// One JSON object per version (per line).
        #[arg(long)]
        json: bool,
    },
    /// Would a partner receive an indicator, and under which rule? Sends nothing.
    #[command(after_help = "\
Examples:
  threatmesh policy explain --partner isp.example --indicator 0b0e7c32-8a43-4c57-9a4e-3f5a2c6f1d10
  threatmesh policy explain --partner isp.example --file draft.json
A --file holds one indicator as a JSON object, as in `publish --file`.

Exit status: 0 ALLOW, 3 DENY (so scripts can test it), 1 when the node
could not answer, 64 on a usage error.")]
    Explain {
        /// Partner org id.
        #[arg(long)]
        partner: String,
        /// Id of an indicator this node holds.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        indicator: Option<String>,
        /// A JSON indicator draft, evaluated as if this org published it now.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a policy command.
pub async fn run(config: &Path, conn: &ClientArgs, cmd: &PolicyCommand) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    match cmd {
        PolicyCommand::Apply { file } => apply(&mut a, file).await,
        PolicyCommand::Show {
            name: None, json, ..
        } => list(&mut a, *json).await,
        PolicyCommand::Show {
            name: Some(name),
            version,
            json,
        } => show(&mut a, name, *version, *json).await,
        PolicyCommand::History { name, json } => history(&mut a, name, *json).await,
        PolicyCommand::Explain {
            partner,
            indicator,
            file,
            json,
        } => {
            let subject = match (indicator, file) {
                (Some(id), _) => Subject::IndicatorId(id.clone()),
                (None, Some(f)) => Subject::Draft(read_draft(f)?),
                (None, None) => return Err(CliError::Usage("give --indicator or --file".into())),
            };
            explain(&mut a, partner, subject, *json).await
        }
    }
}

/// `policy apply`.
async fn apply(a: &mut AdminSession, file: &Path) -> Result<(), CliError> {
    let document = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    // Checked here first so the error names the file.
    crate::policy::parse_policy(&document)
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    let r = rpc!(a, apply_policy(ApplyPolicyRequest { document }));
    if r.changed {
        out!("applied policy {} version {}", r.name, r.version);
    } else {
        out!("policy {} unchanged (version {})", r.name, r.version);
    }
    if r.bound_partners.is_empty() {
        out!(
            "no partner is bound to it yet (threatmesh peer set-policy --partner ORG --policy {})",
            r.name
        );
    } else {
        out!("bound partners: {}", r.bound_partners.join(", "));
    }
    Ok(())
}

/// `policy show` without a name: every policy's latest version.
async fn list(a: &mut AdminSession, json: bool) -> Result<(), CliError> {
    let policies = rpc!(a, list_policies(ListPoliciesRequest {})).policies;
    listing(
        &policies,
        json,
        policy_json,
        "no policies applied (threatmesh policy apply FILE; examples in config/policies/)",
        &[
            col("NAME"),
            num("VERSION"),
            col("APPLIED BY"),
            col("PARTNERS"),
        ],
        |p| {
            vec![
                p.name.clone(),
                p.version.to_string(),
                p.applied_by.clone(),
                p.bound_partners.join(", "),
            ]
        },
    );
    Ok(())
}

/// `policy show NAME`.
async fn show(
    a: &mut AdminSession,
    name: &str,
    version: Option<u64>,
    json: bool,
) -> Result<(), CliError> {
    let p = rpc!(
        a,
        show_policy(ShowPolicyRequest {
            name: name.to_string(),
            version: version.unwrap_or(0),
        })
    );
    if json {
        out!("{}", policy_json(&p));
        return Ok(());
    }
    out!(
        "# policy {} version {}, applied by {} at {}",
        p.name,
        p.version,
        p.applied_by,
        super::audit::rfc3339(p.applied_unix_ms)
    );
    out_raw!("{}", p.document);
    Ok(())
}

/// `policy history NAME`.
async fn history(a: &mut AdminSession, name: &str, json: bool) -> Result<(), CliError> {
    let versions = rpc!(
        a,
        policy_history(PolicyHistoryRequest {
            name: name.to_string(),
        })
    )
    .policies;
    listing(
        &versions,
        json,
        policy_json,
        "no versions",
        &[num("VERSION"), col("APPLIED"), col("APPLIED BY")],
        |p| {
            vec![
                p.version.to_string(),
                super::audit::rfc3339(p.applied_unix_ms),
                p.applied_by.clone(),
            ]
        },
    );
    Ok(())
}

/// `policy explain`.
async fn explain(
    a: &mut AdminSession,
    partner: &str,
    subject: Subject,
    json: bool,
) -> Result<(), CliError> {
    let r = rpc!(
        a,
        explain_policy(ExplainPolicyRequest {
            partner: partner.to_string(),
            subject: Some(subject),
        })
    );
    let ind = r.indicator.unwrap_or_default();
    let tlp = tlp_name(ind.marking.as_ref().map(|m| m.tlp).unwrap_or(0));
    if json {
        out!(
            "{}",
            serde_json::json!({
                "decision": if r.allow { "allow" } else { "deny" }, "rule": r.rule,
                "reason": r.reason, "partner": partner, "policy": r.policy,
                "indicator": ind.id, "origin": ind.origin_org, "tlp": tlp,
            })
        );
        return verdict(r.allow);
    }
    if r.allow {
        out!("ALLOW  rule {}", r.rule);
    } else {
        out!("DENY   rule {}: {}", r.rule, r.reason);
    }
    out!("  partner   {partner} (policy {})", r.policy);
    out!(
        "  indicator {} {} {} from {} (TLP:{}, confidence {})",
        if ind.id.is_empty() {
            "(draft)"
        } else {
            &ind.id
        },
        crate::model::kind_name(ind.kind).unwrap_or("?"),
        ind.value,
        ind.origin_org,
        tlp.unwrap_or("?"),
        ind.confidence
    );
    verdict(r.allow)
}

/// `explain`'s exit status: 0 for ALLOW, [`EXIT_DENY`] for DENY.
fn verdict(allow: bool) -> Result<(), CliError> {
    if allow {
        Ok(())
    } else {
        Err(CliError::Status(EXIT_DENY))
    }
}

/// Exit status of `policy explain` when the decision is DENY.
pub const EXIT_DENY: u8 = 3;

fn policy_json(p: &crate::proto::v1::PolicyVersion) -> serde_json::Value {
    serde_json::json!({
        "name": p.name, "version": p.version, "applied_unix_ms": p.applied_unix_ms,
        "applied_by": p.applied_by, "bound_partners": p.bound_partners,
        "document": p.document,
    })
}

/// Reads a JSON indicator draft, as `publish --file` takes it.
fn read_draft(file: &Path) -> Result<crate::proto::v1::IndicatorDraft, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", file.display())))?;
    let input: DraftInput = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", file.display())))?;
    input
        .to_draft()
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", file.display())))
}
