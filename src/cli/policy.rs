//! `threatmesh policy apply|show|explain`: named, versioned sharing policies
//! in the node's store, and "would partner P receive indicator I, and why?".

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::publish::DraftInput;
use super::{CliError, local_actor};
use crate::config::Settings;
use crate::exchange::{Identity, assemble, decode_stored, hops};
use crate::model::{OrgId, now_unix_ms, prepare_draft, tlp_name};
use crate::node::load_signing_key;
use crate::policy::{Decision, egress, parse_policy};
use crate::proto::v1::Indicator;
use crate::store::Store;

/// `threatmesh policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy TOML file and store it as the next version of its
    /// name. Partners bound to the name get it within
    /// `federation.peer_refresh_ms`, for everything not yet sent.
    #[command(after_help = "Examples of policy files: config/policies/*.toml")]
    Apply {
        /// The policy document.
        file: PathBuf,
    },
    /// List policies, or print one (its latest or a given version).
    Show {
        /// Policy name.
        name: Option<String>,
        /// Version to print (default: latest).
        #[arg(long, requires = "name")]
        version: Option<u64>,
    },
    /// Would a partner receive an indicator, and under which rule? Sends nothing.
    #[command(after_help = "\
Examples:
  threatmesh policy explain --partner isp.example --indicator 0b0e7c32-8a43-4c57-9a4e-3f5a2c6f1d10
  threatmesh policy explain --partner isp.example --file draft.json
A --file holds one indicator as a JSON object, as in `publish --file`.")]
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
pub async fn run(config: &Path, cmd: &PolicyCommand) -> Result<(), CliError> {
    let settings = Settings::load(config)?;
    let store = Store::open_sqlite(&settings.store.path).await?;
    let result = dispatch(&settings, &store, cmd).await;
    store.close().await;
    result
}

async fn dispatch(settings: &Settings, store: &Store, cmd: &PolicyCommand) -> Result<(), CliError> {
    match cmd {
        PolicyCommand::Apply { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let policy = parse_policy(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let (version, changed) = store
                .apply_policy(&policy.name, &text, &local_actor())
                .await?;
            if changed {
                out!("applied policy {} version {version}", policy.name);
            } else {
                out!("policy {} unchanged (version {version})", policy.name);
            }
            let bound: Vec<String> = store
                .peers()
                .await?
                .into_iter()
                .filter(|p| p.policy == policy.name)
                .map(|p| p.org.to_string())
                .collect();
            if bound.is_empty() {
                out!(
                    "no partner is bound to it yet (threatmesh peer set-policy --partner ORG --policy {})",
                    policy.name
                );
            } else {
                out!("bound partners: {}", bound.join(", "));
            }
            Ok(())
        }
        PolicyCommand::Show { name: None, .. } => {
            let peers = store.peers().await?;
            let policies = store.policies().await?;
            if policies.is_empty() {
                out!(
                    "no policies applied (threatmesh policy apply FILE; examples in config/policies/)"
                );
                return Ok(());
            }
            out!(
                "{:<24} {:>7}  {:<24} PARTNERS",
                "NAME",
                "VERSION",
                "APPLIED BY"
            );
            for p in policies {
                let bound: Vec<&str> = peers
                    .iter()
                    .filter(|r| r.policy == p.name)
                    .map(|r| r.org.as_str())
                    .collect();
                out!(
                    "{:<24} {:>7}  {:<24} {}",
                    p.name,
                    p.version,
                    p.applied_by,
                    bound.join(", ")
                );
            }
            Ok(())
        }
        PolicyCommand::Show {
            name: Some(name),
            version,
        } => {
            let p = store.policy(name, *version).await?.ok_or_else(|| {
                CliError::Usage(match version {
                    Some(v) => format!("policy {name} has no version {v}"),
                    None => format!("no policy named {name} (see `threatmesh policy show`)"),
                })
            })?;
            out!(
                "# policy {} version {}, applied by {} at {} (Unix ms)",
                p.name,
                p.version,
                p.applied_by,
                p.applied_ms
            );
            out_raw!("{}", p.document);
            Ok(())
        }
        PolicyCommand::Explain {
            partner,
            indicator,
            file,
            json,
        } => {
            let own = settings.org_id();
            let partner =
                OrgId::parse(partner).map_err(|e| CliError::Usage(format!("--partner: {e}")))?;
            let peer = store
                .peers()
                .await?
                .into_iter()
                .find(|p| p.org == partner)
                .ok_or_else(|| {
                    CliError::Usage(format!("--partner: {partner} is not a registered partner"))
                })?;
            let ind = match (indicator, file) {
                (Some(id), _) => {
                    let row = store.indicator_by_id(id).await?.ok_or_else(|| {
                        CliError::Usage(format!("--indicator: this node holds no indicator {id}"))
                    })?;
                    decode_stored(&row.envelope).map_err(CliError::Failed)?
                }
                (None, Some(f)) => draft_as_indicator(settings, f)?,
                (None, None) => return Err(CliError::Usage("give --indicator or --file".into())),
            };
            let policy = match store.policy(&peer.policy, None).await? {
                Some(r) if !peer.policy.is_empty() => {
                    Some(r.to_policy().map_err(|e| CliError::Failed(e.to_string()))?)
                }
                _ => None,
            };
            let d = egress(
                &own,
                &ind,
                hops(&own, &ind),
                &partner,
                policy.as_ref(),
                now_unix_ms(),
            );
            let policy_ref = policy
                .as_ref()
                .map(|p| format!("{}@{}", p.name, p.version))
                .unwrap_or_else(|| "none".into());
            if *json {
                let (verdict, reason) = match &d {
                    Decision::Allow { .. } => ("allow", String::new()),
                    Decision::Deny { reason, .. } => ("deny", reason.clone()),
                };
                out!(
                    "{}",
                    serde_json::json!({
                        "decision": verdict, "rule": d.rule(), "reason": reason,
                        "partner": partner.as_str(), "policy": policy_ref,
                        "indicator": ind.id, "origin": ind.origin_org,
                        "tlp": tlp_name(ind.marking.as_ref().map(|m| m.tlp).unwrap_or(0)),
                    })
                );
            } else {
                match &d {
                    Decision::Allow { rule } => out!("ALLOW  rule {rule}"),
                    Decision::Deny { rule, reason } => out!("DENY   rule {rule}: {reason}"),
                }
                out!("  partner   {partner} (policy {policy_ref})");
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
                    tlp_name(ind.marking.as_ref().map(|m| m.tlp).unwrap_or(0)).unwrap_or("?"),
                    ind.confidence
                );
            }
            Ok(())
        }
    }
}

/// Builds the indicator this org would publish from a JSON draft, for a dry run.
fn draft_as_indicator(settings: &Settings, file: &Path) -> Result<Indicator, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", file.display())))?;
    let input: DraftInput = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", file.display())))?;
    let draft = input
        .to_draft()
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", file.display())))?;
    let now = now_unix_ms();
    let d = prepare_draft(&draft, now)
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", file.display())))?;
    let key = load_signing_key(settings)?;
    let draft_id = Identity {
        id: String::new(),
        version: 1,
        created_unix_ms: now,
    };
    Ok(assemble(&settings.org_id(), key.key_id(), draft_id, now, d))
}
