//! Keeps SQLite's write-ahead log short, so commits rewrite it in place.
//!
//! A commit's frames are appended to the log, and every durable commit
//! syncs it (see `wal`). A sync of frames written past the end of the file
//! also has the file system commit the file's new size and blocks: on this
//! kind of machine about twice the time of a sync of frames written over
//! blocks the file already has (0.43-0.48 ms against 0.21 ms, three stores
//! syncing at once). SQLite writes the log from its start again once a
//! checkpoint has copied every frame into the database, but its own
//! checkpoint runs inside a commit, and is set rare (`WAL_CHECKPOINT_PAGES`)
//! so bulk loads are not stalled by it: left alone, the log grows for
//! hundreds of megabytes and nearly every sync is of the expensive kind.
//!
//! So a keeper task copies the log into the database in the background
//! once it holds [`REWIND_FRAMES`] frames, without the write lock, then,
//! if what was written meanwhile is little, copies that too while holding
//! the write lock (no commit of this process can come between): the next
//! write transaction then starts the log again from its start, over the
//! blocks it already has. The copies are SQLite's own checkpoints on a
//! connection of the keeper's, with the writer's `synchronous=NORMAL`: the
//! log is synced before frames are copied and the database after, before
//! SQLite counts them copied, so a frame is overwritten only once its page
//! is on disk in the database. When the writes outpace the copy (a bulk
//! load), the keeper waits for twice as many frames before trying again,
//! up to SQLite's own checkpoint size.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

use super::{Store, StoreError};

/// Frames in the log (16 MiB of 4 KiB pages) at which the keeper copies
/// them into the database so the log is written from its start again.
pub(super) const REWIND_FRAMES: i64 = 4096;

/// Most frames left to copy while holding the write lock: about a
/// millisecond of copying, besides the two syncs.
const COPIED_UNDER_LOCK: i64 = 512;

/// How often the keeper looks at the log when commits were made.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// What one [`Store::rewind_log`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewind {
    /// The log holds fewer frames than asked: nothing done.
    Short,
    /// Every frame is in the database: the next commit writes the log
    /// from its start.
    Done,
    /// Frames were copied, but not all (writes outpaced the copy, a
    /// reader still needed old frames, or another checkpoint ran).
    Partial,
}

/// What SQLite's checkpoint of the log does (`PRAGMA wal_checkpoint(…)`).
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Nothing: only says how many frames the log holds and how many are
    /// copied.
    Look,
    /// Copies what no reader still needs, waiting for no one.
    Passive,
}

/// `(busy, frames in the log, frames copied)` from a checkpoint in `mode`.
async fn checkpoint(
    conn: &mut SqliteConnection,
    mode: Mode,
) -> Result<(i64, i64, i64), StoreError> {
    let sql = match mode {
        Mode::Look => "PRAGMA wal_checkpoint(NOOP)",
        Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
    };
    Ok(sqlx::query_as(sql).fetch_one(&mut *conn).await?)
}

impl Store {
    /// Once the log of this SQLite store holds at least `frames` frames,
    /// copies them into the database, the last few under the write lock,
    /// so the next write transaction writes the log from its start (see
    /// the module's documentation). `conn` is a connection of its own to
    /// the same database, with the writer's `synchronous` setting.
    pub(crate) async fn rewind_log(
        &self,
        conn: &mut SqliteConnection,
        frames: i64,
    ) -> Result<Rewind, StoreError> {
        let (_, log, _) = checkpoint(conn, Mode::Look).await?;
        if log < frames.max(1) {
            return Ok(Rewind::Short);
        }
        let (busy, log, copied) = checkpoint(conn, Mode::Passive).await?;
        if busy != 0 || log - copied > COPIED_UNDER_LOCK {
            return Ok(Rewind::Partial);
        }
        let writing = self.writing.lock().await;
        let (busy, log, copied) = checkpoint(conn, Mode::Passive).await?;
        drop(writing);
        Ok(if busy == 0 && log == copied {
            Rewind::Done
        } else {
            Rewind::Partial
        })
    }

