//! What was released to whom: the ledger rows of each batch a partner
//! stream sends, and the (origin, id, recipient) record that lets a later
//! revocation reach every past recipient, with the highest version sent,
//! so a resend offers only what was never sent. Committed in groups.
//! Also the pending `peer resend` requests.

use std::collections::{HashMap, HashSet};

use tokio::sync::{mpsc, oneshot};

use super::db::{Tx, on, sql};
use super::ingest::CursorMove;
use super::ledger::{Lead, Then};
use super::wal::Unsynced;
use super::{ROWS_PER_STATEMENT, Store, StoreError, WriteLock};
use crate::audit::AuditEntry;
use crate::model::OrgId;

/// Longest a release record committed without a sync of its own waits
/// for one (see [`Store::release_writer`]).
pub const SYNC_WITHIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The ledger head (rows, hash of the last) and the hash of an asked row.
pub(super) type SyncedHead = (Option<(i64, Vec<u8>)>, Option<Vec<u8>>);

/// The ledger rows and recipients of one batch released to a partner,
/// waiting for the group commit.
pub(super) struct ReleaseWrite {
    entries: Vec<AuditEntry>,
    recipient: OrgId,
    sent: Vec<Sent>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// An indicator version released to a partner: origin, id, version.
pub type Sent = (String, String, u64);

/// A pending `peer resend`: the log rows to re-decide for a partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendRequest {
    /// First sequence number to re-decide.
    pub from_seq: u64,
    /// Last one (the log's end when it was asked).
    pub up_to_seq: u64,
    /// When it was asked: identifies this request, so one asked while an
    /// earlier one runs is not removed with it.
    pub requested_ms: i64,
}

/// One row per (origin, id, recipient) that `group` sent, with the highest
/// version sent (SQLite refuses an upsert that touches a row twice), in key
/// order: the rows of one indicator for every recipient go to neighbouring
/// index pages instead of random ones.
fn sent_rows(group: &[ReleaseWrite]) -> Vec<SentRow<'_>> {
    let mut sent: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for w in group {
        for (o, i, v) in &w.sent {
            let e = sent
                .entry((o.as_str(), i.as_str(), w.recipient.as_str()))
                .or_default();
            *e = (*e).max(*v);
        }
    }
    let mut sent: Vec<_> = sent.into_iter().collect();
    sent.sort_unstable();
    sent
}

/// (origin, id, recipient) and the highest version sent.
type SentRow<'a> = ((&'a str, &'a str, &'a str), u64);

/// Indicator versions recorded as sent, first sent at `now`: written with
/// the ledger rows of their release (see [`super::ledger::Lead`]).
pub(super) struct SentRows<'a> {
    /// What was sent, from [`sent_rows`].
    rows: &'a [SentRow<'a>],
    /// When.
    now: i64,
}

impl SentRows<'_> {
    /// Rows the upsert writes.
    pub(super) fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Pushes the rows' upsert onto `q`: a partner is never offered a
    /// version it was sent again, and `max_version` never goes down.
    pub(super) fn push<DB: sqlx::Database>(&self, q: &mut sqlx::QueryBuilder<DB>)
    where
        for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        q.push("INSERT INTO sent_to (origin_org, indicator_id, recipient, first_sent_ms, max_version) ");
        q.push_values(self.rows, |mut b, ((o, i, r), v)| {
            b.push_bind(*o)
                .push_bind(*i)
                .push_bind(*r)
                .push_bind(self.now)
                .push_bind(super::to_i64(*v));
        });
        q.push(
            " ON CONFLICT (origin_org, indicator_id, recipient) DO UPDATE \
             SET max_version = CASE WHEN excluded.max_version > sent_to.max_version \
             THEN excluded.max_version ELSE sent_to.max_version END",
        );
    }
}

/// Tells each of `writes` how its commit went.
pub(super) fn answer_releases(
    writes: impl IntoIterator<Item = ReleaseWrite>,
    result: &Result<(), StoreError>,
) {
    for w in writes {
        let _ = w.done.send(result.clone());
    }
}

