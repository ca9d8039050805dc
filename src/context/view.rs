//! The node's view of its partners — trust store, signing keys, bound
//! policies and the cards it passes on — built by one pure function from
//! what the store holds, and swapped as one value so no reader ever sees
//! two generations mixed.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use crate::identity::{StaleCrl, TrustStore, open_crl};
use crate::model::OrgId;
use crate::policy::PartnerPolicy;
use crate::proto::v1::{Envelope, OrgCard};
use crate::signing::{KeyDirectory, KnownKey};
use crate::store::{
    CardState, CrlRow, DirectoryRow, OwnKeyRow, PeerRecord, PeerState, PolicyRecord,
};

/// Cards this node can pass on, by org: its own, its partners' and the
/// accepted cards of other orgs, each with its version.
pub type CardMap = HashMap<OrgId, (u64, Arc<Envelope>)>;

/// Partner → the latest version of the policy bound to it.
pub type PolicyMap = HashMap<OrgId, Arc<PartnerPolicy>>;

/// Everything the node trusts and applies about other orgs, at one moment.
#[derive(Debug)]
pub struct PartnerView {
    /// Per-org trusted CAs, revocations and blocked partners.
    pub trust: Arc<TrustStore>,
    /// Trusted signing keys, ours and other orgs'.
    pub keys: Arc<KeyDirectory>,
    /// Each partner's bound policy; read at send time, so a change applies
    /// to everything not yet sent.
    pub policies: PolicyMap,
    /// Cards we pass on with the indicators of their orgs.
    pub cards: CardMap,
}

/// What a [`PartnerView`] is built from: the store's rows and our own card.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewInput {
    /// Registered partners.
    pub peers: Vec<PeerRecord>,
    /// The latest version of every policy.
    pub policies: Vec<PolicyRecord>,
    /// Serials of our revoked certificates.
    pub revoked: Vec<String>,
    /// Partners' imported CRLs.
    pub crls: Vec<CrlRow>,
    /// Cards of non-partner orgs.
    pub directory: Vec<DirectoryRow>,
    /// Our own signing keys.
    pub own_keys: Vec<OwnKeyRow>,
    /// Other orgs' trusted signing keys.
    pub keys: Vec<KnownKey>,
    /// Our current card.
    pub own_card: Envelope,
}

/// Settings the view depends on besides the store.
#[derive(Debug, Clone, Copy)]
pub struct ViewSettings<'a> {
    /// Our org.
    pub own: &'a OrgId,
    /// Our CA bundle.
    pub own_ca_pem: &'a str,
    /// What a stale partner CRL means.
    pub stale_crl: StaleCrl,
}

/// The version of a card (0 if it does not decode).
pub fn card_version(env: &Envelope) -> u64 {
    OrgCard::decode(env.payload.as_slice())
        .map(|c| c.version)
        .unwrap_or(0)
}

