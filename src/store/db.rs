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
            Tx::Sqlite(SqliteTx::Read(t)) => t.into_pooled().commit().await,
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

    /// Rolls back what the transaction wrote, keeping its connection.
    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(SqliteTx::Read(t)) => t.into_pooled().rollback().await,
            Tx::Sqlite(SqliteTx::Write(t)) => t.rollback().await,
            Tx::Pg(t) => t.rollback().await,
        }
    }
}

/// A SQLite transaction: a read on a pooled connection, or a write on the
/// one writing connection. Either is used as the connection it runs on
/// ([`Conn`]).
#[derive(Debug)]
pub(crate) enum SqliteTx {
    /// On a connection of the read pool.
    Read(Conn),
    /// On the writing connection, kept between transactions.
    Write(HeldTx),
}

impl Deref for SqliteTx {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match self {
            SqliteTx::Read(t) => t,
            SqliteTx::Write(t) => t,
        }
    }
}

impl DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            SqliteTx::Read(t) => &mut *t,
            SqliteTx::Write(t) => &mut *t,
        }
    }
}

/// The connection a SQLite transaction runs its statements on (an
/// executor, as `&mut Conn`). On the writing connection the transaction's
/// `BEGIN IMMEDIATE` is not a statement of its own: it goes in the query
/// of the transaction's first statement, one hand-off to the connection's
/// thread less per write transaction. Until that query has answered, the
/// transaction is not known to have begun, and nothing else runs on it.
#[derive(Debug)]
pub(crate) struct Conn {
    on: On,
    begin: Begin,
}

/// What a [`Conn`] runs on.
#[derive(Debug)]
enum On {
    /// A read transaction of the pool (begun by sqlx).
    Pooled(sqlx::Transaction<'static, Sqlite>),
    /// The kept writing connection.
    Kept(SqliteConnection),
}

/// Whether a write transaction's `BEGIN IMMEDIATE` has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begin {
    /// Not yet: it goes with the next statement.
    Carried,
    /// Sent with a statement that failed, or whose answer was not read:
    /// the transaction's state is not known, and nothing more runs on it.
    Unsure,
    /// It ran: statements run in the transaction.
    Done,
}

/// What begins a write transaction, ahead of its first statement.
const BEGIN_CARRIED: &str = "BEGIN IMMEDIATE; ";

impl Conn {
    /// The read transaction underneath (a read runs on the pool).
    fn into_pooled(self) -> sqlx::Transaction<'static, Sqlite> {
        match self.on {
            On::Pooled(t) => t,
            On::Kept(_) => unreachable!("a read runs on the pool"),
        }
    }

    /// The connection underneath.
    fn raw(&mut self) -> &mut SqliteConnection {
        match &mut self.on {
            On::Pooled(t) => t,
            On::Kept(c) => c,
        }
    }
}

/// A query with [`BEGIN_CARRIED`] ahead of it, its arguments unchanged
/// (`BEGIN` takes none, so they bind to the statement they were for).
struct Carried {
    sql: sqlx::SqlStr,
    arguments: Option<sqlx::sqlite::SqliteArguments>,
    persistent: bool,
}

impl Carried {
    fn of<'q, E: sqlx::Execute<'q, Sqlite>>(mut query: E) -> Result<Self, sqlx::Error> {
        if query.statement().is_some() {
            return Err(sqlx::Error::Protocol(
                "a prepared statement cannot begin a write transaction".into(),
            ));
        }
        let persistent = query.persistent();
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        let sql = format!("{BEGIN_CARRIED}{}", query.sql().as_str());
        Ok(Self {
            sql: sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
            arguments,
            persistent,
        })
    }
}