impl ReleaseWrite {
    /// Whether it has no ledger entry and no indicator sent.
    fn records_nothing(&self) -> bool {
        self.entries.is_empty() && self.sent.is_empty()
    }
}

impl std::fmt::Debug for ReleaseWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseWrite").finish_non_exhaustive()
    }
}

impl Store {
    /// Queues the ledger entries of one batch released to `recipient`, and
    /// which indicator versions it was sent, for the next group commit,
    /// and returns at once with what resolves when they are durable, so a
    /// stream can prepare its next batch meanwhile (the batch itself is sent
    /// only after that resolves, and after the sync of the rows it carries).
    pub async fn enqueue_release(
        &self,
        entries: Vec<AuditEntry>,
        recipient: &OrgId,
        sent: Vec<Sent>,
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
    ///
    /// While a group waits for the write lock it is left where the node's
    /// durable commits (publishes, ingest) take it (see
    /// [`Store::take_releases`]): a node that is writing anyway commits its
    /// release records with that write, and only what no such write took is
    /// committed here, in a transaction of its own. A group releasing rows
    /// whose commit is still being synced is committed during that sync, so
    /// its batches leave as soon as it ends. A group with nothing to record
    /// is answered without a transaction.
    ///
    /// On SQLite a batch is answered (and sent) once its records are
    /// written to the log, before they are synced (they survive the
    /// process): the next sync of the log puts them on disk. None waits
    /// longer than [`SYNC_WITHIN`] for that: a group committed when the
    /// oldest unsynced one is that old is synced at once, and a writer
    /// left idle syncs what it committed. This takes a sync
    /// off the path of every relayed indicator.
    pub(super) async fn release_writer(self, mut queue: mpsc::Receiver<ReleaseWrite>) {
        const GROUP: usize = 1024;
        let mut group = Vec::with_capacity(GROUP);
        // When the oldest release record not yet synced was committed, and
        // the number of the last commit of release records.
        let mut unsynced: Option<tokio::time::Instant> = None;
        let mut last = 0;
        loop {
            let got = match unsynced {
                Some(since) => tokio::select! {
                    n = self.next_group(&mut queue, &mut group, GROUP, |_| 1) => n,
                    _ = tokio::time::sleep_until(since + SYNC_WITHIN) => {
                        self.sync_releases_through(last).await;
                        unsynced = None;
                        continue;
                    }
                },
                None => self.next_group(&mut queue, &mut group, GROUP, |_| 1).await,
            };
            if got == 0 {
                break;
            }
            // Nothing to record (a resend's flush, streams whose batches
            // decided nothing): answered without a transaction. Whatever
            // was queued before is answered already.
            if group.iter().all(ReleaseWrite::records_nothing) {
                answer_releases(group.drain(..), &Ok(()));
                continue;
            }
            self.leave_releases(group.drain(..));
            // Waiting for the lock, what else is queued joins them.
            let lock = self.writing.clone().lock_owned();
            tokio::pin!(lock);
            let mut open = true;
            let guard = loop {
                tokio::select! {
                    guard = &mut lock => break guard,
                    w = queue.recv(), if open => match w {
                        Some(w) => self.leave_releases([w]),
                        None => open = false,
                    },
                }
            };
            let group = self.take_releases();
            if group.is_empty() {
                // A durable commit took them.
                continue;
            }
            let result = match self.begin_locked(guard).await {
                Ok((_writing, tx)) => self.commit_with_releases(tx, Vec::new(), group, None).await,
                Err(e) => {
                    answer_releases(group, &Err(e.clone()));
                    Err(e)
                }
            };
            match result {
                Err(e) => tracing::error!(error = %e, "group commit of release records failed"),
                Ok(Some(written)) => {
                    last = written.n;
                    let since = *unsynced.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= SYNC_WITHIN {
                        self.sync_releases_through(last).await;
                        unsynced = None;
                    }
                }
                // PostgreSQL: on disk already.
                Ok(None) => unsynced = None,
            }
        }
        if unsynced.is_some() {
            self.sync_releases_through(last).await;
        }
    }

    /// Puts release writes where a durable commit can take them.
    fn leave_releases(&self, writes: impl IntoIterator<Item = ReleaseWrite>) {
        self.pending_releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(writes);
    }

    /// Takes the release writes waiting for the write lock, for a
    /// transaction that holds it to commit with its own writes (see
    /// [`Store::commit_with_releases`]); whoever takes them answers them
    /// with [`answer_releases`].
    pub(super) fn take_releases(&self) -> Vec<ReleaseWrite> {
        std::mem::take(
            &mut *self
                .pending_releases
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Ends a transaction that stores log rows (publishes, ingest): appends
    /// `entries` to the ledger with the release records waiting for the
    /// lock, commits, puts the rows `written` on the tail (in commit
    /// order, before the lock is given up) so streams decide on them while
    /// the commit is synced, gives up the write lock, and returns once the
    /// commit is on disk and the log moved on to them — the next
    /// transaction is written meanwhile.
    pub(super) async fn commit_log_rows(
        &self,
        (writing, tx): WriteLock,
        entries: Vec<AuditEntry>,
        written: Vec<super::StoredIndicator>,
        cursor: Option<CursorMove<'_>>,
    ) -> Result<(), StoreError> {
        let taken = self.take_releases();
        let unsynced = self
            .commit_with_releases(tx, entries, taken, cursor)
            .await?;
        let newest = written.iter().map(|r| r.seq).max();
        self.extend_tail(written, unsynced.as_ref().map(|u| u.n))
            .await;
        drop(writing);
        if let Some(seq) = newest {
            self.bump_written(seq);
        }
        if let Some(u) = unsynced {
            u.synced().await?;
        }
        if let Some(seq) = newest {
            self.bump(seq);
        }
        Ok(())
    }

    /// Appends `entries` and the ledger rows of the release writes `taken`
    /// (from [`Store::take_releases`]) to the ledger inside `tx`, records
    /// what those sent, and commits. `taken` are answered once the commit
    /// is written (all a release record waits for, see
    /// [`Store::release_writer`]); what is returned resolves once it is on
    /// disk, for the caller to await after giving up the write lock.
    async fn commit_with_releases(
        &self,
        mut tx: Tx,
        mut entries: Vec<AuditEntry>,
        taken: Vec<ReleaseWrite>,
        cursor: Option<CursorMove<'_>>,
    ) -> Result<Option<Unsynced>, StoreError> {
        let result = async {
            entries.extend(taken.iter().flat_map(|w| w.entries.iter().cloned()));
            // What was sent, and an ingest's cursor, ride with the ledger
            // rows (one round trip on SQLite).
            let sent = sent_rows(&taken);
            let now = self.now();
            let mut leads: Vec<Lead<'_>> = cursor.into_iter().map(Lead::Cursor).collect();
            leads.extend(
                sent.chunks(ROWS_PER_STATEMENT * 3)
                    .map(|rows| Lead::Sent(SentRows { rows, now })),
            );
            self.append_audit_with(&mut tx, &entries, &leads, Then::Commit)
                .await?;
            Ok(tx.commit_unsynced().await?)
        }
        .await;
        answer_releases(taken, &result.as_ref().map(drop).map_err(Clone::clone));
        result
    }

    /// Puts release records committed without a sync of their own, up to
    /// commit `n`, on disk (at once if a sync since covered them); a
    /// failure is logged (the next sync puts them there).
    async fn sync_releases_through(&self, n: u64) {
        if let Some(wal) = self.wal()
            && let Err(e) = wal.sync_through(n).await
        {
            tracing::error!(error = %e, "syncing release records to disk failed");
        }
    }

    /// The ledger head (rows, hash of the last) and the hash of row `at`
    /// (if asked and held), read in one transaction so the two agree, and
    /// on disk when this returns: a release record committed without a
    /// sync of its own is synced first, so a head given to a witness never
    /// covers a row a power cut could undo.
    pub(super) async fn synced_head(&self, at: Option<u64>) -> Result<SyncedHead, StoreError> {
        const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
        const ROW: &str = "SELECT hash FROM audit WHERE seq = ?";
        // One snapshot for both reads.
        let mut tx = self.pool.begin().await?;
        let head = on!(Tx, &mut tx, db => sqlx::query_as(sql!(HEAD))
            .fetch_optional(&mut **db)
            .await?);
        let hash_at = match at {
            Some(0) => Some(crate::audit::GENESIS.to_vec()),
            Some(seq) => on!(Tx, &mut tx, db => sqlx::query_scalar(sql!(ROW))
                .bind(super::to_i64(seq))
                .fetch_optional(&mut **db)
                .await?),
            None => None,
        };
        tx.commit().await?;
        // Whatever the snapshot saw was in the log before this sync.
        self.sync_all().await?;
        Ok((head, hash_at))
    }

    /// Which of `indicators` (origin, id) were ever sent to `recipient`.
    pub async fn sent_before(
        &self,
        recipient: &OrgId,
        indicators: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let mut out = HashSet::new();
        for (origin, id) in indicators {
            let hit: Option<i64> = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT CAST(1 AS BIGINT) FROM sent_to WHERE origin_org = ? AND indicator_id = ? AND recipient = ?",))
            .bind(origin)
            .bind(id)
            .bind(recipient.as_str())
            .fetch_optional(db)
            .await?);
            if hit.is_some() {
                out.insert((origin.clone(), id.clone()));
            }
        }
        Ok(out)
    }

    /// The rows of `rows` whose version `recipient` was never sent (a
    /// newer version than any it got, or an indicator it never got).
    pub async fn never_sent(
        &self,
        recipient: &OrgId,
        rows: Vec<super::StoredIndicator>,
    ) -> Result<Vec<super::StoredIndicator>, StoreError> {
        let keys: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.origin_org.clone(), r.indicator_id.clone()))
            .collect();
        let sent = self.sent_versions(recipient, &keys).await?;
        Ok(rows
            .into_iter()
            .zip(keys)
            .filter(|(r, key)| sent.get(key).is_none_or(|v| r.version > *v))
            .map(|(r, _)| r)
            .collect())
    }

