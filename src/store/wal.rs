//! When a SQLite commit is on disk.
//!
//! The writing connection commits with `synchronous=NORMAL`: a commit
//! writes its pages to the write-ahead log (where they survive the
//! process) without syncing it. A commit is made durable by syncing the
//! log file afterwards, outside the write lock, so the next transaction is
//! written while this one's sync runs, and one sync covers every commit
//! written before it (group commit). What must be on disk before it is
//! acknowledged or given out — a publish, an ingested batch and the
//! cursor covering it, a ledger head given to a witness — waits for
//! [`WalSync::sync_through`] first; what may wait (release records, see
//! `Store::release_writer`) is synced by the next sync of any kind.
//!
//! This is SQLite's own durability in `synchronous=FULL` mode (commit
//! frames written, then the log synced), with the sync moved after the
//! write lock: on a power cut the log is read back up to its last complete
//! commit, and every commit a sync returned for is before it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The write-ahead log of one SQLite store and how far it is synced.
#[derive(Debug)]
pub(crate) struct WalSync {
    /// The log file (`<database>-wal`).
    path: PathBuf,
    /// Commits counted so far (each counted once its frames are written).
    committed: AtomicU64,
    /// Commits known to be on disk.
    synced: AtomicU64,
    /// Syncs done (each may cover many commits).
    syncs: AtomicU64,
    /// Held while a sync runs: callers who need one wait for it rather
    /// than start another, and find their commit covered.
    syncing: tokio::sync::Mutex<()>,
    /// Syncs ended (done or failed), so everyone waiting for the one in
    /// flight wakes at once when it ends, not one after another through
    /// `syncing` (a thousand streams may wait for one sync).
    ended: tokio::sync::watch::Sender<u64>,
}

impl WalSync {
    /// The log of the database at `database`.
    pub(crate) fn new(database: &std::path::Path) -> Self {
        let mut path = database.as_os_str().to_owned();
        path.push("-wal");
        Self {
            path: path.into(),
            committed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            syncing: tokio::sync::Mutex::new(()),
            ended: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Counts a commit whose `COMMIT` just returned (its frames are in the
    /// log) and returns its number, for [`WalSync::sync_through`].
    pub(crate) fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Commits counted and syncs done so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.committed.load(Ordering::Acquire),
            self.syncs.load(Ordering::Relaxed),
        )
    }

    /// Commits counted that no sync has put on disk yet.
    pub(crate) fn unsynced(&self) -> u64 {
        self.committed
            .load(Ordering::Acquire)
            .saturating_sub(self.synced.load(Ordering::Acquire))
    }

    /// Returns once commit `n` (and every commit before it) is on disk:
    /// at once if a sync since its commit covered it, after the sync in
    /// flight if that covers it, else after a sync of its own.
    pub(crate) async fn sync_through(&self, n: u64) -> std::io::Result<()> {
        // Subscribed first: a sync ending from here on is seen.
        let mut ended = self.ended.subscribe();
        loop {
            if self.synced.load(Ordering::Acquire) >= n {
                return Ok(());
            }
            match self.syncing.try_lock() {
                Ok(syncing) => {
                    if self.synced.load(Ordering::Acquire) >= n {
                        return Ok(());
                    }
                    return self.sync_locked(syncing).await;
                }
                // One is running: see whether it covered `n` once it ends
                // (if it failed, the next turn starts one).
                Err(_) => {
                    let _ = ended.changed().await;
                }
            }
        }
    }

    /// Syncs whatever the log holds now: every commit a read made before
    /// this call could see is on disk when it returns.
    pub(crate) async fn sync_now(&self) -> std::io::Result<()> {
        let syncing = self.syncing.lock().await;
        self.sync_locked(syncing).await
    }

    /// Syncs the log, holding `syncing` (the lock of that name).
    async fn sync_locked(&self, syncing: tokio::sync::MutexGuard<'_, ()>) -> std::io::Result<()> {
        // Every commit counted by now has written its frames, so the sync
        // below covers it.
        let target = self.committed.load(Ordering::Acquire);
        let path = self.path.clone();
        // When this sync ends (or its caller is dropped first), the lock
        // is given up and then those waiting are told: they find their
        // commit covered, or start a sync of their own.
        let _ended = Ended {
            syncing: Some(syncing),
            ended: &self.ended,
        };
        let result = tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
            Ok(f) => f.sync_data(),
            // No log: SQLite removed it after checkpointing everything
            // into the database file, which it synced first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if result.is_ok() {
            self.synced.fetch_max(target, Ordering::AcqRel);
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// A sync in flight: when dropped, gives up the lock, then counts the
/// sync as ended (in that order, so a waiter woken can take the lock).
struct Ended<'a> {
    syncing: Option<tokio::sync::MutexGuard<'a, ()>>,
    ended: &'a tokio::sync::watch::Sender<u64>,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        drop(self.syncing.take());
        self.ended.send_modify(|n| *n += 1);
    }
}

/// A commit written to the log but perhaps not yet on disk: what
/// `Tx::commit_unsynced` returns, to be awaited once the write lock is
/// given up.
#[derive(Debug)]
pub(crate) struct Unsynced {
    /// The log.
    pub(crate) wal: std::sync::Arc<WalSync>,
    /// The commit's number.
    pub(crate) n: u64,
}

impl Unsynced {
    /// Returns once the commit is on disk.
    pub(crate) async fn synced(self) -> Result<(), super::StoreError> {
        self.wal.sync_through(self.n).await.map_err(not_on_disk)
    }
}

#[cfg(test)]
impl WalSync {
    /// Holds the sync lock as a sync in flight does, until what this
    /// returns is dropped (then those waiting are told it ended).
    pub(crate) async fn sync_in_flight(&self) -> impl Sized + '_ {
        Ended {
            syncing: Some(self.syncing.lock().await),
            ended: &self.ended,
        }
    }
}

