//! The two backends behind one store: a pool and a transaction of either
//! SQLite or PostgreSQL, and [`on!`], which runs one body of query code on
//! whichever the store holds.
//!
//! Queries are written once, in the SQL both backends understand, with
//! SQLite's placeholders (`?`, `?N`); [`Dialect::sql`] gives PostgreSQL
//! its `$N`. What the two spell differently (`instr`, `randomblob`) the
//! PostgreSQL migrations define as functions of the same name, so the query
//! text stays one. The body under [`on!`] is compiled once per backend,
//! with `DB` naming the backend's `sqlx::Database`: rows decode with the
//! same `FromRow` types on both.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use sqlx::{PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool};

/// A pool of connections to the store's database.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    /// SQLite (embedded).
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Pg(PgPool),
}

/// A transaction of the store's backend.
#[derive(Debug)]
pub(crate) enum Tx {
    /// SQLite.
    Sqlite(SqliteTx),
    /// PostgreSQL.
    Pg(sqlx::Transaction<'static, Postgres>),
}

/// Runs `$body` with `$c` bound to the SQLite or the PostgreSQL value of
/// `$v` (a [`Pool`] or [`Tx`], by reference), and `DB` the backend's
/// `sqlx::Database`. `on!(Pool, &self.pool, p => …)`,
/// `on!(Tx, tx, t => … &mut **t …)`.
macro_rules! on {
    ($kind:ident, $v:expr, $c:ident => $body:expr) => {
        match $v {
            $crate::store::db::$kind::Sqlite($c) => {
                #[allow(dead_code)]
                type DB = ::sqlx::Sqlite;
                $body
            }
            $crate::store::db::$kind::Pg($c) => {
                #[allow(dead_code)]
                type DB = ::sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on;

/// `$sql` (a `&'static str` in SQLite's placeholders) as the backend `DB`
/// of the enclosing [`on!`] spells it.
macro_rules! sql {
    ($sql:expr $(,)?) => {
        <DB as $crate::store::db::Dialect>::sql($sql)
    };
}
pub(crate) use sql;

impl Tx {
    /// Commits; a write is on disk when this returns.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(SqliteTx::Read(t)) => t.commit().await,
            Tx::Sqlite(SqliteTx::Write(t)) => t.commit().await,
            Tx::Pg(t) => t.commit().await,
        }
    }

    /// The transaction on SQLite's writing connection, whose commit can
    /// ride in a query (see [`HeldTx::committed_by_query`]).
    pub(crate) fn held_write(&mut self) -> Option<&mut HeldTx> {
        match self {
            Tx::Sqlite(SqliteTx::Write(t)) => Some(t),
            _ => None,
        }
    }

    /// Commits; a SQLite write returns what resolves once it is on disk
    /// (see [`HeldTx::commit_unsynced`]); anything else is on disk already.
    pub(crate) async fn commit_unsynced(self) -> Result<Option<super::wal::Unsynced>, sqlx::Error> {
        match self {
            Tx::Sqlite(SqliteTx::Write(t)) => t.commit_unsynced().await.map(Some),
            other => other.commit().await.map(|()| None),
        }
    }
}

/// A SQLite transaction: a read on a pooled connection, or a write on the
/// one writing connection. Either is used as the connection it runs on.
#[derive(Debug)]
pub(crate) enum SqliteTx {
    /// On a connection of the read pool.
    Read(sqlx::Transaction<'static, Sqlite>),
    /// On the writing connection, kept between transactions.
    Write(HeldTx),
}

impl Deref for SqliteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            SqliteTx::Read(t) => t,
            SqliteTx::Write(t) => t,
        }
    }
}

impl DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            SqliteTx::Read(t) => &mut *t,
            SqliteTx::Write(t) => &mut *t,
        }
    }
}

/// Where the writing connection (SQLite) waits between transactions.
///
/// It is kept out of the pool because a pooled connection costs two round
/// trips to its database thread per transaction besides the transaction's
/// own (the pool pings it when it is taken and again when it is given
/// back, the latter from a task of its own that the next writer waits
/// for). Write transactions run one at a time under the store's write
/// lock, so one connection serves them all.
#[derive(Debug, Default, Clone)]
pub(crate) struct WriterSlot(Arc<Mutex<Option<SqliteConnection>>>);

