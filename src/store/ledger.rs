//! The audit ledger: appending chained rows (inside any write transaction)
//! and reading them back for `audit log` and `audit verify`.

use super::db::{on, sql};
use super::{ROWS_PER_STATEMENT, Store, StoreError, Tx, to_i64};
use crate::audit::witness::Witnessed;
use crate::audit::{AuditEntry, AuditEntryOwned, AuditRow, ChainBreak, row_hash, verify_chain};

/// What SQLite says when appended rows do not follow the stored ledger
/// head (the trigger `audit_follows_head`, migration 0022).
const NOT_FOLLOWING: &str = "audit row does not follow the ledger head";

/// An `audit` row as read.
#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(try_from = "i64")]
    seq: u64,
    at_ms: i64,
    event: String,
    actor: String,
    partner: String,
    subject: String,
    rule: String,
    detail: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl From<Row> for AuditRow {
    fn from(r: Row) -> Self {
        AuditRow {
            seq: r.seq,
            at_ms: r.at_ms,
            entry: AuditEntryOwned {
                event: r.event,
                actor: r.actor,
                partner: r.partner,
                subject: r.subject,
                rule: r.rule,
                detail: r.detail,
            },
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

impl Store {
    /// Appends entries to the audit ledger in their own transaction.
    pub async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (_writing, mut tx) = self.write_tx().await?;
        self.append_audit_with(&mut tx, entries, &[], Then::Commit)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends entries to the chain inside `tx` (which holds the write lock).
    ///
    /// The rows are chained from the head this process last wrote, and
    /// that head is moved on only if it is still the stored one: on SQLite
    /// by the insert itself (a trigger moves the head, another refuses rows
    /// that do not follow it: one statement), on PostgreSQL by a guarded
    /// update (`… WHERE seq = ? AND hash = ?`) before the insert. Only when
    /// the stored head is another is it read and the rows hashed again
    /// from it. Either way the rows chain from the head stored in this
    /// transaction.
    pub(super) async fn append_audit_tx(
        &self,
        tx: &mut Tx,
        entries: &[AuditEntry],
    ) -> Result<(), StoreError> {
        self.append_audit_with(tx, entries, &[], Then::More).await
    }

    /// [`Store::append_audit_tx`], `leads` written first in the same
    /// transaction: on SQLite in the query of the ledger rows' insert when
    /// they are few (see [`Lead`], [`ROWS_RIDING`]), else each on its own.
    /// With [`Then::Commit`] the caller commits `tx` next and runs nothing
    /// else on it: on SQLite's writing connection the commit may ride in
    /// the query of the rows' insert.
    pub(super) async fn append_audit_with(
        &self,
        tx: &mut Tx,
        entries: &[AuditEntry],
        leads: &[Lead<'_>],
        then: Then,
    ) -> Result<(), StoreError> {
        let ride = matches!(tx, Tx::Sqlite(_))
            && !entries.is_empty()
            && leads.iter().map(Lead::rows).sum::<usize>() <= ROWS_RIDING;
        if !ride {
            run_leads(tx, leads).await?;
        }
        // Cleared once they ran: ridden by an insert that went through or
        // was refused for not following the head (it runs after them).
        let mut leads = if ride { leads } else { &[] };
        if entries.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let cached = self
            .ledger_head
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut moved = None;
        if let Some(Witnessed {
            rows: seq,
            head_hash: hash,
        }) = cached
        {
            let rows = chain(seq, hash.clone(), now, entries);
            let (last, last_hash) = head_of(&rows, seq, &hash);
            let followed = if matches!(tx, Tx::Sqlite(_)) {
                // The insert moves the stored head, or is refused whole if
                // the rows do not follow it (triggers of migration 0022);
                // the commit rides in its query if nothing else follows.
                let commit = then == Then::Commit && tx.held_write().is_some();
                let inserted = insert_audit_rows(tx, now, &rows, leads, commit).await;
                match inserted {
                    Ok(()) => {
                        if let (true, Some(held)) = (commit, tx.held_write()) {
                            held.committed_by_query();
                        }
                        true
                    }
                    Err(StoreError::Database(e)) if e.contains(NOT_FOLLOWING) => {
                        leads = &[];
                        false
                    }
                    Err(e) => return Err(e),
                }
            } else {
                let done = on!(Tx, &mut *tx, db => sqlx::query(sql!("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1 AND seq = ? AND hash = ?",))
                    .bind(to_i64(last))
                    .bind(last_hash.clone())
                    .bind(to_i64(seq))
                    .bind(hash)
                    .execute(&mut **db)
                    .await.map(|r| r.rows_affected())?);
                if done == 1 {
                    insert_audit_rows(tx, now, &rows, &[], false).await?;
                }
                done == 1
            };
            if followed {
                moved = Some((last, last_hash));
            }
        }
        let head = match moved {
            Some(head) => head,
            None => {
                let stored: Option<(i64, Vec<u8>)> = on!(Tx, &mut *tx, db => sqlx::query_as(sql!("SELECT seq, hash FROM audit_head WHERE id = 1"))
                        .fetch_optional(&mut **db)
                        .await?);
                let (seq, hash) = stored
                    .map(|(s, h)| (s as u64, h))
                    .unwrap_or((0, crate::audit::GENESIS.to_vec()));
                let rows = chain(seq, hash.clone(), now, entries);
                let (last, last_hash) = head_of(&rows, seq, &hash);
                insert_audit_rows(tx, now, &rows, leads, false).await?;
                on!(Tx, &mut *tx, db => sqlx::query(sql!("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET seq = ?1, hash = ?2",))
                .bind(to_i64(last))
                .bind(last_hash.clone())
                .execute(&mut **db)
                .await.map(|r| r.rows_affected())?);
                (last, last_hash)
            }
        };
        // Kept only once every statement went through; a transaction that
        // is rolled back later leaves a head the next guard does not find.
        let (rows, head_hash) = head;
        *self.ledger_head.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Witnessed { rows, head_hash });
        Ok(())
    }

    /// Ledger rows, oldest first, optionally for one partner and from a time.
    pub async fn audit_rows(
        &self,
        partner: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        read_audit(&mut tx, partner, since_ms).await
    }

    /// Checks the whole ledger; `Ok(rows)` or the first bad row.
    pub async fn verify_audit(&self) -> Result<Result<u64, ChainBreak>, StoreError> {
        // Rows and head from one snapshot, so a concurrent append cannot
        // look like a truncation.
        let mut tx = self.pool.begin().await?;
        let rows = read_audit(&mut tx, None, None).await?;
        let head: Option<(i64, Vec<u8>)> = on!(Tx, &mut tx, db => sqlx::query_as(sql!("SELECT seq, hash FROM audit_head WHERE id = 1"))
                .fetch_optional(&mut **db)
                .await?);
        // Every indicator and partner was put on the ledger when it came:
        // an empty ledger beside them was removed, not never written.
        let held: i64 = if rows.is_empty() {
            on!(Tx, &mut tx, db => sqlx::query_scalar(sql!("SELECT (SELECT COUNT(*) FROM indicators) + (SELECT COUNT(*) FROM peers)",))
            .fetch_one(&mut **db)
            .await?)
        } else {
            0
        };
        tx.commit().await?;
        if held > 0 {
            return Ok(Err(ChainBreak {
                seq: 1,
                reason: format!(
                    "the ledger is empty but the store holds {held} indicators and partners (the ledger was removed)"
                ),
            }));
        }
        Ok(verify_chain(&rows, head.map(|(s, h)| (s as u64, h))))
    }

    /// Number of rows in the audit ledger.
    pub async fn count_audit(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT seq FROM audit_head WHERE id = 1"))
            .fetch_optional(db)
            .await?);
        Ok(n.unwrap_or(0) as u64)
    }
}

impl Store {
    /// The release decisions (`sent`, `withheld`) about indicator `id` of
    /// `origin`, any version, for each of `partners`, oldest first. Rows
    /// are read per partner (indexed), and matched on their subjects
    /// (one row may decide several indicators).
    pub async fn decisions_about(
        &self,
        origin: &str,
        id: &str,
        partners: &[String],
    ) -> Result<Vec<AuditRow>, StoreError> {
        let needle = format!("{origin}/{id}#");
        let mut out = Vec::new();
        for p in partners {
            let rows: Vec<Row> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT seq, at_ms, event, actor, partner, subject, rule, detail, prev_hash, hash FROM audit \
                 WHERE partner = ?1 AND event IN ('sent', 'withheld') AND instr(subject, ?2) > 0 ORDER BY seq",))
            .bind(p)
            .bind(&needle)
            .fetch_all(db)
            .await?);
            out.extend(rows.into_iter().map(AuditRow::from));
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }
}

/// A ledger row to insert: its number, entry, previous and own hash.
type Chained<'a> = (u64, &'a AuditEntry, Vec<u8>, Vec<u8>);

/// `entries` hashed into rows after row `seq` whose hash is `prev`.
fn chain(mut seq: u64, mut prev: Vec<u8>, now: i64, entries: &[AuditEntry]) -> Vec<Chained<'_>> {
    entries
        .iter()
        .map(|e| {
            seq += 1;
            let hash = row_hash(
                &prev, seq, now, e.event, &e.actor, &e.partner, &e.subject, &e.rule, &e.detail,
            )
            .to_vec();
            (seq, e, std::mem::replace(&mut prev, hash.clone()), hash)
        })
        .collect()
}