    /// Runs [`Store::rewind_log`] whenever commits were made (for a log
    /// of at least `least` frames, more after a partial copy), until the
    /// store is closed or every handle of it but the writers' is gone
    /// (`alive` no longer upgrades).
    pub(super) async fn keep_log_short<T>(
        self,
        opts: SqliteConnectOptions,
        alive: tokio::sync::mpsc::WeakSender<T>,
        least: i64,
    ) {
        let Some(wal) = self.wal().cloned() else {
            return;
        };
        let mut conn: Option<SqliteConnection> = None;
        let mut frames = least;
        let mut seen = wal.counts().0;
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = look.tick() => {}
                _ = self.stop.cancelled() => break,
            }
            if alive.upgrade().is_none() {
                break;
            }
            let commits = wal.counts().0;
            if commits == seen {
                continue;
            }
            seen = commits;
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match opts.connect().await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "the log keeper could not open its connection");
                        continue;
                    }
                },
            };
            match self.rewind_log(c, frames).await {
                Ok(Rewind::Short) => {}
                Ok(Rewind::Done) => {
                    tracing::debug!(
                        frames,
                        "log copied into the database; rewritten from its start"
                    );
                    frames = least;
                }
                // Writes outpace the copy: try again when the log has grown
                // as much again, at most at SQLite's own checkpoint size.
                Ok(Rewind::Partial) => {
                    frames = (frames * 2).min(i64::from(super::WAL_CHECKPOINT_PAGES));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "copying the log into the database failed; retrying later");
                    if let Some(c) = conn.take() {
                        let _ = c.close().await;
                    }
                }
            }
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distinct signed version (`n` names it), as a publish stores it.
    fn row(key: &crate::signing::OrgSigningKey, n: u64) -> crate::store::NewIndicator {
        let mut ind = crate::signing::test_indicator("a.example", key);
        ind.id = uuid::Uuid::new_v4().to_string();
        ind.value = format!("host-{n}.example");
        crate::exchange::seal(key, ind)
    }

    /// Once the log is copied into the database, the next commits write it
    /// from its start, over blocks the file has: the file does not grow
    /// (without the keeper it grew by every commit's frames). What was
    /// written before and after is all there when the store is opened
    /// again.
    #[tokio::test]
    async fn once_the_log_is_rewound_commits_write_over_it_instead_of_growing_it() {
        let dir = crate::store::scratch_dir("rewind");
        let path = dir.join("store.db");
        let store = Store::open_sqlite(&path, crate::clock::Clock::system())
            .await
            .unwrap();
        let wal_path = dir.join("store.db-wal");
        let (key, _) = crate::signing::OrgSigningKey::generate().unwrap();
        for n in 0..40 {
            store.append_local(row(&key, n), "p", None).await.unwrap();
        }
        let grown = std::fs::metadata(&wal_path).unwrap().len();
        let mut conn = store.keeper_options().unwrap().connect().await.unwrap();
        let (_, before, _) = checkpoint(&mut conn, Mode::Look).await.unwrap();
        assert_eq!(
            store.rewind_log(&mut conn, 1_000_000).await.unwrap(),
            Rewind::Short,
            "a log below the size asked is left alone"
        );
        assert_eq!(store.rewind_log(&mut conn, 1).await.unwrap(), Rewind::Done);
        for n in 40..50 {
            store.append_local(row(&key, n), "p", None).await.unwrap();
        }
        assert_eq!(
            std::fs::metadata(&wal_path).unwrap().len(),
            grown,
            "the commits after the copy were written over the log, not after it"
        );
        let (_, log, _) = checkpoint(&mut conn, Mode::Look).await.unwrap();
        assert!(
            log < before / 2,
            "the log was started again: {log} frames after, {before} before"
        );
        conn.close().await.unwrap();
        // The files as a crash would leave them (every publish above was
        // acknowledged, so synced): the log read back from its new start,
        // the database holding what was copied.
        let crashed = dir.join("crashed");
        std::fs::create_dir_all(&crashed).unwrap();
        for f in ["store.db", "store.db-wal"] {
            std::fs::copy(dir.join(f), crashed.join(f)).unwrap();
        }
        store.close().await;
        for at in [path, crashed.join("store.db")] {
            let again = Store::open_sqlite(&at, crate::clock::Clock::system())
                .await
                .unwrap();
            assert_eq!(again.latest_seq().await.unwrap(), 50, "{}", at.display());
            assert_eq!(again.read_after(0, 100).await.unwrap().len(), 50);
            again.close().await;
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The keeper a store starts does the same by itself once the log
    /// holds the frames it waits for.
    #[tokio::test]
    async fn the_keeper_rewinds_the_log_by_itself() {
        let dir = crate::store::scratch_dir("keeper");
        let store = Store::open_sqlite(&dir.join("store.db"), crate::clock::Clock::system())
            .await
            .unwrap();
        let (key, _) = crate::signing::OrgSigningKey::generate().unwrap();
        let (hold, _) = tokio::sync::mpsc::channel::<()>(1);
        let keeper = tokio::spawn(store.clone().keep_log_short(
            store.keeper_options().unwrap(),
            hold.downgrade(),
            64,
        ));
        let mut conn = store.keeper_options().unwrap().connect().await.unwrap();
        let mut most = 0;
        let mut n = 0;
        // Publishes go on until the log is seen shorter than it was.
        loop {
            store.append_local(row(&key, n), "p", None).await.unwrap();
            n += 1;
            let (_, log, _) = checkpoint(&mut conn, Mode::Look).await.unwrap();
            if log < most {
                break;
            }
            most = log;
            assert!(n < 5000, "the keeper never rewound the log ({most} frames)");
            if n % 16 == 0 {
                tokio::time::sleep(LOOK_EVERY).await;
            }
        }
        assert!(most >= 64, "rewound only past the frames asked: {most}");
        drop(hold);
        keeper.await.unwrap();
        conn.close().await.unwrap();
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
