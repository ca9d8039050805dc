//! The newest stretch of the log, read once and shared by every live
//! subscriber stream: a new batch costs one store read (and, through the
//! rows' shared decode cells, one decode per row), not one per subscriber.
//!
//! Rows this process commits go on the tail as soon as their commit is
//! written, before it is synced, each stretch tagged with its commit: a
//! stream may decide on them and record its release while the sync runs
//! ([`Store::read_written_after`]), and sends them only once it is done.
//! Every other read stops at the newest row on disk.

use super::db::{on, sql};
use super::log::IndicatorRow;
use super::wal::Unsynced;
use super::{Store, StoreError, StoredIndicator, to_i64};

/// The newest stretch of the log, read once and shared by every live
/// subscriber stream, so a new batch costs one store read (and one decode
/// per row), not one per subscriber.
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// Consecutive rows, oldest first.
    rows: std::collections::VecDeque<StoredIndicator>,
    /// Their [`weight`] in all.
    bytes: usize,
    /// SQLite: for rows committed here whose commit may not be synced yet,
    /// the last row of each commit and the commit's number, oldest first.
    commits: std::collections::VecDeque<(u64, u64)>,
}

/// Most rows the tail keeps.
const TAIL_ROWS: usize = 8192;
/// Most memory the tail keeps, by [`weight`]: large envelopes mean fewer
/// rows, so the tail never holds more than this whatever their size.
const TAIL_BYTES: usize = 8 << 20;

/// What a row held in the tail costs: its envelope, and about as much
/// again for the indicator decoded from it once a stream has decided on it.
fn weight(r: &StoredIndicator) -> usize {
    2 * r.envelope.len() + r.path.iter().map(|p| p.len() + 24).sum::<usize>() + 128
}

impl Store {
    /// Up to `limit` rows with `seq > after`, in order; on SQLite only
    /// rows on disk (see [`Store::given_out_up_to`]).
    pub async fn read_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredIndicator>, StoreError> {
        let on_disk = self.given_out_up_to();
        let (mut rows, _) = self.read_tail_first(after, limit).await?;
        rows.retain(|r| to_i64(r.seq) <= on_disk);
        Ok(rows)
    }

    /// Up to `limit` rows with `seq > after`, in order, including rows
    /// this process committed whose commit is not yet on disk, and what
    /// resolves once it is (`None` when every row returned is on disk
    /// already). For a stream that decides on rows, and records its
    /// release, while their commit is synced: it must not send them before
    /// that resolves.
    pub(crate) async fn read_written_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<StoredIndicator>, Option<Unsynced>), StoreError> {
        let (rows, commit) = self.read_tail_first(after, limit).await?;
        match (commit, self.wal()) {
            (Some(n), Some(wal)) => Ok((
                rows,
                Some(Unsynced {
                    wal: wal.clone(),
                    n,
                }),
            )),
            _ => Ok((rows, None)),
        }
    }

    /// Up to `limit` rows with `seq > after` from the tail when it covers
    /// them (whether on disk or not: then with the commit to wait for),
    /// else from the store (on disk only).
    async fn read_tail_first(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<StoredIndicator>, Option<u64>), StoreError> {
        let limit = limit as usize;
        let tail = self.tail.lock().await;
        let first = tail.rows.front().map(|r| r.seq);
        let last = tail.rows.back().map(|r| r.seq);
        // Served from the shared tail when it covers `after + 1` onwards...
        if let (Some(first), Some(last)) = (first, last)
            && first <= after.saturating_add(1)
            && after < last
        {
            let skip = tail.rows.partition_point(|r| r.seq <= after);
            let rows: Vec<_> = tail.rows.iter().skip(skip).take(limit).cloned().collect();
            // The commit of the last row returned covers those before it.
            let commit = rows.last().and_then(|r| {
                tail.commits
                    .iter()
                    .find(|(up_to, _)| *up_to >= r.seq)
                    .map(|(_, n)| *n)
            });
            return Ok((rows, commit));
        }
        // ...else read from the store. Rows that directly follow the tail
        // extend it (a reader beyond the tail starts it afresh), shared by
        // every reader; the lock is held meanwhile so concurrent readers of
        // the same new rows wait for this read instead of repeating it.
        // Readers behind the tail (catching up) read without it.
        let mut tail = last.is_none_or(|l| l <= after).then_some(tail);
        let rows: Vec<IndicatorRow> = on!(Pool, &self.pool, db => sqlx::query_as(sql!(super::log::select_indicators!(
            "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
        )))
        .bind(to_i64(after))
        .bind(self.given_out_up_to())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(db)
        .await?);
        let rows: Vec<StoredIndicator> = rows.into_iter().map(Into::into).collect();
        if let Some(t) = tail.as_mut() {
            t.append(after, &rows, None);
        }
        Ok((rows, None))
    }

    /// Puts rows this process just committed on the tail, so the streams
    /// it wakes find them there instead of reading them back. Only rows
    /// numbered one after another: nothing can then lie between them. If
    /// the tail does not end right before the first (a row written
    /// elsewhere — another process, another replica — or by a path that
    /// does not come here), it starts afresh at them, and a stream further
    /// back reads from the store as before: no row is ever skipped.
    /// `commit` is the number of the SQLite commit that wrote them, when
    /// it may not be synced yet.
    pub(super) async fn extend_tail(&self, rows: Vec<StoredIndicator>, commit: Option<u64>) {
        let Some(first) = rows.first().map(|r| r.seq) else {
            return;
        };
        if self.wal().is_none() || rows.windows(2).any(|w| w[1].seq != w[0].seq + 1) {
            return;
        }
        let on_disk = self.given_out_up_to();
        let mut tail = self.tail.lock().await;
        tail.append(first - 1, &rows, commit);
        // Commits up to the newest row on disk need no waiting for.
        while tail
            .commits
            .front()
            .is_some_and(|(up_to, _)| to_i64(*up_to) <= on_disk)
        {
            tail.commits.pop_front();
        }
    }
}

impl Tail {
    /// Adds `rows`, which follow row `after` (written by SQLite commit
    /// `commit`, if it may not be on disk yet): the tail starts afresh if
    /// it does not end there; the oldest rows go beyond its bounds.
    fn append(&mut self, after: u64, rows: &[StoredIndicator], commit: Option<u64>) {
        let Some(last) = rows.last().map(|r| r.seq) else {
            return;
        };
        if self.rows.back().is_some_and(|r| r.seq != after) {
            self.rows.clear();
            self.commits.clear();
            self.bytes = 0;
        }
        if let Some(n) = commit {
            self.commits.push_back((last, n));
        }
        for r in rows {
            self.bytes += weight(r);
            self.rows.push_back(r.clone());
        }
        while self.rows.len() > TAIL_ROWS || (self.bytes > TAIL_BYTES && self.rows.len() > 1) {
            if let Some(r) = self.rows.pop_front() {
                self.bytes -= weight(&r);
            }
        }
        let first = self.rows.front().map_or(0, |r| r.seq);
        while self
            .commits
            .front()
            .is_some_and(|(up_to, _)| *up_to < first)
        {
            self.commits.pop_front();
        }
    }
}
