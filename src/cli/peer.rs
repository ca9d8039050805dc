//! `threatmesh peer ...`: partner organisations, managed through the running
//! node's Admin service with our admin certificate. Every change applies at
//! once and is recorded in the audit ledger under the admin's identity.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use super::table::{col, dash, listing, num};
use crate::proto::v1::{
    AddPeerRequest, ApproveCardRequest, DirectoryCard, ListCardsRequest, ListPeersRequest, Peer,
    PeerAction, PeerRequest, ResendToPeerRequest, SetPeerStateRequest, UpdatePeerRequest,
};

/// `threatmesh peer ...`
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Register a partner from its card (the node verifies the card's
    /// self-signature) and start dialling it.
    #[command(after_help = "\
Examples:
  threatmesh peer add --card bka.example.card --endpoint 10.1.2.3:7443 --policy agency-partner
  threatmesh peer add --card isp.example.card --policy isp-feed   # dial the endpoint its card names
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
        /// Accept cards of other orgs that this partner relays.
        #[arg(long)]
        introducer: bool,
    },
    /// Change a partner's endpoint, policy or introducer flag.
    #[command(after_help = "\
Examples:
  threatmesh peer update --partner isp.example --policy isp-feed
  threatmesh peer update --partner isp.example --endpoint \"\"   # stop dialling it")]
    Update {
        /// Partner org id.
        #[arg(long)]
        partner: String,
        /// New dial endpoint ("" = do not dial).
        #[arg(long)]
        endpoint: Option<String>,
        /// Policy to bind (applied earlier with `threatmesh policy apply`);
        /// applies to everything not yet sent.
        #[arg(long)]
        policy: Option<String>,
        /// Whether cards relayed by this partner are accepted.
        #[arg(long)]
        introducer: Option<bool>,
    },
    /// Bind a partner to a sharing policy (same as `update --policy`).
    #[command(after_help = "\
Examples:
  threatmesh peer set-policy --partner isp.example --policy isp-feed")]
    SetPolicy {
        /// Partner org id.
        #[arg(long)]
        partner: String,
        /// Policy name (applied earlier with `threatmesh policy apply`).
        #[arg(long)]
        policy: String,
    },
    /// Stop sending to a partner and refuse its connections; its open
    /// connections are closed at once. Its cursor is kept.
    #[command(after_help = "\
Examples:
  threatmesh peer suspend --partner isp.example   # stop sending and receiving at once
  threatmesh peer resume --partner isp.example")]
    Suspend {
        /// Partner org id.
        #[arg(long)]
        partner: String,
    },
    /// Undo `suspend`: the partner resumes from its own cursor.
    #[command(after_help = "\
Examples:
  threatmesh peer resume --partner isp.example")]
    Resume {
        /// Partner org id.
        #[arg(long)]
        partner: String,
    },
    /// Hard stop: nothing more leaves for the partner and it is no longer
    /// trusted or dialled. Its cursor, card and history stay for the audit;
    /// `peer add --card` registers it again.
    #[command(after_help = "\
Examples:
  threatmesh peer remove --partner isp.example
  threatmesh peer add --card isp.example.card --policy isp-feed   # to register it again")]
    Remove {
        /// Partner org id.
        #[arg(long)]
        partner: String,
    },
    /// Send a partner what its current policy allows and it was never sent:
    /// after a policy was loosened, indicators withheld under the old one.
    /// Our log (or the part stored since --since) is decided again, each
    /// decision on the ledger; the partner receives the newly allowed ones
    /// on its subscription, now or when it next connects.
    #[command(after_help = "\
Examples:
  threatmesh policy apply isp-feed-v2.toml          # loosened: AMBER now allowed
  threatmesh peer resend --partner isp.example      # send what v1 withheld
  threatmesh peer resend --partner isp.example --since 2026-11-01T00:00:00Z