impl WriterSlot {
    /// The kept connection, if there is one (taken out for a transaction).
    pub(crate) fn take(&self) -> Option<SqliteConnection> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Keeps `conn` for the next transaction, unless one is kept already
    /// (one opened while this was still in use after its lock was given
    /// up): then `conn` is closed.
    pub(crate) fn put(&self, conn: SqliteConnection) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(conn);
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`) on `conn`, which
    /// goes back to this slot when the transaction is committed; its commit
    /// is written to `wal` (see `wal`).
    pub(crate) async fn begin(
        &self,
        mut conn: SqliteConnection,
        wal: Arc<super::wal::WalSync>,
    ) -> Result<HeldTx, sqlx::Error> {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
        Ok(HeldTx {
            conn: Some(conn),
            open: true,
            home: self.clone(),
            wal,
        })
    }
}

/// A write transaction on the kept writing connection.
///
/// Its `BEGIN` and `COMMIT` are statements of ours, not sqlx's
/// transaction calls, so the commit can ride in the query of the
/// transaction's last statement (see [`HeldTx::committed_by_query`]): one
/// hand-off to the connection's thread less per transaction. Dropped
/// without a commit, the connection is closed instead of kept, which rolls
/// the transaction back (SQLite does so on close); the next transaction
/// opens a fresh one.
#[derive(Debug)]
pub(crate) struct HeldTx {
    /// Always `Some` until dropped.
    conn: Option<SqliteConnection>,
    /// Not yet committed.
    open: bool,
    /// Where the connection goes afterwards.
    home: WriterSlot,
    /// The log its commit is written to.
    wal: Arc<super::wal::WalSync>,
}

/// What ends a query that commits the transaction it runs in (see
/// [`HeldTx::committed_by_query`]).
pub(crate) const COMMIT_RIDING: &str = "; COMMIT";

impl HeldTx {
    /// Commits (on failure the drop rolls back what is left); the commit
    /// is on disk when this returns.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        let unsynced = self.commit_unsynced().await?;
        unsynced.wal.sync_through(unsynced.n).await?;
        Ok(())
    }

    /// Commits (unless a query did, see [`HeldTx::committed_by_query`]),
    /// and returns what resolves once the commit is on disk, for the
    /// caller to await after giving up the write lock: the next
    /// transaction is written meanwhile.
    pub(crate) async fn commit_unsynced(mut self) -> Result<super::wal::Unsynced, sqlx::Error> {
        if self.open {
            sqlx::query("COMMIT").execute(&mut *self).await?;
            self.open = false;
        }
        Ok(super::wal::Unsynced {
            wal: self.wal.clone(),
            n: self.wal.committed(),
        })
    }

    /// Says that a query ending with [`COMMIT_RIDING`] went through on
    /// this transaction: it is committed, and [`HeldTx::commit_unsynced`]
    /// only counts the commit. Nothing may be run on it after that.
    pub(crate) fn committed_by_query(&mut self) {
        self.open = false;
    }
}

impl Deref for HeldTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl DerefMut for HeldTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        // After a commit that rode in a query, a statement would run
        // outside any transaction: the test builds refuse it.
        debug_assert!(
            self.open,
            "a statement on a write transaction after its commit"
        );
        self.conn.as_mut().expect("held until dropped")
    }
}

impl Drop for HeldTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !self.open
        {
            self.home.put(conn);
        }
        // Not committed: the connection is dropped, and its thread closes
        // it, which rolls the transaction back.
    }
}

impl Pool {
    /// Closes every connection.
    pub(crate) async fn close(&self) {
        on!(Pool, self, p => p.close().await)
    }

    /// A read transaction: every query in it sees one snapshot.
    pub(crate) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => Tx::Sqlite(SqliteTx::Read(p.begin().await?)),
            Pool::Pg(p) => Tx::Pg(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await?,
            ),
        })
    }

    /// Whether this is PostgreSQL.
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Pool::Pg(_))
    }
}

/// How a backend spells a query written in SQLite's placeholders.
pub(crate) trait Dialect: sqlx::Database {
    /// `sql` in this backend's placeholders.
    fn sql(sql: &'static str) -> &'static str;

    /// [`Dialect::sql`] of a query text made at run time.
    fn sql_owned(sql: String) -> String;
}

impl Dialect for Sqlite {
    fn sql(sql: &'static str) -> &'static str {
        sql
    }

    fn sql_owned(sql: String) -> String {
        sql
    }
}

impl Dialect for Postgres {
    fn sql(sql: &'static str) -> &'static str {
        // Each query text is translated once and kept for the process's
        // life (the texts are the program's own constants).
        static SEEN: OnceLock<RwLock<HashMap<&'static str, &'static str>>> = OnceLock::new();
        let seen = SEEN.get_or_init(Default::default);
        if let Some(done) = seen.read().unwrap_or_else(|e| e.into_inner()).get(sql) {
            return done;
        }
        let done: &'static str = Box::leak(dollar_placeholders(sql).into_boxed_str());
        seen.write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sql, done);
        done
    }

    fn sql_owned(sql: String) -> String {
        dollar_placeholders(&sql)
    }
}

/// SQLite's `?` and `?N` placeholders as PostgreSQL's `$N` (a bare `?` is
/// the one after the highest number so far, as in SQLite); text inside
/// quotes is left alone.
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut highest = 0u32;
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    highest + 1
                } else {
                    digits.parse().unwrap_or(highest + 1)
                };
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ? AND c = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
        assert_eq!(
            dollar_placeholders("WHERE (?1 IS NULL OR p = ?1) AND t >= ?2 LIMIT ?"),
            "WHERE ($1 IS NULL OR p = $1) AND t >= $2 LIMIT $3"
        );
        assert_eq!(
            dollar_placeholders("SELECT '?' || x FROM \"a?\" WHERE y = ?"),
            "SELECT '?' || x FROM \"a?\" WHERE y = $1"
        );
    }

    #[test]
    fn postgres_translation_is_kept() {
        let a = <Postgres as Dialect>::sql("SELECT ? + ?");
        let b = <Postgres as Dialect>::sql("SELECT ? + ?");
        assert_eq!(a, "SELECT $1 + $2");
        assert!(std::ptr::eq(a, b));
        assert_eq!(<Sqlite as Dialect>::sql("SELECT ?"), "SELECT ?");
    }

    /// `.cargo/config.toml` builds the bundled SQLite without memory
    /// statistics (each allocation would take a process-wide mutex); a
    /// build that lost the setting fails here rather than only slower.
    #[tokio::test]
    async fn the_bundled_sqlite_keeps_no_memory_statistics() {
        use sqlx::Connection;
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "SQLite built without LIBSQLITE3_FLAGS from .cargo/config.toml: {options:?}"
        );
    }
}
