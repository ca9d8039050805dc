//! `threatmesh peer add|list`: partner organisations, registered from their
//! verified cards into the node's store. A running node picks changes up
//! within `federation.peer_refresh_ms`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use prost::Message;

use super::card::print_card;
use super::{CliError, local_actor};
use crate::config::Settings;
use crate::identity::check_endpoint;
use crate::model::OrgId;
use crate::store::{PeerChange, PeerState, Store};

/// `threatmesh peer ...`
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Register a partner from its card (verifies the card's self-signature).
    #[command(after_help = "\
Example:
  threatmesh peer add --card bka.example.card --endpoint 10.1.2.3:7443 --policy agency-partner
Compare the printed CA fingerprint and signing key with the partner out of band
(phone, signed letter) before relying on the link.")]
    Add {
        /// The partner's card file (from `threatmesh card export`).
        #[arg(long)]
        card: PathBuf,
        /// Where to dial the partner (default: the first endpoint in its
        /// card; "" = do not subscribe to it, only let it subscribe to us).
        #[arg(long)]
        endpoint: Option<String>,
        /// Sharing policy to bind (see `threatmesh policy`). Without one the
        /// partner receives nothing.
        #[arg(long)]
        policy: Option<String>,
    },
    /// Bind a partner to a sharing policy (takes effect for everything not
    /// yet sent, within `federation.peer_refresh_ms` on a running node).
    SetPolicy {
        /// Partner org id.
        #[arg(long)]
        partner: String,
        /// Policy name (applied earlier with `threatmesh policy apply`).
        #[arg(long)]
        policy: String,
    },
    /// Stop sending to a partner and refuse its connections; open streams
    /// close within `federation.peer_refresh_ms`. Its cursor is kept.
    Suspend {
        /// Partner org id.
        #[arg(long)]
        partner: String,
    },
    /// Undo `suspend`: the partner resumes from its own cursor.
    Resume {
        /// Partner org id.
        #[arg(long)]
        partner: String,
    },
    /// Hard stop: nothing more leaves for the partner and it is no longer
    /// trusted or dialled. Its cursor, card and history stay for the audit;
    /// `peer add --card` registers it again.
    Remove {
        /// Partner org id.
        #[arg(long)]
        partner: String,
    },
    /// List registered partners.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a peer command.
pub async fn run(config: &Path, cmd: &PeerCommand) -> Result<(), CliError> {
    let settings = Settings::load(config)?;
    match cmd {
        PeerCommand::Add {
            card,
            endpoint,
            policy,
        } => {
            let text = std::fs::read_to_string(card)
                .map_err(|e| CliError::Usage(format!("--card {}: {e}", card.display())))?;
            let env = crate::identity::envelope_from_json(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", card.display())))?;
            let store = Store::open_sqlite(&settings.store.path).await?;
            let added = register_peer(
                &settings,
                &store,
                &env,
                endpoint.as_deref(),
                policy.as_deref(),
                &local_actor(),
            )
            .await;
            store.close().await;
            let (v, change, endpoint) = added?;
            let verb = match change {
                PeerChange::Added => "registered partner",
                PeerChange::Updated => "updated partner",
            };
            out!(
                "{verb} {} (dial: {})",
                v.org,
                if endpoint.is_empty() { "-" } else { &endpoint }
            );
            print_card(&v);
            match policy {
                Some(p) => out!("sharing policy: {p}"),
                None => out!(
                    "no sharing policy bound: {} receives nothing until `threatmesh peer set-policy --partner {} --policy NAME`",
                    v.org,
                    v.org
                ),
            }
            out!(
                "Compare the CA fingerprint and signing key with {} out of band.",
                v.org
            );
            Ok(())
        }
        PeerCommand::Suspend { partner } => {
            set_state(&settings, partner, PeerState::Suspended).await
        }
        PeerCommand::Resume { partner } => set_state(&settings, partner, PeerState::Active).await,
        PeerCommand::Remove { partner } => set_state(&settings, partner, PeerState::Removed).await,
        PeerCommand::SetPolicy { partner, policy } => {
            let org =
                OrgId::parse(partner).map_err(|e| CliError::Usage(format!("--partner: {e}")))?;
            let store = Store::open_sqlite(&settings.store.path).await?;
            let r = store.set_peer_policy(&org, policy, &local_actor()).await;
            store.close().await;
            r.map_err(|e| CliError::Usage(e.to_string()))?;
            out!("{org} is now bound to policy {policy}");
            Ok(())
        }
        PeerCommand::List { json } => {
            let store = Store::open_sqlite(&settings.store.path).await?;
            let peers = store.peers().await?;
            let mut rows = Vec::new();
            for p in &peers {
                rows.push((p, store.cursor(&p.org).await?));
            }
            store.close().await;
            if *json {
                for (p, cursor) in rows {
                    out!(
                        "{}",
                        serde_json::json!({
                            "org": p.org.as_str(), "display_name": p.display_name,
                            "endpoint": p.endpoint, "card_version": p.card_version,
                            "cursor": cursor, "added_unix_ms": p.added_ms, "policy": p.policy,
                            "state": p.state.as_str(),
                        })
                    );
                }
            } else if rows.is_empty() {
                out!("no partners registered (add one with `threatmesh peer add --card FILE`)");
            } else {
                out!(
                    "{:<28} {:<24} {:<22} {:>10}",
                    "ORG",
                    "NAME",
                    "ENDPOINT",
                    "CURSOR"
                );
                for (p, cursor) in rows {
                    let ep = if p.endpoint.is_empty() {
                        "-"
                    } else {
                        &p.endpoint
                    };
                    out!(
                        "{:<28} {:<24} {:<22} {:>10}",
                        p.org.as_str(),
                        p.display_name,
                        ep,
                        cursor
                    );
                }
            }
            Ok(())
        }
    }
}

/// Verifies a partner's card and registers it in `store`. The endpoint is
/// `endpoint` if given, else the card's first. Returns the verified card,
/// whether it was new, and the endpoint used.
pub async fn register_peer(
    settings: &Settings,
    store: &Store,
    card: &crate::proto::v1::Envelope,
    endpoint: Option<&str>,
    policy: Option<&str>,
    actor: &str,
) -> Result<(crate::identity::VerifiedCard, PeerChange, String), CliError> {
    let v = crate::identity::open_card(card).map_err(|e| CliError::Usage(e.to_string()))?;
    if v.org == settings.org_id() {
        return Err(CliError::Usage(format!(
            "that is the card of {}, this node's own org; register partners' cards instead",
            v.org
        )));
    }
    let endpoint = match endpoint {
        Some(e) => e.to_string(),
        None => v.card.endpoints.first().cloned().unwrap_or_default(),
    };
    if !endpoint.is_empty() {
        check_endpoint(&endpoint).map_err(|e| CliError::Usage(format!("--endpoint: {e}")))?;
    }
    let change = store
        .put_peer(&v, &card.encode_to_vec(), &endpoint, policy, actor)
        .await
        .map_err(|e| CliError::Usage(format!("cannot register {}: {e}", v.org)))?;
    Ok((v, change, endpoint))
}

async fn set_state(settings: &Settings, partner: &str, state: PeerState) -> Result<(), CliError> {
    let org = OrgId::parse(partner).map_err(|e| CliError::Usage(format!("--partner: {e}")))?;
    let store = Store::open_sqlite(&settings.store.path).await?;
    let r = store.set_peer_state(&org, state, &local_actor()).await;
    store.close().await;
    let before = r.map_err(|e| CliError::Usage(e.to_string()))?;
    out!(
        "{org}: {} -> {} (a running node applies it within federation.peer_refresh_ms)",
        before.as_str(),
        state.as_str()
    );
    Ok(())
}