    /// The highest version of each of `indicators` (origin, id) sent to
    /// `recipient`; absent when none was.
    pub async fn sent_versions(
        &self,
        recipient: &OrgId,
        indicators: &[(String, String)],
    ) -> Result<HashMap<(String, String), u64>, StoreError> {
        let mut out = HashMap::new();
        for (origin, id) in indicators {
            let v: Option<i64> = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT max_version FROM sent_to WHERE origin_org = ? AND indicator_id = ? AND recipient = ?",))
            .bind(origin)
            .bind(id)
            .bind(recipient.as_str())
            .fetch_optional(db)
            .await?);
            if let Some(v) = v {
                out.insert((origin.clone(), id.clone()), v.max(0) as u64);
            }
        }
        Ok(out)
    }

    /// Records a `peer resend` of rows `from_seq..=up_to_seq` for
    /// `recipient` (merged with one still pending) and its ledger `entry`.
    pub async fn request_resend(
        &self,
        recipient: &OrgId,
        (from_seq, up_to_seq): (u64, u64),
        actor: &str,
        entry: AuditEntry,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO resend_requests (recipient, from_seq, up_to_seq, requested_ms, requested_by) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (recipient) DO UPDATE SET \
             from_seq = MIN(resend_requests.from_seq, excluded.from_seq), \
             up_to_seq = MAX(resend_requests.up_to_seq, excluded.up_to_seq), \
             requested_ms = MAX(excluded.requested_ms, resend_requests.requested_ms + 1), \
             requested_by = excluded.requested_by",))
        .bind(recipient.as_str())
        .bind(super::to_i64(from_seq))
        .bind(super::to_i64(up_to_seq))
        .bind(self.now())
        .bind(actor)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        self.commit_with(tx, &[entry]).await
    }

    /// The pending `peer resend` for `recipient`, if any.
    pub async fn resend_request(
        &self,
        recipient: &OrgId,
    ) -> Result<Option<ResendRequest>, StoreError> {
        let row: Option<(i64, i64, i64)> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT from_seq, up_to_seq, requested_ms FROM resend_requests WHERE recipient = ?",))
        .bind(recipient.as_str())
        .fetch_optional(db)
        .await?);
        Ok(row.map(|(f, u, r)| ResendRequest {
            from_seq: f.max(0) as u64,
            up_to_seq: u.max(0) as u64,
            requested_ms: r,
        }))
    }

    /// Removes `done`, the resend just carried out, unless another was
    /// asked meanwhile (which then runs too).
    pub async fn finish_resend(
        &self,
        recipient: &OrgId,
        done: &ResendRequest,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!("DELETE FROM resend_requests WHERE recipient = ? AND requested_ms = ?"))
            .bind(recipient.as_str())
            .bind(done.requested_ms)
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::ROWS_RIDING;
    use super::*;

    /// The indicator the tests release.
    fn subject() -> String {
        "indicator a.example/id-1 v1".to_string()
    }

    /// A new SQLite store in a scratch directory named for `tag`, with the
    /// partner b.example.
    async fn store_and_partner(tag: &str) -> (std::path::PathBuf, Store, OrgId) {
        let dir = crate::store::scratch_dir(tag);
        let store = Store::open_sqlite(&dir.join("store.db"), crate::clock::Clock::system())
            .await
            .unwrap();
        (dir, store, OrgId::parse("b.example").unwrap())
    }

    /// Queues the release of the test indicator to `b`.
    async fn release_to(store: &Store, b: &OrgId) -> oneshot::Receiver<Result<(), StoreError>> {
        let entries = vec![AuditEntry::sent(
            "b.example",
            subject(),
            "allow",
            "test".into(),
        )];
        let sent = vec![("a.example".into(), "id-1".into(), 1)];
        store.enqueue_release(entries, b, sent).await.unwrap()
    }

    /// Commits the release writes waiting for the lock with a publish's
    /// ledger row, in `tx`, checking there was one.
    async fn carry_with_a_publish(store: &Store, (writing, tx): WriteLock) {
        let taken = store.take_releases();
        assert_eq!(taken.len(), 1, "the release writer committed them itself");
        let own = vec![AuditEntry::published("test", subject())];
        store
            .commit_with_releases(tx, own, taken, None)
            .await
            .unwrap();
        drop(writing);
    }

    /// After `store` is closed: reopened, it holds the release to `b`
    /// once and the two ledger rows, chained; the directory is removed.
    async fn holds_the_release_and_the_publish(dir: &std::path::Path, b: &OrgId) {
        let store = Store::open_sqlite(&dir.join("store.db"), crate::clock::Clock::system())
            .await
            .unwrap();
        let asked = [("a.example".to_string(), "id-1".to_string())];
        assert_eq!(store.sent_before(b, &asked).await.unwrap().len(), 1);
        assert_eq!(store.count_audit().await.unwrap(), 2);
        assert_eq!(store.verify_audit().await.unwrap(), Ok(2));
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What a group of release writes sent is recorded whether it rides in
    /// the ledger rows' query (up to [`ROWS_RIDING`] rows) or, more,
    /// goes by statements of its own (past one statement's rows too): each
    /// (origin, id) once per recipient with the highest version sent, never
    /// lowered by a later release of an older version, and the ledger rows
    /// chained after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_release_group_sent_is_recorded_riding_or_alone() {
        let (dir, store, b) = store_and_partner("sent-rows").await;
        let write = |n: usize, version: u64| {
            let sent: Vec<Sent> = (0..n)
                .map(|i| ("a.example".to_string(), format!("id-{n}-{i}"), version))
                .collect();
            ReleaseWrite {
                entries: vec![AuditEntry::sent(
                    "b.example",
                    subject(),
                    "allow",
                    "test".into(),
                )],
                recipient: b.clone(),
                sent,
                done: oneshot::channel().0,
            }
        };
        let mut commits = 0;
        for n in [1, ROWS_RIDING, ROWS_RIDING + 1, ROWS_PER_STATEMENT * 3 + 7] {
            for version in [3, 2] {
                let (writing, tx) = store.write_tx().await.unwrap();
                store
                    .commit_with_releases(
                        tx,
                        Vec::new(),
                        vec![write(n, version), write(n, 1)],
                        None,
                    )
                    .await
                    .unwrap();
                drop(writing);
                commits += 1;
            }
            let keys: Vec<(String, String)> = (0..n)
                .map(|i| ("a.example".to_string(), format!("id-{n}-{i}")))
                .collect();
            let sent = store.sent_versions(&b, &keys).await.unwrap();
            assert_eq!(sent.len(), n, "{n} rows");
            assert!(sent.values().all(|v| *v == 3), "{n} rows: {sent:?}");
        }
        store.sync_all().await.unwrap();
        assert_eq!(store.count_audit().await.unwrap(), commits * 2);
        assert_eq!(store.verify_audit().await.unwrap(), Ok(commits * 2));
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A release write left waiting for the write lock is committed by the
    /// durable commit holding it: answered with its outcome, its ledger row
    /// and `sent_to` record stored once, and the release writer, finding
    /// nothing left when the lock comes to it, commits nothing more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_commit_takes_the_release_records_waiting_for_the_lock() {
        let (dir, store, b) = store_and_partner("release").await;
        let guard = store.writing.clone().lock_owned().await;
        let pending = release_to(&store, &b).await;
        // The release writer leaves it for whoever holds the lock.
        while store.pending_releases.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        carry_with_a_publish(&store, store.begin_locked(guard).await.unwrap()).await;
        pending.await.unwrap().unwrap();
        // The writer gets the lock, finds nothing, and stops on close.
        store.close().await;
        holds_the_release_and_the_publish(&dir, &b).await;
    }

    /// A group with nothing to record (a resend's flush, streams whose
    /// batches decided nothing) is answered without a transaction, after
    /// what was queued before it; the next group with records is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_with_nothing_to_record_is_answered_without_a_commit() {
        let (dir, store, b) = store_and_partner("release-empty").await;
        let (commits_before, _) = store.commits_and_syncs();
        let first = release_to(&store, &b).await;
        let empty = store
            .enqueue_release(Vec::new(), &b, Vec::new())
            .await
            .unwrap();
        empty.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        let (commits, _) = store.commits_and_syncs();
        assert_eq!(commits, commits_before + 1, "only the records committed");
        store
            .enqueue_release(Vec::new(), &b, Vec::new())
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let (commits, _) = store.commits_and_syncs();
        assert_eq!(commits, commits_before + 1, "nothing committed for nothing");
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Release records of rows whose commit is still being synced are
    /// committed while that sync runs, not after it, so their batch leaves
    /// as soon as the sync ends (waiting for a write to carry them put a
    /// commit after the sync of every relayed row: BENCHMARKS.md, round
    /// two, step 12).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_records_of_rows_being_synced_are_committed_during_that_sync() {
        let (dir, store, b) = store_and_partner("release-during-sync").await;
        let wal = store.wal().expect("a SQLite store").clone();
        // A sync in flight that ends when the test says.
        let in_flight = wal.sync_in_flight().await;
        // The rows' commit (a publish), written and not yet synced.
        let (writing, mut tx) = store.write_tx().await.unwrap();
        let own = [AuditEntry::published("test", subject())];
        store.append_audit_tx(&mut tx, &own).await.unwrap();
        let rows = tx.commit_unsynced().await.unwrap().expect("a SQLite write");
        drop(writing);
        let (commits_before, _) = store.commits_and_syncs();
        let pending = release_to(&store, &b).await;
        // Answered while the rows' sync is still in flight (the bound only
        // turns a hang into a failure).
        tokio::time::timeout(std::time::Duration::from_secs(60), pending)
            .await
            .expect("the release records waited for the rows' sync")
            .unwrap()
            .unwrap();
        let (commits, _) = store.commits_and_syncs();
        assert_eq!(commits, commits_before + 1, "one commit of the records");
        drop(in_flight);
        rows.synced().await.unwrap();
        store.close().await;
        holds_the_release_and_the_publish(&dir, &b).await;
    }
}
