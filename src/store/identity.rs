//! Log identities: ours (made when the store was created, changed by a
//! restore), and the upstream log each of our cursors counts in.

use std::path::Path;

use super::db::{on, sql};
use super::{Store, StoreError, to_i64};
use crate::audit::AuditEntry;
use crate::model::OrgId;

impl Store {
    /// Writes a consistent copy of the whole store to `to` (which must not
    /// exist), while the node keeps running: one read snapshot, no writer
    /// blocked. The copy is readable by the owner only.
    pub async fn backup_to(&self, to: &Path) -> Result<(), StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: to.display().to_string(),
            reason,
        };
        // Created empty with mode 0600 first: it holds partners' RED data.
        let mut file = std::fs::OpenOptions::new();
        file.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            file.mode(0o600);
        }
        file.open(to).map_err(|e| open_err(e.to_string()))?;
        let target = to
            .to_str()
            .ok_or_else(|| open_err("the path is not UTF-8".into()))?;
        let super::db::Pool::Sqlite(pool) = &self.pool else {
            let _ = std::fs::remove_file(to);
            return Err(StoreError::Conflict(
                "store backup copies a SQLite store; back PostgreSQL up with its own tools (pg_dump, base backups)".into(),
            ));
        };
        let done = sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(pool)
            .await;
        if let Err(e) = done {
            let _ = std::fs::remove_file(to);
            return Err(e.into());
        }
        Ok(())
    }

    /// Gives our log a new identity after a restore (the old log's sequence
    /// numbers will be reused), on the ledger with `actor` and `from`.
    /// Returns (old, new) identity.
    pub async fn renew_log_id(
        &self,
        actor: &str,
        from: &str,
    ) -> Result<(String, String), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let old: String = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!("SELECT log_id FROM log_identity WHERE id = 1"))
            .fetch_one(&mut **db)
            .await?);
        let new = uuid::Uuid::new_v4().simple().to_string();
        on!(Tx, &mut tx, db => sqlx::query(sql!("UPDATE log_identity SET log_id = ? WHERE id = 1"))
            .bind(&new)
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        let row = AuditEntry::store_restored(actor, from, &old, &new);
        self.commit_with(tx, &[row]).await?;
        Ok((old, new))
    }

    /// `PRAGMA integrity_check`: "ok", or what SQLite found wrong.
    /// PostgreSQL checks its own pages (data checksums, when the cluster
    /// has them) and has no such statement: "ok" once it answers.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        self.check("PRAGMA integrity_check").await
    }

    async fn check(&self, pragma: &'static str) -> Result<String, StoreError> {
        Ok(match &self.pool {
            super::db::Pool::Sqlite(p) => sqlx::query_scalar(pragma).fetch_one(p).await?,
            super::db::Pool::Pg(p) => sqlx::query_scalar("SELECT 'ok'::text").fetch_one(p).await?,
        })
    }

    /// Sets our cursor in `upstream`'s log to (`log_id`, `cursor`), whatever
    /// it was (inside `tx`).
    async fn set_cursor(
        &self,
        tx: &mut super::Tx,
        upstream: &OrgId,
        log_id: &str,
        cursor: u64,
    ) -> Result<(), StoreError> {
        on!(Tx, &mut *tx, db => sqlx::query(sql!("INSERT INTO cursors (upstream_org, cursor, updated_ms, log_id) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (upstream_org) DO UPDATE SET cursor = ?2, updated_ms = ?3, log_id = ?4",))
        .bind(upstream.as_str())
        .bind(to_i64(cursor))
        .bind(self.now())
        .bind(log_id)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        Ok(())
    }

    /// The database's size in bytes as its server reports it (PostgreSQL);
    /// `None` for SQLite, whose size is its files'.
    pub async fn database_bytes(&self) -> Result<Option<u64>, StoreError> {
        let super::db::Pool::Pg(p) = &self.pool else {
            return Ok(None);
        };
        let n: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(p)
            .await?;
        Ok(Some(n.max(0) as u64))
    }

    /// `PRAGMA quick_check`: the faster check run at every start.
    pub async fn quick_check(&self) -> Result<String, StoreError> {
        self.check("PRAGMA quick_check").await
    }

    /// The identity of our log.
    pub async fn log_id(&self) -> Result<String, StoreError> {
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT log_id FROM log_identity WHERE id = 1"))
                .fetch_one(db)
                .await?),
        )
    }

    /// Our cursor in `upstream`'s log: (log identity, seq); ("", 0) if never
    /// subscribed.
    pub async fn cursor_in(&self, upstream: &OrgId) -> Result<(String, u64), StoreError> {
        let row: Option<(String, i64)> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT log_id, cursor FROM cursors WHERE upstream_org = ?"))
                .bind(upstream.as_str())
                .fetch_optional(db)
                .await?);
        Ok(row.map_or((String::new(), 0), |(id, c)| (id, c.max(0) as u64)))
    }

    /// An operator's reset of our cursor in `upstream`'s log: the next
    /// subscription reads it from the start (storage is idempotent), on the
    /// ledger with `actor`. Returns the cursor it had.
    pub async fn reset_cursor(&self, upstream: &OrgId, actor: &str) -> Result<u64, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let held: Option<i64> = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!("SELECT cursor FROM cursors WHERE upstream_org = ?"))
                .bind(upstream.as_str())
                .fetch_optional(&mut **db)
                .await?);
        let held = held.unwrap_or(0).max(0) as u64;
        self.set_cursor(&mut tx, upstream, "", 0).await?;
        let row = AuditEntry::cursor_reset(actor, upstream.as_str(), held);
        self.commit_with(tx, &[row]).await?;
        Ok(held)
    }

    /// Makes `log_id` the log our cursor in `upstream` counts in. A cursor
    /// that counted in another log starts again from 0 (re-reading is safe:
    /// storage is idempotent), with a ledger row saying why; one that did
    /// not know its log yet adopts it. Returns the cursor to read from.
    pub async fn adopt_log(
        &self,
        upstream: &OrgId,
        log_id: &str,
        why: &str,
    ) -> Result<u64, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let row: Option<(String, i64)> = on!(Tx, &mut tx, db => sqlx::query_as(sql!("SELECT log_id, cursor FROM cursors WHERE upstream_org = ?"))
                .bind(upstream.as_str())
                .fetch_optional(&mut **db)
                .await?);
        let (held, cursor) = row.map_or((String::new(), 0), |(id, c)| (id, c.max(0) as u64));
        let cursor = if held.is_empty() || held == log_id {
            cursor
        } else {
            0
        };
        self.set_cursor(&mut tx, upstream, log_id, cursor).await?;
        let entries = if !held.is_empty() && held != log_id {
            vec![AuditEntry::log_changed(
                upstream.as_str(),
                &held,
                log_id,
                why,
            )]
        } else {
            Vec::new()
        };
        self.commit_with(tx, &entries).await?;
        Ok(cursor)
    }
}