/// The head after `rows` (`seq`, `hash` when there are none).
fn head_of(rows: &[Chained<'_>], seq: u64, hash: &[u8]) -> (u64, Vec<u8>) {
    rows.last()
        .map(|(s, _, _, h)| (*s, h.clone()))
        .unwrap_or((seq, hash.to_vec()))
}

/// Inserts `rows`; `leads` (SQLite only) go first in the query of the
/// first chunk, so they cost no round trip of their own.
async fn insert_audit_rows(
    tx: &mut Tx,
    now: i64,
    rows: &[Chained<'_>],
    mut leads: &[Lead<'_>],
    commit: bool,
) -> Result<(), StoreError> {
    let chunks = rows.len().div_ceil(ROWS_PER_STATEMENT);
    for (n, chunk) in rows.chunks(ROWS_PER_STATEMENT).enumerate() {
        on!(Tx, &mut *tx, db => {
        let mut q = sqlx::QueryBuilder::<DB>::new("");
        for lead in std::mem::take(&mut leads) {
            lead.push(&mut q);
            q.push("; ");
        }
        q.push(
            "INSERT INTO audit (seq, at_ms, event, actor, partner, subject, rule, detail, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut b, (seq, e, prev, hash)| {
            b.push_bind(to_i64(*seq))
                .push_bind(now)
                .push_bind(e.event)
                .push_bind(e.actor.clone())
                .push_bind(e.partner.clone())
                .push_bind(e.subject.clone())
                .push_bind(e.rule.clone())
                .push_bind(e.detail.clone())
                .push_bind(prev.clone())
                .push_bind(hash.clone());
        });
        if commit && n + 1 == chunks {
            q.push(super::db::COMMIT_RIDING);
        }
        q.build().execute(&mut **db).await?;
        });
    }
    Ok(())
}

/// What follows a ledger append in its transaction (see
/// [`Store::append_audit_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// More statements, or a commit the caller makes on its own.
    More,
    /// Only the commit.
    Commit,
}

/// A write that rides with its transaction's ledger append instead of
/// taking a round trip of its own: SQLite runs every statement of a query
/// in one hand-off to its database thread, in order, so leads go in the
/// query of the ledger rows' insert, before it; PostgreSQL takes one
/// statement per query, so there each runs on its own first. Either way
/// they are written before the ledger rows, in the same transaction.
pub(super) enum Lead<'a> {
    /// An ingested batch's cursor (see `Store::ingest_batch`).
    Cursor(super::ingest::CursorMove<'a>),
    /// Indicator versions recorded as sent (see
    /// `Store::commit_with_releases`).
    Sent(super::release::SentRows<'a>),
}

/// At most this many rows, in all the leads of one append, ride in the
/// query of the ledger rows' insert (a live stream's batch, an ingest's
/// cursor); more (a group of many streams' releases) are written by
/// statements of their own. The connection keeps every query text it ran
/// prepared (up to 100), so a query carrying a statement of hundreds of
/// rows kept megabytes each: with every lead riding, a node serving 1,000
/// subscribers peaked at 961 MB against 338 MB.
pub(super) const ROWS_RIDING: usize = 16;

impl Lead<'_> {
    /// Rows the lead's statement writes.
    fn rows(&self) -> usize {
        match self {
            Lead::Cursor(_) => 1,
            Lead::Sent(s) => s.rows(),
        }
    }

    /// Pushes the lead's statement (without a `;`) onto `q`.
    fn push<DB: sqlx::Database>(&self, q: &mut sqlx::QueryBuilder<DB>)
    where
        for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        match self {
            Lead::Cursor(c) => c.push(q),
            Lead::Sent(s) => s.push(q),
        }
    }
}