/// Builds the view from `input`. Pure. Problems that leave one partner out
/// (a CA bundle or policy that does not parse, a CRL that no longer
/// verifies, a conflicting key) are returned as warnings naming it; the
/// rest of the view is still built. Fails only if our own CA is unusable.
pub fn build_view(
    s: ViewSettings<'_>,
    input: &ViewInput,
) -> Result<(PartnerView, Vec<String>), crate::identity::IdentityError> {
    let mut warnings = Vec::new();
    let mut policies = PolicyMap::new();
    for p in input
        .peers
        .iter()
        .filter(|p| p.state == PeerState::Active && !p.policy.is_empty())
    {
        let Some(rec) = input.policies.iter().find(|r| r.name == p.policy) else {
            warnings.push(format!(
                "{}: bound policy '{}' not found; partner receives nothing",
                p.org, p.policy
            ));
            continue;
        };
        match crate::policy::parse_policy(&rec.document) {
            Ok(mut parsed) => {
                parsed.version = rec.version;
                policies.insert(p.org.clone(), Arc::new(parsed));
            }
            Err(e) => warnings.push(format!(
                "{}: stored policy {}@{} does not parse ({e}); partner receives nothing",
                p.org, rec.name, rec.version
            )),
        }
    }
    let mut trust = TrustStore::new(s.own.clone(), s.own_ca_pem)?;
    trust.set_revoked(input.revoked.iter().cloned());
    trust.set_stale_crl(s.stale_crl);
    for p in &input.peers {
        if p.state != PeerState::Active {
            trust.block(p.org.clone(), p.state.as_str());
            continue;
        }
        if let Err(e) = trust.set_partner(p.org.clone(), &p.ca_bundle_pem) {
            warnings.push(format!(
                "{}: CA bundle unusable ({e}); partner skipped",
                p.org
            ));
            continue;
        }
        // Re-checked against the partner's current CA bundle: a CRL that no
        // longer verifies is not silently dropped but refuses the partner,
        // as a revocation we cannot read must.
        if let Some(row) = input.crls.iter().find(|c| c.org == p.org) {
            match open_crl(&p.org, &p.ca_bundle_pem, &row.der) {
                Ok(crl) => trust.set_crl(crl),
                Err(e) => {
                    warnings.push(format!(
                        "{}: stored CRL no longer verifies ({e}); partner refused until a valid CRL is imported",
                        p.org
                    ));
                    trust.block(p.org.clone(), "refused (its CRL does not verify)");
                }
            }
        }
    }
    let mut keys = KeyDirectory::default();
    let own_keys = input.own_keys.iter().map(|k| KnownKey {
        key_id: k.key_id.clone(),
        org: s.own.clone(),
        public_key: k.public_key.clone(),
        not_before_ms: k.not_before_ms,
        not_after_ms: k.not_after_ms,
        revoked: k.revoked_ms != 0,
    });
    for k in own_keys.chain(input.keys.iter().cloned()) {
        if let Err(e) = keys.insert(k) {
            warnings.push(format!("conflicting signing key skipped: {e}"));
        }
    }
    let mut cards = CardMap::new();
    let own_card = Arc::new(input.own_card.clone());
    cards.insert(s.own.clone(), (card_version(&own_card), own_card));
    for p in &input.peers {
        if let Ok(env) = Envelope::decode(p.card.as_slice()) {
            cards.insert(p.org.clone(), (p.card_version, Arc::new(env)));
        }
    }
    for d in input
        .directory
        .iter()
        .filter(|d| d.state == CardState::Accepted)
    {
        if let Ok(env) = Envelope::decode(d.card.as_slice()) {
            cards.insert(d.org.clone(), (d.version, Arc::new(env)));
        }
    }
    let view = PartnerView {
        trust: Arc::new(trust),
        keys: Arc::new(keys),
        policies,
        cards,
    };
    Ok((view, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::identity::{SpiffeId, generate_ca, sign_crl};
    use std::time::Duration;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    /// A partner's CRL turns stale with time alone: on tokio's paused
    /// clock, the view built while it is fresh accepts the partner's node,
    /// and refuses it once the clock passes the CRL's next update (the
    /// default `refuse` policy) — no sleeping, no rebuild.
    #[tokio::test(start_paused = true)]
    async fn a_partner_crl_turns_stale_on_the_clock_and_refuses_the_partner() {
        let (a, b) = (org("a.example"), org("b.example"));
        let a_ca = generate_ca(&a, 30).unwrap();
        let b_ca = generate_ca(&b, 30).unwrap();
        let t0 = 1_800_000_000_000;
        let clock = Clock::anchored(t0);
        let crl = sign_crl(&b_ca.cert_pem, &b_ca.key_pem, &[], 1, t0, 60_000).unwrap();
        let peer = PeerRecord {
            org: b.clone(),
            display_name: "B".into(),
            endpoint: String::new(),
            card_version: 1,
            ca_bundle_pem: b_ca.cert_pem.clone(),
            added_ms: t0,
            policy: String::new(),
            state: PeerState::Active,
            introducer: false,
            card: Vec::new(),
        };
        let input = ViewInput {
            peers: vec![peer],
            policies: Vec::new(),
            revoked: Vec::new(),
            crls: vec![CrlRow {
                org: b.clone(),
                der: crl.into_bytes(),
            }],
            directory: Vec::new(),
            own_keys: Vec::new(),
            keys: Vec::new(),
            own_card: Envelope::default(),
        };
        let settings = ViewSettings {
            own: &a,
            own_ca_pem: &a_ca.cert_pem,
            stale_crl: StaleCrl::Refuse,
        };
        let (view, warnings) = build_view(settings, &input).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let node_b = SpiffeId::node(&b);
        view.trust
            .check_connection(&node_b, "01", clock.now_ms())
            .expect("fresh CRL: B's node is accepted");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            view.trust
                .check_connection(&node_b, "01", clock.now_ms())
                .is_ok()
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = view
            .trust
            .check_connection(&node_b, "01", clock.now_ms())
            .unwrap_err();
        assert!(e.to_string().contains("CRL"), "{e}");
    }
}