Nothing is sent twice: versions the partner already got are not offered.")]
    Resend {
        /// Partner org id.
        #[arg(long)]
        partner: String,
        /// Only what we stored at or after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Read a partner's log again from the start: our cursor in it goes
    /// back to 0 and the link subscribes again. For a partner whose store
    /// was replaced by hand (without `threatmesh store restore`), which
    /// reuses sequence numbers we would otherwise skip. Safe: what we hold
    /// already is not stored twice.
    #[command(after_help = "\
Examples:
  threatmesh peer reset-cursor --partner cert.example")]
    ResetCursor {
        /// Partner org id.
        #[arg(long)]
        partner: String,
    },
    /// List registered partners.
    #[command(after_help = "\
Examples:
  threatmesh peer list
  threatmesh peer list --json | jq -r 'select(.state != \"active\") | .org'")]
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Cards of other (non-partner) orgs that arrived through the mesh:
    /// accepted (from an introducer, or approved) or pending.
    #[command(after_help = "\
Examples:
  threatmesh peer cards                 # cards of non-partner orgs, pending or accepted
  threatmesh peer approve-card bka.example")]
    Cards {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Trust a pending card of another org: its keys verify indicators from
    /// now on, and its quarantined indicators are verified and released.
    #[command(after_help = "\
Compare the printed key ids and CA fingerprint with the org out of band first:
  threatmesh peer cards
  threatmesh peer approve-card ncsc.example")]
    #[command(after_help = "\
Examples:
  threatmesh peer cards                 # see what is pending, with fingerprints
  threatmesh peer approve-card bka.example")]
    ApproveCard {
        /// Org id of the pending card.
        org: String,
    },
    /// Everything about one partner: card, policy, state, cursor, CRL.
    #[command(after_help = "\
Examples:
  threatmesh peer show --partner isp.example
  threatmesh peer show --partner isp.example --json")]
    Show {
        /// Partner org id.
        #[arg(long)]
        partner: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn peer_json(p: &Peer) -> serde_json::Value {
    serde_json::json!({
        "org": p.org, "display_name": p.display_name, "country": p.country,
        "sector": p.sector, "endpoint": p.endpoint, "policy": p.policy,
        "state": p.state, "introducer": p.introducer, "card_version": p.card_version,
        "added_unix_ms": p.added_unix_ms, "cursor": p.cursor,
        "ca_fingerprints": p.ca_fingerprints, "signing_key_ids": p.signing_key_ids,
        "crl_revoked": p.crl_revoked, "crl_next_update_unix_ms": p.crl_next_update_unix_ms,
    })
}

fn card_json(c: &DirectoryCard) -> serde_json::Value {
    serde_json::json!({
        "org": c.org, "display_name": c.display_name, "card_version": c.card_version,
        "state": c.state, "via": c.via, "updated_unix_ms": c.updated_unix_ms,
        "signing_key_ids": c.signing_key_ids, "ca_fingerprints": c.ca_fingerprints,
    })
}

fn print_peer(p: &Peer) {
    super::card::print_org(&p.org, &p.display_name, &p.country, &p.sector);
    out!("state:        {}", p.state);
    out!("dial:         {}", dash(&p.endpoint));
    out!(
        "policy:       {}",
        if p.policy.is_empty() {
            "none (receives nothing)".to_string()
        } else {
            p.policy.clone()
        }
    );
    out!("introducer:   {}", if p.introducer { "yes" } else { "no" });
    out!("card version: {}", p.card_version);
    out!("cursor:       {}", p.cursor);
    for f in &p.ca_fingerprints {
        out!("CA SHA-256:   {f}");
    }
    for k in &p.signing_key_ids {
        out!("signing key:  {k}");
    }
    if p.crl_next_update_unix_ms != 0 || p.crl_revoked != 0 {
        out!(
            "CRL:          {} revoked, next update {}",
            p.crl_revoked,
            super::audit::rfc3339(p.crl_next_update_unix_ms)
        );
    }
}

/// Runs a peer command.
pub async fn run(config: &Path, conn: &ClientArgs, cmd: &PeerCommand) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    match cmd {
        PeerCommand::Add {
            card,
            endpoint,
            policy,
            introducer,
        } => {
            add(
                &mut a,
                card,
                endpoint.as_deref(),
                policy.as_deref(),
                *introducer,
            )
            .await
        }
        PeerCommand::Update {
            partner,
            endpoint,
            policy,
            introducer,
        } => {
            let req = UpdatePeerRequest {
                org: partner.clone(),
                endpoint: endpoint.clone(),
                policy: policy.clone(),
                introducer: *introducer,
            };
            update(&mut a, req).await
        }
        PeerCommand::SetPolicy { partner, policy } => set_policy(&mut a, partner, policy).await,
        PeerCommand::Suspend { partner } => set_state(&mut a, partner, PeerAction::Suspend).await,
        PeerCommand::Resume { partner } => set_state(&mut a, partner, PeerAction::Resume).await,
        PeerCommand::Remove { partner } => set_state(&mut a, partner, PeerAction::Remove).await,
        PeerCommand::List { json } => list(&mut a, *json).await,
        PeerCommand::Cards { json } => cards(&mut a, *json).await,
        PeerCommand::ApproveCard { org } => approve_card(&mut a, org).await,
        PeerCommand::Show { partner, json } => show(&mut a, partner, *json).await,
        PeerCommand::Resend { partner, since } => {
            let since_unix_ms = since
                .as_deref()
                .map(|s| super::publish::parse_rfc3339_ms("--since", s))
                .transpose()
                .map_err(CliError::Usage)?
                .unwrap_or(0);
            let r = rpc!(
                a,
                resend_to_peer(ResendToPeerRequest {
                    partner: partner.clone(),
                    since_unix_ms,
                })
            );
            if r.from_seq == 0 {
                out!("nothing stored since then: nothing to decide again for {partner}");
            } else {
                out!(
                    "{partner}: seq {}..={} decided again under its current policy; {} indicator(s) now allowed and never sent go out on its subscription (now, or when it next connects); each decision is on the ledger",
                    r.from_seq,
                    r.up_to_seq,
                    r.newly_allowed
                );
            }
            Ok(())
        }
        PeerCommand::ResetCursor { partner } => {
            let r = rpc!(
                a,
                reset_cursor(PeerRequest {
                    org: partner.to_string(),
                })
            );
            out!(
                "{partner}: cursor {} -> 0; its log is read again from the start",
                r.was
            );
            Ok(())
        }
    }
}

/// `peer add`.
async fn add(
    a: &mut AdminSession,
    card: &Path,
    endpoint: Option<&str>,
    policy: Option<&str>,
    introducer: bool,
) -> Result<(), CliError> {
    let text = std::fs::read_to_string(card)
        .map_err(|e| CliError::Usage(format!("--card {}: {e}", card.display())))?;
    let env = crate::identity::envelope_from_json(&text)
        .map_err(|e| CliError::Usage(format!("--card {}: {e}", card.display())))?;
    let r = rpc!(
        a,
        add_peer(AddPeerRequest {
            card: Some(env),
            endpoint: endpoint.map(str::to_string),
            policy: policy.unwrap_or_default().to_string(),
            introducer,
        })
    );
    let p = r.peer.unwrap_or_default();
    out!(
        "{} partner {}",
        if r.added { "registered" } else { "updated" },
        p.org
    );
    print_peer(&p);
    if p.policy.is_empty() {
        out!(
            "no sharing policy bound: {} receives nothing until `threatmesh peer set-policy --partner {} --policy NAME`",
            p.org,
            p.org
        );
    }
    out!(
        "Compare the CA fingerprint and signing key with {} out of band.",
        p.org
    );
    Ok(())
}

/// `peer update`.
async fn update(a: &mut AdminSession, req: UpdatePeerRequest) -> Result<(), CliError> {
    let partner = req.org.clone();
    let r = rpc!(a, update_peer(req));
    out!("updated {partner}");
    print_peer(&r.peer.unwrap_or_default());
    Ok(())
}

/// `peer set-policy`.
async fn set_policy(a: &mut AdminSession, partner: &str, policy: &str) -> Result<(), CliError> {
    rpc!(
        a,
        update_peer(UpdatePeerRequest {
            org: partner.to_string(),
            policy: Some(policy.to_string()),
            ..Default::default()
        })
    );
    out!("{partner} is now bound to policy {policy}");
    Ok(())
}

/// `peer suspend|resume|remove`.
async fn set_state(
    a: &mut AdminSession,
    partner: &str,
    action: PeerAction,
) -> Result<(), CliError> {
    let r = rpc!(
        a,
        set_peer_state(SetPeerStateRequest {
            org: partner.to_string(),
            action: action as i32,
        })
    );
    let now = r.peer.map(|p| p.state).unwrap_or_default();
    out!(
        "{partner}: {} -> {now} (applied on the node now)",
        r.previous_state
    );
    Ok(())
}

/// `peer list`.
async fn list(a: &mut AdminSession, json: bool) -> Result<(), CliError> {
    let peers = rpc!(a, list_peers(ListPeersRequest {})).peers;
    listing(
        &peers,
        json,
        peer_json,
        "no partners registered (add one with `threatmesh peer add --card FILE`)",
        &[
            col("ORG"),
            col("NAME"),
            col("STATE"),
            col("POLICY"),
            col("ENDPOINT"),
            num("CURSOR"),
        ],
        |p| {
            vec![
                p.org.clone(),
                p.display_name.clone(),
                p.state.clone(),
                dash(&p.policy),
                dash(&p.endpoint),
                p.cursor.to_string(),
            ]
        },
    );
    Ok(())
}

/// `peer cards`.
async fn cards(a: &mut AdminSession, json: bool) -> Result<(), CliError> {
    let cards = rpc!(a, list_cards(ListCardsRequest {})).cards;
    listing(
        &cards,
        json,
        card_json,
        "no cards of other orgs have arrived through the mesh",
        &[
            col("ORG"),
            col("NAME"),
            col("STATE"),
            num("VERSION"),
            col("SIGNING KEYS"),
            col("VIA"),
        ],
        |c| {
            vec![
                c.org.clone(),
                c.display_name.clone(),
                c.state.clone(),
                c.card_version.to_string(),
                c.signing_key_ids.join(","),
                c.via.clone(),
            ]
        },
    );
    Ok(())
}

/// `peer approve-card`.
async fn approve_card(a: &mut AdminSession, org: &str) -> Result<(), CliError> {
    let c = rpc!(
        a,
        approve_card(ApproveCardRequest {
            org: org.to_string(),
        })
    );
    out!(
        "{} card v{} is {}; its quarantined indicators are verified and released",
        c.org,
        c.card_version,
        c.state
    );
    for f in &c.ca_fingerprints {
        out!("  CA SHA-256:   {f}");
    }
    for k in &c.signing_key_ids {
        out!("  signing key:  {k}");
    }
    Ok(())
}

/// `peer show`.
async fn show(a: &mut AdminSession, partner: &str, json: bool) -> Result<(), CliError> {
    let p = rpc!(
        a,
        show_peer(PeerRequest {
            org: partner.to_string(),
        })
    )
    .peer
    .unwrap_or_default();
    if json {
        out!("{}", peer_json(&p));
    } else {
        print_peer(&p);
    }
    Ok(())
}
