//! Idempotency keys of local publishes: what a key stood for, recorded in
//! the transaction that stores the indicator, so a retried Publish returns
//! the original instead of publishing twice.

use std::collections::HashMap;

use super::db::{on, sql};
use super::{ROWS_PER_STATEMENT, Store, StoreError, Tx, to_i64};

/// A publisher's idempotency key for one Publish, with a digest of what it
/// asked for (the same key for other content is an error, not a replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishKey {
    /// The key as the publisher sent it.
    pub key: String,
    /// SHA-256 of the request's indicator draft as sent.
    pub request_digest: Vec<u8>,
}

/// What a local publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this sequence number.
    New(u64),
    /// The publisher published this before under the same key: nothing
    /// new was stored; this is what the first attempt stored.
    Again {
        /// Indicator id.
        id: String,
        /// Version.
        version: u64,
        /// Sequence number.
        seq: u64,
    },
}

/// A key's record.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct KeyRecord {
    request_digest: Vec<u8>,
    indicator_id: String,
    #[sqlx(try_from = "i64")]
    version: u64,
    #[sqlx(try_from = "i64")]
    seq: u64,
}

impl KeyRecord {
    /// What `asked` (the same key again) gets: the original, or an error
    /// if it asks for other content.
    pub(super) fn replay(&self, asked: &PublishKey) -> Result<Appended, StoreError> {
        if self.request_digest != asked.request_digest {
            return Err(StoreError::KeyReused {
                key: asked.key.clone(),
                id: self.indicator_id.clone(),
                version: self.version,
            });
        }
        Ok(Appended::Again {
            id: self.indicator_id.clone(),
            version: self.version,
            seq: self.seq,
        })
    }
}

impl Store {
    /// What `publisher`'s `key` stood for, if it is remembered: read
    /// before signing, so a retry costs one lookup.
    pub async fn published_under(
        &self,
        publisher: &str,
        key: &PublishKey,
    ) -> Result<Option<Appended>, StoreError> {
        let rec = key_records_in(Lookup::Pool(&self.pool), &[(publisher, key.key.as_str())])
            .await?
            .remove(&(publisher.to_string(), key.key.clone()));
        rec.map(|r| r.replay(key)).transpose()
    }

    /// [`Store::published_under`] of many keys of one publisher at once:
    /// by key, what each already-used one answers.
    pub async fn published_under_many(
        &self,
        publisher: &str,
        keys: &[&PublishKey],
    ) -> Result<HashMap<String, Result<Appended, StoreError>>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let asked: Vec<(&str, &str)> = keys.iter().map(|k| (publisher, k.key.as_str())).collect();
        let held = key_records_in(Lookup::Pool(&self.pool), &asked).await?;
        Ok(keys
            .iter()
            .filter_map(|k| {
                held.get(&(publisher.to_string(), k.key.clone()))
                    .map(|rec| (k.key.clone(), rec.replay(k)))
            })
            .collect())
    }

    /// The records of `keys` ((publisher, key) pairs) already held, read
    /// inside the commit's transaction.
    pub(super) async fn key_records(
        &self,
        tx: &mut Tx,
        keys: &[(&str, &str)],
    ) -> Result<HashMap<(String, String), KeyRecord>, StoreError> {
        key_records_in(Lookup::Tx(tx), keys).await
    }

    /// Remembers, for each (publisher, key, (id, version, seq)), that the
    /// publisher's key stored that version, a statement per
    /// [`ROWS_PER_STATEMENT`].
    pub(super) async fn remember_keys(
        &self,
        tx: &mut Tx,
        stored: &[(&str, &PublishKey, (&str, u64, u64))],
    ) -> Result<(), StoreError> {
        let now = self.now();
        for chunk in stored.chunks(ROWS_PER_STATEMENT) {
            on!(Tx, &mut *tx, db => {
            let mut q = sqlx::QueryBuilder::<DB>::new(
                "INSERT INTO publish_keys \
                 (key_hash, publisher, key, request_digest, indicator_id, version, seq, created_ms) ",
            );
            q.push_values(chunk, |mut b, (publisher, key, (id, version, seq))| {
                b.push_bind(key_hash(publisher, &key.key))
                    .push_bind(publisher.to_string())
                    .push_bind(key.key.clone())
                    .push_bind(key.request_digest.clone())
                    .push_bind(id.to_string())
                    .push_bind(to_i64(*version))
                    .push_bind(to_i64(*seq))
                    .push_bind(now);
            });
            q.build().execute(&mut **db).await?;
            });
        }
        Ok(())
    }

    /// Forgets idempotency keys recorded before `before_ms`; returns how
    /// many.
    pub async fn forget_publish_keys(&self, before_ms: i64) -> Result<u64, StoreError> {
        // Runs every refresh tick: only take the write lock when there is
        // something to forget.
        if !self
            .any_before(
                "SELECT CAST(1 AS BIGINT) FROM publish_keys WHERE created_ms < ? LIMIT 1",
                before_ms,
            )
            .await?
        {
            return Ok(0);
        }
        let (_writing, mut tx) = self.write_tx().await?;
        let done = on!(Tx, &mut tx, db => sqlx::query(sql!("DELETE FROM publish_keys WHERE created_ms < ?"))
            .bind(before_ms)
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        tx.commit().await?;
        Ok(done)
    }
}

