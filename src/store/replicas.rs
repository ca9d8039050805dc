//! What replicas of one organisation sharing a PostgreSQL database
//! coordinate through it: live wake-ups (a commit that adds rows to the log
//! notifies every replica, whose subscriber streams then read them) and
//! partner link leases (each partner is dialled by one replica at a time,
//! and by another when that one dies). With SQLite there is one process:
//! no notifications, and every lease is granted.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio::sync::watch;

use super::db::Pool;
use super::{Store, StoreError};
use crate::model::OrgId;

/// The channel a commit that adds rows to the log notifies, with the
/// highest sequence number it committed.
pub(super) const LOG_CHANNEL: &str = "threatmesh_log";

/// Advisory-lock key space of partner link leases (the upper 32 bits of
/// each key; the lower 32 are a hash of the partner's org id).
const LEASE_KEYS: i64 = 0x7468_6c6b << 32;

/// Session locks held by this process for the partner links it dials, on
/// one connection of their own: if the process dies, the connection
/// closes and the server releases every lease at once.
#[derive(Debug)]
pub(crate) struct Leases {
    pool: PgPool,
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    /// Incremented whenever the lease connection is lost (its locks with
    /// it): every lease of an earlier generation is gone.
    generation: watch::Sender<u64>,
}

/// The right to dial one partner, as long as it is held (dropped: given up).
#[derive(Debug)]
pub struct LinkLease {
    held: Option<(Arc<Leases>, i64, u64)>,
}

impl LinkLease {
    /// Resolves when the lease is lost (the database connection holding it
    /// broke); never, for a lease that cannot be lost (SQLite).
    pub async fn lost(&self) {
        let Some((leases, _, generation)) = &self.held else {
            return std::future::pending().await;
        };
        let mut rx = leases.generation.subscribe();
        let _ = rx.wait_for(|g| g != generation).await;
    }
}

impl Drop for LinkLease {
    fn drop(&mut self) {
        if let Some((leases, key, generation)) = self.held.take() {
            // Given back at once, so another replica need not wait for this
            // one to stop.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { leases.release(key, generation).await });
            }
        }
    }
}

/// The lease key of `partner`'s link.
fn lease_key(partner: &OrgId) -> i64 {
    let d = ring::digest::digest(&ring::digest::SHA256, partner.as_str().as_bytes());
    let mut low = [0u8; 4];
    low.copy_from_slice(&d.as_ref()[..4]);
    LEASE_KEYS | i64::from(u32::from_be_bytes(low))
}

impl Leases {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            conn: Default::default(),
            generation: watch::channel(0).0,
        }
    }

    async fn try_take(self: &Arc<Self>, key: i64) -> Result<Option<LinkLease>, StoreError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let opts = self.pool.connect_options();
            *conn = Some(PgConnection::connect_with(&opts).await?);
        }
        let c = conn.as_mut().expect("connected above");
        let took = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *c)
            .await;
        match took {
            Ok(true) => Ok(Some(LinkLease {
                held: Some((self.clone(), key, *self.generation.borrow())),
            })),
            Ok(false) => Ok(None),
            Err(e) => {
                // The connection (and whatever it held) is gone: every
                // lease of this generation is lost.
                *conn = None;
                self.generation.send_modify(|g| *g += 1);
                Err(e.into())
            }
        }
    }

    async fn release(&self, key: i64, generation: u64) {
        let mut conn = self.conn.lock().await;
        if *self.generation.borrow() != generation {
            return;
        }
        if let Some(c) = conn.as_mut() {
            let done = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut *c)
                .await;
            if done.is_err() {
                *conn = None;
                self.generation.send_modify(|g| *g += 1);
            }
        }
    }

    /// Checks the lease connection every `every`; when it has broken, every
    /// lease is lost (the server has released them) and links stop.
    pub(super) async fn watch(
        self: Arc<Self>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let mut conn = self.conn.lock().await;
            let Some(c) = conn.as_mut() else { continue };
            if c.ping().await.is_err() {
                tracing::warn!(
                    "lost the database connection holding partner link leases; links stop until they are taken again"
                );
                *conn = None;
                self.generation.send_modify(|g| *g += 1);
            }
        }
    }
}

impl Store {
    /// Takes the lease on dialling `partner`: `None` while another replica
    /// of this node (sharing the PostgreSQL database) holds it. With SQLite,
    /// always granted.
    pub async fn lease_link(&self, partner: &OrgId) -> Result<Option<LinkLease>, StoreError> {
        match &self.leases {
            None => Ok(Some(LinkLease { held: None })),
            Some(leases) => leases.try_take(lease_key(partner)).await,
        }
    }

    /// Wakes this process's subscriber streams for rows other replicas
    /// commit: listens on [`LOG_CHANNEL`] until the store closes. After a
    /// lost connection (notifications missed meanwhile) it reads the
    /// newest sequence number again.
    pub(super) async fn follow_replicas(self) {
        let Pool::Pg(pool) = &self.pool else { return };
        let mut listener: Option<PgListener> = None;
        loop {
            if listener.is_none() {
                match PgListener::connect_with(pool).await {
                    Ok(mut l) => match l.listen(LOG_CHANNEL).await {
                        Ok(()) => {
                            listener = Some(l);
                            if let Ok(seq) = self.latest_seq().await {
                                self.bump(seq);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot listen for other replicas' commits")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for other replicas' commits")
                    }
                }
                if listener.is_none() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = self.stop.cancelled() => return,
                    }
                }
            }
            let l = listener.as_mut().expect("listening");
            let got = tokio::select! {
                got = l.try_recv() => got,
                _ = self.stop.cancelled() => return,
            };
            match got {
                Ok(Some(n)) => {
                    if let Ok(seq) = n.payload().parse::<u64>() {
                        self.bump(seq);
                    }
                }
                // Reconnected: what was notified meanwhile is read now.
                Ok(None) => {
                    if let Ok(seq) = self.latest_seq().await {
                        self.bump(seq);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the notification connection; reconnecting");
                    listener = None;
                }
            }
        }
    }
}