/// Runs each of `leads` on its own (no ledger insert to ride with).
async fn run_leads(tx: &mut Tx, leads: &[Lead<'_>]) -> Result<(), StoreError> {
    for lead in leads {
        on!(Tx, &mut *tx, db => {
            let mut q = sqlx::QueryBuilder::<DB>::new("");
            lead.push(&mut q);
            q.build().execute(&mut **db).await?;
        });
    }
    Ok(())
}

async fn read_audit(
    tx: &mut Tx,
    partner: Option<&str>,
    since_ms: Option<i64>,
) -> Result<Vec<AuditRow>, StoreError> {
    let rows: Vec<Row> = on!(Tx, &mut *tx, db => sqlx::query_as(sql!("SELECT seq, at_ms, event, actor, partner, subject, rule, detail, prev_hash, hash FROM audit \
         WHERE (?1 IS NULL OR partner = ?1) AND (?2 IS NULL OR at_ms >= ?2) ORDER BY seq",))
    .bind(partner)
    .bind(since_ms)
    .fetch_all(&mut **db)
    .await?);
    Ok(rows.into_iter().map(Into::into).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    /// On SQLite the insert of ledger rows moves the stored head (no
    /// statement of its own), and the schema itself refuses a row that does
    /// not follow the head — a wrong number or a wrong previous hash — so
    /// a writer with a stale head finds out and chains from the stored one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ledger_rows_move_the_head_and_a_row_that_does_not_follow_it_is_refused() {
        let dir = crate::store::scratch_dir("ledger");
        let path = dir.join("store.db");
        let store = Store::open_sqlite(&path, crate::clock::Clock::system())
            .await
            .unwrap();
        let entry = |n: u32| AuditEntry::published("test", format!("indicator {n}"));
        // The first append writes the head; the second moves it by the
        // insert alone.
        store.append_audit(&[entry(1)]).await.unwrap();
        store.append_audit(&[entry(2), entry(3)]).await.unwrap();
        assert_eq!(store.count_audit().await.unwrap(), 3);
        let head = store.ledger_head().await.unwrap();
        assert_eq!(head.rows, 3);

        let url = format!("sqlite://{}", path.display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let forged = |seq: i64, prev: Vec<u8>| {
            sqlx::query(
                "INSERT INTO audit (seq, at_ms, event, actor, partner, subject, rule, detail, prev_hash, hash) \
                 VALUES (?, 0, 'published', 'x', '', 'x', '', '', ?, ?)",
            )
            .bind(seq)
            .bind(prev)
            .bind(vec![7u8; 32])
        };
        for (seq, prev, what) in [
            (4, vec![0u8; 32], "a wrong previous hash"),
            (5, head.head_hash.clone(), "a skipped number"),
        ] {
            let e = forged(seq, prev).execute(&mut db).await.unwrap_err();
            assert!(e.to_string().contains(NOT_FOLLOWING), "{what}: {e}");
        }
        // Another writer moves the head on: this handle's next append
        // finds its own head stale and chains from the stored one.
        forged(4, head.head_hash.clone())
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
        store.append_audit(&[entry(5)]).await.unwrap();
        assert_eq!(store.count_audit().await.unwrap(), 5);
        let rows = store.audit_rows(None, None).await.unwrap();
        assert_eq!(rows[4].prev_hash, rows[3].hash);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write led by a ledger append (an ingest's cursor) is written with
    /// the ledger rows however the head is found — not cached yet (read),
    /// cached (the insert moves it), or moved by another writer (the
    /// insert is refused after the lead ran, and the rows are chained
    /// again from the stored head without it) — alone when there is
    /// nothing to append, and not at all when the transaction rolls back.
    /// With the head cached the commit rides in the insert's query (the
    /// rows are visible to another connection before `commit` is called);
    /// after a rollback the next transaction writes and rides again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lead_is_written_with_the_ledger_rows_however_the_head_is_found() {
        let dir = crate::store::scratch_dir("leads");
        let path = dir.join("store.db");
        let store = Store::open_sqlite(&path, crate::clock::Clock::system())
            .await
            .unwrap();
        let up = crate::model::OrgId::parse("up.example").unwrap();
        let entry = |n: u32| AuditEntry::published("test", format!("indicator {n}"));
        let url = format!("sqlite://{}", path.display());
        // Ledger rows another connection sees.
        let seen = |url: String| async move {
            let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit")
                .fetch_one(&mut db)
                .await
                .unwrap();
            db.close().await.unwrap();
            n
        };
        let append = |n: i64, entries: Vec<AuditEntry>, commit: bool| {
            let (store, url) = (store.clone(), url.clone());
            async move {
                let (_writing, mut tx) = store.write_tx().await.unwrap();
                let lead = Lead::Cursor(super::super::ingest::CursorMove {
                    upstream: "up.example",
                    cursor: n,
                    updated_ms: 0,
                    log_id: "log-1",
                });
                let then = if commit { Then::Commit } else { Then::More };
                store
                    .append_audit_with(&mut tx, &entries, &[lead], then)
                    .await
                    .unwrap();
                // Seen before the commit only if the commit rode.
                let before = seen(url).await;
                if commit {
                    tx.commit().await.unwrap();
                }
                before
            }
        };
        assert_eq!(append(10, vec![entry(1)], true).await, 0, "head read");
        assert_eq!(store.cursor(&up).await.unwrap(), 10, "head read");
        assert_eq!(append(20, vec![entry(2), entry(3)], true).await, 3);
        assert_eq!(store.cursor(&up).await.unwrap(), 20, "head cached");
        assert_eq!(store.count_audit().await.unwrap(), 3);

        let head = store.ledger_head().await.unwrap();
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO audit (seq, at_ms, event, actor, partner, subject, rule, detail, prev_hash, hash) \
             VALUES (4, 0, 'published', 'x', '', 'x', '', '', ?, ?)",
        )
        .bind(head.head_hash.clone())
        .bind(vec![7u8; 32])
        .execute(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
        assert_eq!(append(30, vec![entry(5)], true).await, 4, "chained again");
        assert_eq!(store.cursor(&up).await.unwrap(), 30, "head moved elsewhere");
        assert_eq!(store.count_audit().await.unwrap(), 5);
        let rows = store.audit_rows(None, None).await.unwrap();
        assert_eq!(rows[4].prev_hash, rows[3].hash);

        append(40, Vec::new(), true).await;
        assert_eq!(store.cursor(&up).await.unwrap(), 40, "nothing to append");
        assert_eq!(append(50, vec![entry(6)], false).await, 5);
        assert_eq!(store.cursor(&up).await.unwrap(), 40, "rolled back");
        assert_eq!(store.count_audit().await.unwrap(), 5);
        // The head kept by the rolled-back append is not the stored one:
        // chained again from the stored head, then cached and riding.
        assert_eq!(
            append(60, vec![entry(7)], true).await,
            5,
            "after a rollback"
        );
        assert_eq!(store.cursor(&up).await.unwrap(), 60, "after a rollback");
        assert_eq!(append(70, vec![entry(8)], true).await, 7, "riding again");
        assert_eq!(store.cursor(&up).await.unwrap(), 70, "riding again");
        let rows = store.audit_rows(None, None).await.unwrap();
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[5].prev_hash, rows[4].hash);
        assert_eq!(rows[6].prev_hash, rows[5].hash);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
