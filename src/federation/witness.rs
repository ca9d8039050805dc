//! Witnessing a partner's ledger: at intervals a link asks its partner for
//! its signed ledger head, naming the rows of the latest head it holds; the
//! answer must extend that head (no rows removed, the same hash at the row
//! we hold). A head that does is kept; one that does not goes on our ledger
//! as `ledger-inconsistent` and in the node log, once per link session.

use tonic::transport::Channel;

use crate::audit::witness::{Witnessed, check_succession, open_head};
use crate::context::NodeContext;
use crate::model::OrgId;
use crate::proto::v1::GetLedgerHeadRequest;
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::store::StoreError;

/// Asks `partner` for its ledger head and checks it against the one held.
/// `reported` is set once a disagreement was put on record this session.
pub async fn witness(
    ctx: &NodeContext,
    partner: &OrgId,
    client: &mut ExchangeClient<Channel>,
    reported: &mut bool,
) -> Result<(), StoreError> {
    let held = ctx.store.latest_witnessed(partner).await?;
    let asked = held.as_ref().map_or(0, |h| h.rows);
    let mut req = tonic::Request::new(GetLedgerHeadRequest {
        witnessed_rows: asked,
    });
    // A partner that does not answer holds up only its own link, briefly.
    req.set_timeout(std::time::Duration::from_secs(10));
    let env = match client.get_ledger_head(req).await {
        Ok(r) => r.into_inner().head,
        Err(status) => {
            // Not fatal for the link: an older node, or a busy one.
            tracing::debug!(partner = %partner, %status, "ledger head not given");
            return Ok(());
        }
    };
    let Some(env) = env else {
        return Ok(());
    };
    let keys = ctx.view.load().keys.clone();
    let checked = open_head(&env, &keys, partner)
        .and_then(|head| check_succession(held.as_ref(), asked, &head).map(|()| head));
    match checked {
        Ok(head) => {
            let kept = Witnessed {
                rows: head.rows,
                head_hash: head.head_hash,
            };
            if held.is_none_or(|h| h.rows < kept.rows) {
                use prost::Message;
                ctx.store
                    .keep_witnessed(partner, &kept, head.signed_unix_ms, &env.encode_to_vec())
                    .await?;
            }
            Ok(())
        }
        Err(why) => {
            if !*reported {
                *reported = true;
                tracing::error!(partner = %partner, reason = %why, "partner's ledger disagrees with the head we witnessed");
                ctx.store.record_witness_problem(partner, &why).await?;
            }
            Ok(())
        }
    }
}