impl<'q> sqlx::Execute<'q, Sqlite> for Carried {
    fn sql(self) -> sqlx::SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&sqlx::sqlite::SqliteStatement> {
        None
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::sqlite::SqliteArguments>, sqlx::error::BoxDynError> {
        Ok(self.arguments.take())
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// Results of a query on a [`Conn`].
type Results<'e> = futures_util::stream::BoxStream<
    'e,
    Result<sqlx::Either<sqlx::sqlite::SqliteQueryResult, sqlx::sqlite::SqliteRow>, sqlx::Error>,
>;

/// Refused: the transaction's `BEGIN` is not known to have run.
fn unsure() -> sqlx::Error {
    sqlx::Error::Protocol("a statement on a write transaction whose first statement failed".into())
}

impl<'c> sqlx::Executor<'c> for &'c mut Conn {
    type Database = Sqlite;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> Results<'e>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Sqlite>,
    {
        use futures_util::StreamExt;
        match self.begin {
            Begin::Done => self.raw().fetch_many(query),
            Begin::Unsure => futures_util::stream::once(async { Err(unsure()) }).boxed(),
            Begin::Carried => {
                self.begin = Begin::Unsure;
                let carried = match Carried::of(query) {
                    Ok(c) => c,
                    Err(e) => return futures_util::stream::once(async { Err(e) }).boxed(),
                };
                let Conn { on, begin } = self;
                let raw: &'c mut SqliteConnection = match on {
                    On::Pooled(t) => t,
                    On::Kept(c) => c,
                };
                // The first result is the `BEGIN`'s own: once it is in,
                // the transaction has begun (whatever the statement after
                // it does); it is not the caller's to see.
                let mut first = Some(begin);
                raw.fetch_many(carried)
                    .filter_map(move |item| {
                        let out = match (first.take(), item) {
                            (Some(begin), Ok(sqlx::Either::Left(_))) => {
                                *begin = Begin::Done;
                                None
                            }
                            (_, item) => Some(item),
                        };
                        std::future::ready(out)
                    })
                    .boxed()
            }
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<sqlx::sqlite::SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Sqlite>,
    {
        use futures_util::{FutureExt, TryStreamExt};
        if self.begin == Begin::Done {
            return self.raw().fetch_optional(query);
        }
        // Every result is read, so the whole query has run (and the
        // `BEGIN` is known to) when this returns.
        self.fetch_many(query)
            .try_filter_map(|item| std::future::ready(Ok(item.right())))
            .try_collect::<Vec<_>>()
            .map(|rows| rows.map(|rows| rows.into_iter().next()))
            .boxed()
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::sqlite::SqliteTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::sqlite::SqliteStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        self.raw().prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> futures_util::future::BoxFuture<'e, Result<sqlx::Describe<Sqlite>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.raw().describe(sql)
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

    /// A write transaction on `conn`, which goes back to this slot when the
    /// transaction is committed; its `BEGIN IMMEDIATE` goes with its first
    /// statement (see [`Conn`]), its commit is written to `wal` (see `wal`).
    pub(crate) fn begin(&self, conn: SqliteConnection, wal: Arc<super::wal::WalSync>) -> HeldTx {
        HeldTx {
            conn: Some(Conn {
                on: On::Kept(conn),
                begin: Begin::Carried,
            }),
            open: true,
            home: self.clone(),
            wal,
        }
    }
}

/// A write transaction on the kept writing connection.
///
/// Its `BEGIN` and `COMMIT` are statements of ours, not sqlx's
/// transaction calls: the `BEGIN` goes in the query of the first
/// statement (see [`Conn`]) and the commit can ride in the query of the
/// last one (see [`HeldTx::committed_by_query`]), two hand-offs to the
/// connection's thread less per transaction. Dropped without a commit,
/// the connection is closed instead of kept, which rolls the transaction
/// back (SQLite does so on close); the next transaction opens a fresh one.
#[derive(Debug)]
pub(crate) struct HeldTx {
    /// Always `Some` until dropped.
    conn: Option<Conn>,
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
    /// transaction is written meanwhile. A transaction that ran no
    /// statement has nothing to commit.
    pub(crate) async fn commit_unsynced(mut self) -> Result<super::wal::Unsynced, sqlx::Error> {
        if self.open {
            if self.begun() != Begin::Carried {
                sqlx::query("COMMIT").execute(&mut *self).await?;
            }
            self.open = false;
        }
        Ok(super::wal::Unsynced {
            wal: self.wal.clone(),
            n: self.wal.committed(),
        })
    }

    /// Rolls back what the transaction wrote and keeps the connection for
    /// the next (a transaction that ran nothing has nothing to roll back;
    /// one whose first statement failed is closed by the drop instead).
    pub(crate) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        match self.begun() {
            Begin::Done => {
                sqlx::query("ROLLBACK").execute(&mut *self).await?;
                self.open = false;
            }
            Begin::Carried => self.open = false,
            Begin::Unsure => {}
        }
        Ok(())
    }

    /// Says that a query ending with [`COMMIT_RIDING`] went through on
    /// this transaction: it is committed, and [`HeldTx::commit_unsynced`]
    /// only counts the commit. Nothing may be run on it after that.
    pub(crate) fn committed_by_query(&mut self) {
        self.open = false;
    }

    /// How far its `BEGIN` went.
    fn begun(&self) -> Begin {
        self.conn.as_ref().expect("held until dropped").begin
    }
}

impl Deref for HeldTx {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl DerefMut for HeldTx {
    fn deref_mut(&mut self) -> &mut Conn {
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
        // Committed, or never begun (no statement ran): the connection is
        // outside any transaction, and kept.
        if let Some(Conn {
            on: On::Kept(conn),
            begin,
        }) = self.conn.take()
            && (!self.open || begin == Begin::Carried)
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
            Pool::Sqlite(p) => Tx::Sqlite(SqliteTx::Read(Conn {
                on: On::Pooled(p.begin().await?),
                begin: Begin::Done,
            })),
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

    /// A write transaction on a fresh database in `dir` (WAL, no busy
    /// wait), and a second connection to the same file.
    async fn held_and_other(dir: &std::path::Path) -> (WriterSlot, HeldTx, SqliteConnection) {
        use sqlx::ConnectOptions;
        std::fs::create_dir_all(dir).unwrap();
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("t.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::ZERO);
        let mut conn = opts.connect().await.unwrap();
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .execute(&mut conn)
            .await
            .unwrap();
        let other = opts.connect().await.unwrap();
        let slot = WriterSlot::default();
        let wal = Arc::new(super::super::wal::WalSync::new(&dir.join("t.db")));
        let tx = slot.begin(conn, wal);
        (slot, tx, other)
    }

    /// A write transaction takes SQLite's write lock with its first
    /// statement (its `BEGIN IMMEDIATE` rides in that query), not before;
    /// the statement's own result is what the caller sees (not the
    /// `BEGIN`'s, whose row count is the previous statement's); a
    /// transaction that ran nothing commits nothing and keeps its
    /// connection.
    #[tokio::test]
    async fn a_write_transaction_begins_with_its_first_statement() {
        let dir = super::super::scratch_dir("carried-begin");
        let (slot, mut tx, mut other) = held_and_other(&dir).await;
        let insert = "INSERT INTO t (k) VALUES (1)";
        sqlx::query("INSERT INTO t (k) VALUES (100)")
            .execute(&mut other)
            .await
            .expect("no write lock is held before the first statement");
        let done = sqlx::query(insert).execute(&mut *tx).await.unwrap();
        assert_eq!(done.rows_affected(), 1);
        assert!(
            sqlx::query("INSERT INTO t (k) VALUES (101)")
                .execute(&mut other)
                .await
                .is_err(),
            "the first statement took the write lock"
        );
        let none = sqlx::query("UPDATE t SET k = k WHERE k < 0")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(none.rows_affected(), 0);
        tx.commit_unsynced().await.unwrap();
        let conn = slot.take().expect("kept after its commit");
        // A transaction that runs nothing: committed without a statement,
        // its connection kept; the next one's first statement reports its
        // own row count, not the `BEGIN`'s.
        let wal = Arc::new(super::super::wal::WalSync::new(&dir.join("t.db")));
        slot.begin(conn, wal.clone())
            .commit_unsynced()
            .await
            .unwrap();
        let mut tx = slot.begin(slot.take().expect("kept, nothing ran"), wal);
        let none = sqlx::query("UPDATE t SET k = k WHERE k < 0")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(
            none.rows_affected(),
            0,
            "the BEGIN's count is not the statement's"
        );
        let rows: Vec<i64> = sqlx::query_scalar("SELECT k FROM t ORDER BY k")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(rows, [1, 100]);
        drop(tx);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A write transaction rolled back leaves nothing and keeps its
    /// connection for the next, which begins afresh.
    #[tokio::test]
    async fn a_rolled_back_write_transaction_keeps_its_connection() {
        let dir = super::super::scratch_dir("carried-rollback");
        let (slot, mut tx, mut other) = held_and_other(&dir).await;
        let wal = tx.wal.clone();
        sqlx::query("INSERT INTO t (k) VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let mut tx = slot.begin(slot.take().expect("kept after the rollback"), wal);
        sqlx::query("INSERT INTO t (k) VALUES (2)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit_unsynced().await.unwrap();
        let held: Vec<i64> = sqlx::query_scalar("SELECT k FROM t")
            .fetch_all(&mut other)
            .await
            .unwrap();
        assert_eq!(held, [2]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// When the query carrying the `BEGIN` fails before it ran (the write
    /// lock is taken elsewhere), nothing more runs on the transaction —
    /// a statement would otherwise run outside any transaction — and its
    /// connection is not kept.
    #[tokio::test]
    async fn a_write_transaction_whose_begin_failed_runs_nothing_more() {
        let dir = super::super::scratch_dir("carried-begin-failed");
        let (slot, mut tx, mut other) = held_and_other(&dir).await;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let busy = sqlx::query("INSERT INTO t (k) VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(busy.to_string().contains("locked"), "{busy}");
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        let refused = sqlx::query("INSERT INTO t (k) VALUES (2)")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("first statement failed"),
            "{refused}"
        );
        assert!(tx.commit_unsynced().await.is_err(), "nothing to commit on");
        assert!(slot.take().is_none(), "the connection was not kept");
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(held, 0);
        let _ = std::fs::remove_dir_all(dir);
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
