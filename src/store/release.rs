//! What was released to whom: the ledger rows of each batch a partner
//! stream sends, and the (origin, id, recipient) record that lets a later
//! revocation reach every past recipient. Committed in groups.

use std::collections::HashSet;

use tokio::sync::{mpsc, oneshot};

use super::{ROWS_PER_STATEMENT, Store, StoreError};
use crate::audit::AuditEntry;
use crate::model::OrgId;

/// The ledger rows and recipients of one batch released to a partner,
/// waiting for the group commit.
pub(super) struct ReleaseWrite {
    entries: Vec<AuditEntry>,
    recipient: OrgId,
    sent: Vec<(String, String)>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl std::fmt::Debug for ReleaseWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseWrite").finish_non_exhaustive()
    }
}

impl Store {
    /// Queues the ledger entries of one batch released to `recipient`, and
    /// which indicators (origin, id) it was sent, for the next group commit,
    /// and returns at once with what resolves when they are durable, so a
    /// stream can prepare its next batch meanwhile (the batch itself is sent
    /// only after that resolves).
    pub async fn enqueue_release(
        &self,
        entries: Vec<AuditEntry>,
        recipient: &OrgId,
        sent: Vec<(String, String)>,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (done, result) = oneshot::channel();
        let write = ReleaseWrite {
            entries,
            recipient: recipient.clone(),
            sent,
            done,
        };
        self.releases
            .send(write)
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        Ok(result)
    }

    /// Commits queued release records of every partner stream in groups:
    /// one transaction for all the streams waiting at that moment.
    pub(super) async fn release_writer(self, mut queue: mpsc::Receiver<ReleaseWrite>) {
        const GROUP: usize = 1024;
        let mut group = Vec::with_capacity(GROUP);
        while self.next_group(&mut queue, &mut group, GROUP, |_| 1).await > 0 {
            let result = self.commit_releases(&group).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "group commit of release records failed");
            }
            for w in group.drain(..) {
                let _ = w.done.send(result.clone());
            }
        }
    }

    async fn commit_releases(&self, group: &[ReleaseWrite]) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let now = self.now();
        let entries: Vec<AuditEntry> = group
            .iter()
            .flat_map(|w| w.entries.iter().cloned())
            .collect();
        self.append_audit_tx(&mut tx, &entries).await?;
        let sent: Vec<(&str, &str, &str)> = group
            .iter()
            .flat_map(|w| {
                w.sent
                    .iter()
                    .map(move |(o, i)| (o.as_str(), i.as_str(), w.recipient.as_str()))
            })
            .collect();
        for chunk in sent.chunks(ROWS_PER_STATEMENT * 4) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO sent_to (origin_org, indicator_id, recipient, first_sent_ms) ",
            );
            q.push_values(chunk, |mut b, (o, i, r)| {
                b.push_bind(o.to_string())
                    .push_bind(i.to_string())
                    .push_bind(r.to_string())
                    .push_bind(now);
            });
            q.push(" ON CONFLICT DO NOTHING");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Which of `indicators` (origin, id) were ever sent to `recipient`.
    pub async fn sent_before(
        &self,
        recipient: &OrgId,
        indicators: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let mut out = HashSet::new();
        for (origin, id) in indicators {
            let hit: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM sent_to WHERE origin_org = ? AND indicator_id = ? AND recipient = ?",
            )
            .bind(origin)
            .bind(id)
            .bind(recipient.as_str())
            .fetch_optional(&self.pool)
            .await?;
            if hit.is_some() {
                out.insert((origin.clone(), id.clone()));
            }
        }
        Ok(out)
    }
}