#[cfg(test)]
impl Unsynced {
    /// The first commit of a log for the database at `database`, for tests
    /// of what waits for one.
    pub(crate) fn of_log_at(database: &std::path::Path) -> Self {
        let wal = std::sync::Arc::new(WalSync::new(database));
        let n = wal.committed();
        Self { wal, n }
    }

    /// Whether this commit is on disk, asked later.
    pub(crate) fn on_disk_probe(&self) -> impl Fn() -> bool + use<> {
        let (wal, n) = (self.wal.clone(), self.n);
        move || wal.synced.load(Ordering::Acquire) >= n
    }
}

/// A sync that failed, as a store error (a full disk is told as such).
pub(super) fn not_on_disk(e: std::io::Error) -> super::StoreError {
    super::StoreError::from(sqlx::Error::Io(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits are counted as written and covered by the first sync after
    /// them: one sync covers every commit before it, a commit a sync
    /// covered needs none of its own, and a missing log (checkpointed
    /// away) has nothing to sync.
    #[tokio::test]
    async fn one_sync_covers_every_commit_written_before_it() {
        let dir = crate::store::scratch_dir("wal");
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("store.db");
        let wal = WalSync::new(&db);
        assert_eq!(wal.path, dir.join("store.db-wal"));
        // No log yet: nothing to put on disk.
        let first = wal.committed();
        wal.sync_through(first).await.unwrap();
        assert_eq!(wal.unsynced(), 0);
        std::fs::write(&wal.path, b"frames").unwrap();
        let (second, third) = (wal.committed(), wal.committed());
        assert_eq!((second, third, wal.unsynced()), (2, 3, 2));
        wal.sync_through(second).await.unwrap();
        assert_eq!(wal.unsynced(), 0, "the sync covered the third commit too");
        wal.sync_through(third).await.unwrap();
        let fourth = wal.committed();
        assert_eq!(wal.unsynced(), 1);
        wal.sync_now().await.unwrap();
        assert_eq!((fourth, wal.unsynced()), (4, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Everyone waiting for the sync in flight wakes when it ends: they
    /// find their commit covered (no sync of their own), or, when it did
    /// not cover it (it failed, or its caller was dropped), one of them
    /// starts another — none is left waiting.
    #[tokio::test]
    async fn waiters_for_a_sync_wake_when_it_ends_whether_it_covered_them_or_not() {
        use futures_util::FutureExt;
        let dir = crate::store::scratch_dir("waiters");
        std::fs::create_dir_all(&dir).unwrap();
        let wal = WalSync::new(&dir.join("store.db"));
        std::fs::write(&wal.path, b"frames").unwrap();
        let n = wal.committed();
        // A sync in flight that covers `n`: a hundred waiters, all woken.
        let in_flight = Ended {
            syncing: Some(wal.syncing.lock().await),
            ended: &wal.ended,
        };
        let mut waiters: Vec<_> = (0..100).map(|_| Box::pin(wal.sync_through(n))).collect();
        for w in &mut waiters {
            assert!(
                w.as_mut().now_or_never().is_none(),
                "waits for the sync in flight"
            );
        }
        wal.synced.store(n, Ordering::Release);
        drop(in_flight);
        for w in waiters {
            w.await.unwrap();
        }
        // One that ends without covering the next commit: the waiter
        // starts a sync of its own.
        let m = wal.committed();
        let in_flight = Ended {
            syncing: Some(wal.syncing.lock().await),
            ended: &wal.ended,
        };
        let mut waiter = Box::pin(wal.sync_through(m));
        assert!(waiter.as_mut().now_or_never().is_none());
        drop(in_flight);
        waiter.await.unwrap();
        assert_eq!(wal.unsynced(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A row this process committed goes on the tail before its commit is
    /// synced: a stream may read it to decide on (with the commit to wait
    /// for before sending it), every other read still stops at the newest
    /// row on disk; once synced, the commit needs no waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_written_but_not_synced_is_read_with_the_commit_to_wait_for() {
        let dir = crate::store::scratch_dir("written");
        let (store, row, seq, unsynced) = one_row_not_synced(&dir).await;
        let written = store.watch_written();
        let latest = store.watch_latest();
        let n = unsynced.n;
        // What `Store::commit_log_rows` does between the commit and the sync.
        let stored = crate::store::StoredIndicator::written(seq, &row, "", 1000);
        store.extend_tail(vec![stored], Some(n)).await;
        store.bump_written(seq);
        assert!(written.has_changed().unwrap());
        assert!(!latest.has_changed().unwrap(), "nothing new on disk yet");
        assert!(store.read_after(0, 10).await.unwrap().is_empty());
        let (rows, wait) = store.read_written_after(0, 10).await.unwrap();
        assert_eq!(rows.len(), 1);
        let wait = wait.expect("its commit is not on disk yet");
        assert_eq!(wait.n, n);
        assert!(store.unsynced_commits() >= 1);
        wait.synced().await.unwrap();
        assert_eq!(store.unsynced_commits(), 0);
        store.bump(seq);
        assert!(latest.has_changed().unwrap());
        assert_eq!(store.read_after(0, 10).await.unwrap().len(), 1);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A row committed but not yet synced is not read to be given out (to
    /// a stream, a TAXII page): reads stop at the newest row known to be
    /// on disk, and return it once its commit is synced and the log moved
    /// on to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_committed_but_not_synced_is_not_given_out() {
        let dir = crate::store::scratch_dir("unsynced");
        let (store, _, seq, unsynced) = one_row_not_synced(&dir).await;
        // Committed, and counted by any read...
        assert_eq!(store.count_indicators().await.unwrap(), 1);
        assert!(store.unsynced_commits() >= 1);
        // ...but not read to be given out.
        assert!(store.read_after(0, 10).await.unwrap().is_empty());
        let page = store
            .versions_after(crate::store::Versions::All, 0, 0, 10)
            .await
            .unwrap();
        assert!(page.is_empty());
        unsynced.synced().await.unwrap();
        store.bump(seq);
        assert_eq!(store.read_after(0, 10).await.unwrap().len(), 1);
        assert_eq!(store.unsynced_commits(), 0);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store in `dir` holding one row whose commit is written but not
    /// synced, with the row, its number and its commit.
    async fn one_row_not_synced(
        dir: &std::path::Path,
    ) -> (
        crate::store::Store,
        crate::store::NewIndicator,
        u64,
        Unsynced,
    ) {
        let store =
            crate::store::Store::open_sqlite(&dir.join("store.db"), crate::clock::Clock::system())
                .await
                .unwrap();
        let row = test_row();
        let (writing, mut tx) = store.write_tx().await.unwrap();
        let seqs = store
            .insert_indicators(&mut tx, &[&row], "", 1000)
            .await
            .unwrap();
        let unsynced = tx.commit_unsynced().await.unwrap().expect("a SQLite write");
        drop(writing);
        (store, row, seqs[0].expect("stored"), unsynced)
    }

    /// One signed indicator version, as a publish would store it.
    fn test_row() -> crate::store::NewIndicator {
        let (key, _) = crate::signing::OrgSigningKey::generate().unwrap();
        crate::exchange::seal(&key, crate::signing::test_indicator("a.example", &key))
    }
}
