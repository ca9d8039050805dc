//! `bench --store postgres://…`: a database per benchmark organisation on
//! the given server (made by the run, dropped at its end), and the server's
//! durable write limits as primitives, measured like SQLite's.

use std::time::Instant;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::{BenchError, err};

/// Databases this run made, dropped by [`drop_made`].
static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// `server` (`postgres://user@host:port`, maybe with a database path) with
/// the database `name` instead.
fn with_database(server: &str, name: &str) -> Result<String, BenchError> {
    let mut url = url::Url::parse(server).map_err(|e| err(format!("--store: {e}")))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

async fn admin(server: &str) -> Result<PgConnection, BenchError> {
    PgConnection::connect(&with_database(server, "postgres")?)
        .await
        .map_err(|e| err(format!("--store {}: {e}", crate::store::redact_url(server))))
}

/// A new, empty database on `server`: its URL.
pub(super) async fn make_database(server: &str) -> Result<String, BenchError> {
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut c = admin(server).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .map_err(err)?;
    MADE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(name.clone());
    with_database(server, &name)
}

/// Drops every database this run made on `server`.
pub(super) async fn drop_made(server: &str) {
    let made: Vec<String> = std::mem::take(&mut *MADE.lock().unwrap_or_else(|e| e.into_inner()));
    let Ok(mut c) = admin(server).await else {
        return;
    };
    for name in made {
        let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut c)
            .await
        {
            tracing::warn!(database = %name, error = %e, "bench: cannot drop its database");
        }
    }
}

/// The server's durable write limit: rows of `row_bytes` inserted `batch`
/// per transaction (multi-row statements, as the store writes) into a
/// scratch database, for about `secs`. Rows per second; with `batch` 1,
/// durable commits per second.
pub(super) async fn insert_rate(
    server: &str,
    batch: usize,
    row_bytes: usize,
    secs: f64,
) -> Result<f64, BenchError> {
    use crate::store::ROWS_PER_STATEMENT;
    let url = make_database(server).await?;
    let mut c = PgConnection::connect(&url).await.map_err(err)?;
    sqlx::query("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, k TEXT UNIQUE, v BYTEA)")
        .execute(&mut c)
        .await
        .map_err(err)?;
    let blob = vec![0x5au8; row_bytes];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let mut tx = c.begin().await.map_err(err)?;
        let keys: Vec<u64> = (n..n + batch as u64).collect();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new("INSERT INTO t (k, v) ");
            q.push_values(chunk, |mut b, k| {
                b.push_bind(format!("{k:016x}")).push_bind(blob.clone());
            });
            q.build().execute(&mut *tx).await.map_err(err)?;
        }
        n += batch as u64;
        tx.commit().await.map_err(err)?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = c.close().await;
    Ok(rate)
}