/// The 8-byte look-up hash of `publisher`'s `key`: the first 8 bytes of
/// SHA-256 over both, each prefixed with its length (so no two pairs
/// share an input). Pairs that share a hash are told apart by their
/// strings.
pub(super) fn key_hash(publisher: &str, key: &str) -> i64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [publisher, key] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(first)
}

/// Gives the keys kept from before migration 0016 their hash (they are
/// not found without one); a no-op once done. Runs when the store opens,
/// before anything is served.
pub(super) async fn hash_kept_keys(conn: &mut sqlx::SqliteConnection) -> Result<u64, StoreError> {
    let kept: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT rowid, publisher, key FROM publish_keys WHERE key_hash IS NULL")
            .fetch_all(&mut *conn)
            .await?;
    if kept.is_empty() {
        return Ok(0);
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for (rowid, publisher, key) in &kept {
        sqlx::query("UPDATE publish_keys SET key_hash = ? WHERE rowid = ?")
            .bind(key_hash(publisher, key))
            .bind(rowid)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(kept.len() as u64)
}

/// The records of `keys` ((publisher, key) pairs) held, found by hash a
/// statement per [`ROWS_PER_STATEMENT`] keys and kept where the strings
/// match.
/// Where a look-up of keys reads: the pool (before signing, on the publish
/// path: no transaction of its own) or the commit's transaction.
enum Lookup<'a> {
    Pool(&'a super::db::Pool),
    Tx(&'a mut Tx),
}

async fn key_records_in(
    mut at: Lookup<'_>,
    keys: &[(&str, &str)],
) -> Result<HashMap<(String, String), KeyRecord>, StoreError> {
    let mut out = HashMap::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let wanted: std::collections::HashSet<(&str, &str)> = chunk.iter().copied().collect();
        // The statement for this chunk, in the backend `$db`'s placeholders.
        macro_rules! lookup {
            ($db:ty) => {{
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT publisher, key, request_digest, indicator_id, version, seq FROM publish_keys \
                     WHERE key_hash IN (",
                );
                let mut hashes = q.separated(", ");
                for (publisher, key) in chunk {
                    hashes.push_bind(key_hash(publisher, key));
                }
                q.push(")");
                q
            }};
        }
        let rows: Vec<(String, String, Vec<u8>, String, i64, i64)> = match &mut at {
            Lookup::Pool(pool) => on!(Pool, *pool, db => {
                lookup!(DB).build_query_as().fetch_all(db).await?
            }),
            Lookup::Tx(tx) => on!(Tx, &mut **tx, db => {
                lookup!(DB).build_query_as().fetch_all(&mut **db).await?
            }),
        };
        for (publisher, key, request_digest, indicator_id, version, seq) in rows {
            if !wanted.contains(&(publisher.as_str(), key.as_str())) {
                continue;
            }
            out.insert(
                (publisher, key),
                KeyRecord {
                    request_digest,
                    indicator_id,
                    version: u64::try_from(version).unwrap_or(0),
                    seq: u64::try_from(seq).unwrap_or(0),
                },
            );
        }
    }
    Ok(out)
}
