//! Mutual-TLS transport for tonic. The server side accepts TCP, completes the
//! TLS handshake itself, verifies the client certificate against the CA of
//! the org it claims, and hands tonic a connection that carries the outcome
//! as its connect info; [`request_gate`] then refuses every request
//! of a connection without a verified identity, before any service sees it.
//! The client side dials with a connector that expects one exact node
//! identity. DNS names play no part in identity.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, server::TlsStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::clock::Clock;
use crate::identity::{IdentityError, SharedTrust, SpiffeId, Usage};
use crate::rpc::RpcError;

/// Bounds on connections that have not (yet) shown a verified client
/// certificate, so idle or half-open connections cannot use up the node's
/// file descriptors. Verified connections are not counted.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a connection without a verified identity is kept (its
    /// requests are answered `Unauthenticated` meanwhile).
    pub unverified_grace: Duration,
    /// Most unverified connections from one IP address.
    pub max_per_address: usize,
    /// Most unverified connections in all; the oldest makes room beyond it.
    pub max_total: usize,
    /// Most verified connections one partner org may hold open (our own
    /// admins and publishers are not counted).
    pub max_per_partner: usize,
}

impl ConnLimits {
    /// The limits `[node]` sets.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        let n = &s.node;
        Self {
            handshake_timeout: Duration::from_millis(n.handshake_timeout_ms),
            unverified_grace: Duration::from_millis(n.unverified_grace_ms),
            max_per_address: n.max_unverified_per_address,
            max_total: n.max_unverified,
            max_per_partner: s.limits.max_connections_per_partner,
        }
    }
}

/// Unverified connections open now, in all and per address.
#[derive(Debug, Default)]
struct Unverified {
    /// Open unverified connections, oldest first, each with what closes it.
    open: std::collections::BTreeMap<u64, CancellationToken>,
    by_address: HashMap<std::net::IpAddr, usize>,
    next: u64,
}

/// A counted unverified connection; uncounted when dropped. `evicted` is
/// cancelled when a newer connection takes its place.
struct Slot {
    id: u64,
    ip: std::net::IpAddr,
    evicted: CancellationToken,
    counts: Arc<Mutex<Unverified>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut u = self.counts.lock().expect("not poisoned");
        u.open.remove(&self.id);
        if let Some(n) = u.by_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.by_address.remove(&self.ip);
            }
        }
    }
}

/// The caller of a connection, attached to every request on it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// SPIFFE id from the client certificate, verified against the CA bundle
    /// of the org it names — or why there is none.
    pub identity: Result<SpiffeId, IdentityError>,
    /// Remote socket address, for logs.
    pub remote: SocketAddr,
    /// Serial number (hex) of the client certificate; empty without one.
    pub serial: String,
    /// Set when the connection is over its org's connection limit: every
    /// request is refused with this, and the connection closed soon after.
    pub over_limit: Option<String>,
}

/// The request gate, installed in front of every service of a node: a
/// request on a connection without a verified identity is answered
/// `Unauthenticated` with the reason, and reaches no service. Revocation of
/// our own certificates is re-checked on every request, so a certificate
/// revoked while its connection is open is refused on its next RPC.
pub fn request_gate(
    trust: SharedTrust,
    clock: Clock,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req: tonic::Request<()>| {
        let Some(peer) = req.extensions().get::<PeerInfo>() else {
            return Err(RpcError::Unauthenticated.into());
        };
        if let Some(why) = &peer.over_limit {
            return Err(tonic::Status::resource_exhausted(why.clone()));
        }
        let verdict = match &peer.identity {
            Ok(id) => trust
                .current()
                .check_revocation(id, &peer.serial, clock.now_ms()),
            Err(e) => Err(e.clone()),
        };
        verdict
            .map(|()| req)
            .map_err(|e| RpcError::CertificateRefused(e).into())
    }
}

/// The open server-side connections with a verified identity, so that a
/// change of trust (a revoked certificate, a new CRL, a suspended or removed
/// partner) closes the ones it no longer allows, instead of waiting for
/// their next request.
#[derive(Clone, Default)]
pub struct Connections {
    /// Connection number → who is on it and how to close it.
    open: Arc<Mutex<HashMap<u64, LiveConn>>>,
    /// Next connection number.
    next: Arc<AtomicU64>,
    /// Connections without a verified identity (handshaking or refused).
    unverified: Arc<Mutex<Unverified>>,
    /// Connections refused per partner org since last taken (for the
    /// ledger: see [`Connections::take_refused`]).
    refused: Arc<Mutex<HashMap<crate::model::OrgId, u64>>>,
    /// Where refused handshakes and certificates are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

struct LiveConn {
    id: SpiffeId,
    serial: String,
    remote: SocketAddr,
    close: CancellationToken,
}

impl Connections {
    /// Open connections, counting refusals in `metrics`.
    pub fn with_metrics(metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    fn register(&self, id: &SpiffeId, serial: &str, remote: SocketAddr) -> ConnGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        self.open.lock().expect("not poisoned").insert(
            key,
            LiveConn {
                id: id.clone(),
                serial: serial.to_string(),
                remote,
                close: close.clone(),
            },
        );
        ConnGuard {
            key: Some(key),
            conns: self.clone(),
            closed: Box::pin(close.cancelled_owned()),
            reason: "connection closed: its certificate is no longer trusted",
            _slot: None,
        }
    }

    /// Closes every open connection whose identity and certificate serial
    /// `allowed` now refuses; returns how many were closed.
    pub fn close_refused(
        &self,
        mut allowed: impl FnMut(&SpiffeId, &str) -> Result<(), IdentityError>,
    ) -> usize {
        let open = self.open.lock().expect("not poisoned");
        let mut closed = 0;
        for c in open.values() {
            if c.close.is_cancelled() {
                continue;
            }
            if let Err(e) = allowed(&c.id, &c.serial) {
                tracing::warn!(remote = %c.remote, peer = %c.id, serial = %c.serial, reason = %e, "closing open connection");
                c.close.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// Partner orgs refused a connection (over their limit) since the last
    /// call, with how many: the node puts them on its ledger.
    pub fn take_refused(&self) -> Vec<(crate::model::OrgId, u64)> {
        self.refused.lock().expect("not poisoned").drain().collect()
    }

    /// How many connections without a verified identity are open (in the
    /// handshake, or refused and about to be closed).
    pub fn unverified(&self) -> usize {
        self.unverified.lock().expect("not poisoned").open.len()
    }

    /// Counts a new unverified connection from `ip`, unless its address is
    /// at its limit. When the total is, the oldest unverified connection is
    /// closed to make room: a client that completes its handshake at once
    /// (a partner, an admin) always gets in, however many idle connections
    /// others hold.
    fn admit(&self, ip: std::net::IpAddr, limits: &ConnLimits) -> Option<Slot> {
        let mut u = self.unverified.lock().expect("not poisoned");
        if u.by_address.get(&ip).copied().unwrap_or(0) >= limits.max_per_address {
            return None;
        }
        while u.open.len() >= limits.max_total {
            let Some((_, oldest)) = u.open.pop_first() else {
                break;
            };
            oldest.cancel();
        }
        let id = u.next;
        u.next += 1;
        let evicted = CancellationToken::new();
        u.open.insert(id, evicted.clone());
        *u.by_address.entry(ip).or_insert(0) += 1;
        Some(Slot {
            id,
            ip,
            evicted,
            counts: self.unverified.clone(),
        })
    }

    /// How many open connections match `f` (identity, serial).
    pub fn count_where(&self, mut f: impl FnMut(&SpiffeId, &str) -> bool) -> usize {
        self.open
            .lock()
            .expect("not poisoned")
            .values()
            .filter(|c| !c.close.is_cancelled() && f(&c.id, &c.serial))
            .count()
    }
}

/// Ties a connection to its entry in [`Connections`] (verified) or its
/// unverified slot: resolves when the connection must close, and removes
/// the entry or frees the slot when dropped.
struct ConnGuard {
    key: Option<u64>,
    conns: Connections,
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Why it is closed when `closed` resolves.
    reason: &'static str,
    _slot: Option<Slot>,
}

impl ConnGuard {
    /// A connection kept, still counted as unverified in `slot`, only until
    /// `grace` passes (or a newer connection evicts it), then closed with
    /// `reason`: long enough to answer its requests with why.
    fn closing_after(
        conns: &Connections,
        slot: Slot,
        grace: Duration,
        reason: &'static str,
    ) -> Self {
        let evicted = slot.evicted.clone();
        let grace = tokio::time::sleep(grace);
        ConnGuard {
            key: None,
            conns: conns.clone(),
            closed: Box::pin(async move {
                tokio::select! {
                    _ = grace => {}
                    _ = evicted.cancelled() => {}
                }
            }),
            reason,
            _slot: Some(slot),
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.conns.open.lock().expect("not poisoned").remove(&key);
        }
    }
}

/// A server-side TLS connection whose client certificate has been verified.
pub struct PeerConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
    /// Closes it: when trust in a verified identity ends, or after the
    /// grace period for one without.
    guard: ConnGuard,
}

impl PeerConn {
    /// An error once the connection has been ordered closed, so the HTTP/2
    /// server drops it and every stream on it ends.
    fn check_open(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let g = &mut self.guard;
        g.closed
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::ConnectionAborted, g.reason))
    }
}

impl Connected for PeerConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Where each accepted connection's server TLS config comes from: the
/// node's current one (swapped when its certificate rotates), offering
/// other application protocols when given (the TAXII port speaks HTTP/1.1
/// beside HTTP/2; gRPC only HTTP/2).
#[derive(Clone)]
pub struct ServerTls {
    /// The node's server config.
    pub config: Arc<ArcSwap<ServerConfig>>,
    /// ALPN protocols to offer instead of the config's.
    pub alpn: Option<Vec<Vec<u8>>>,
}

impl ServerTls {
    /// The gRPC port's: the node's config as it is.
    pub fn grpc(config: Arc<ArcSwap<ServerConfig>>) -> Self {
        Self { config, alpn: None }
    }

    /// An HTTPS port's: HTTP/2 and HTTP/1.1.
    pub fn https(config: Arc<ArcSwap<ServerConfig>>) -> Self {
        Self {
            config,
            alpn: Some(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
        }
    }

    fn current(&self) -> Arc<ServerConfig> {
        let config = self.config.load_full();
        match &self.alpn {
            None => config,
            Some(alpn) => {
                let mut c = (*config).clone();
                c.alpn_protocols = alpn.clone();
                Arc::new(c)
            }
        }
    }
}

/// Accepts connections on `listener`, completes the TLS handshake, and
/// verifies the client certificate chain against the CA bundle of the org
/// it claims, using the trust store current at that moment. The server
/// config is also read per connection, so swaps apply to the next one.
/// Verified connections are registered in `conns`. Ends when the receiver
/// is dropped.
pub fn accept_mtls(
    listener: TcpListener,
    tls: ServerTls,
    trust: SharedTrust,
    conns: Connections,
    clock: Clock,
    limits: ConnLimits,
) -> mpsc::Receiver<Result<PeerConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            // Bounded before anything is read: a flood of idle or
            // half-open connections from one address (or many) is refused
            // here and cannot lock partners and admins out.
            let Some(slot) = conns.admit(remote.ip(), &limits) else {
                tracing::debug!(%remote, "connection refused: too many unverified connections");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            let trust = trust.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                let handshake = tokio::select! {
                    r = handshake => r,
                    _ = slot.evicted.cancelled() => {
                        tracing::debug!(%remote, "unverified connection closed to make room");
                        return;
                    }
                };
                let io = match handshake {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        conns
                            .metrics
                            .count_tls_failure(crate::metrics::tls_failure_reason(&e));
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        conns.metrics.count_tls_failure("timeout");
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = verify_client(&io, &trust, clock);
                let serial = io
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::identity::cert_serial(c.as_ref()).ok())
                    .unwrap_or_default();
                let mut over_limit = None;
                let guard = match &identity {
                    Ok(id) => {
                        let own = id.org == *trust.current().own_org();
                        if !own
                            && conns.count_where(|open, _| open.org == id.org)
                                >= limits.max_per_partner
                        {
                            tracing::warn!(%remote, peer = %id, limit = limits.max_per_partner, "partner at its connection limit (limits.max_connections_per_partner)");
                            *conns
                                .refused
                                .lock()
                                .expect("not poisoned")
                                .entry(id.org.clone())
                                .or_default() += 1;
                            over_limit = Some(format!(
                                "{} already holds {} connections, the most one partner may (limits.max_connections_per_partner); close one or retry later",
                                id.org, limits.max_per_partner
                            ));
                            // Kept just long enough to say so, like a
                            // connection without a certificate.
                            ConnGuard::closing_after(
                                &conns,
                                slot,
                                limits.unverified_grace,
                                "connection closed: over its org's connection limit",
                            )
                        } else {
                            drop(slot);
                            tracing::debug!(%remote, peer = %id, "mTLS connection");
                            conns.register(id, &serial, remote)
                        }
                    }
                    Err(e) => {
                        conns
                            .metrics
                            .count_tls_failure(crate::metrics::identity_failure_reason(e));
                        tracing::warn!(%remote, reason = %e, "client certificate refused");
                        // Kept (and counted) just long enough to answer its
                        // requests with the reason, then closed.
                        ConnGuard::closing_after(
                            &conns,
                            slot,
                            limits.unverified_grace,
                            "connection closed: no verified client certificate",
                        )
                    }
                };
                let _ = tx
                    .send(Ok(PeerConn {
                        io,
                        guard,
                        info: PeerInfo {
                            identity,
                            remote,
                            serial,
                            over_limit,
                        },
                    }))
                    .await;
            });
        }
    });
    rx
}

fn verify_client(
    io: &TlsStream<TcpStream>,
    trust: &SharedTrust,
    clock: Clock,
) -> Result<SpiffeId, IdentityError> {
    let certs = io.get_ref().1.peer_certificates().unwrap_or_default();
    let Some((end_entity, intermediates)) = certs.split_first() else {
        return Err(IdentityError::NoClientCert);
    };
    let algs = crate::identity::provider()
        .signature_verification_algorithms
        .all;
    trust.current().verify(
        end_entity,
        intermediates,
        clock.unix_time(),
        Usage::Client,
        algs,
    )
}

/// HTTP/2 keepalive on a connection: a PING every `interval`; a peer that
/// does not answer within `timeout` is taken as gone and the connection
/// closed, so a frozen link is noticed in `interval + timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// How often to PING.
    pub interval: Duration,
    /// How long to wait for the answer.
    pub timeout: Duration,
}

impl Keepalive {
    /// The keepalive `[node]` sets (links and the server).
    pub fn from_settings(n: &crate::config::NodeSettings) -> Self {
        Self {
            interval: Duration::from_millis(n.keepalive_interval_ms),
            timeout: Duration::from_millis(n.keepalive_timeout_ms),
        }
    }
}

impl Default for Keepalive {
    /// For short-lived clients (the CLI, tests): 30 s, 20 s.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(20),
        }
    }
}

/// [`mtls_channel_with`] the default [`Keepalive`].
pub fn mtls_channel(
    endpoint: &str,
    sni: &str,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    mtls_channel_with(endpoint, sni, tls, Keepalive::default())
}

/// A lazily connecting gRPC channel to `endpoint` (`host:port`) over mutual
/// TLS with `tls`, whose verifier pins the expected node identity.
/// `sni` is sent as the TLS server name (the partner's org id).
pub fn mtls_channel_with(
    endpoint: &str,
    sni: &str,
    tls: Arc<ClientConfig>,
    keepalive: Keepalive,
) -> Result<Channel, tonic::transport::Error> {
    let connector = TlsConnector::from(tls);
    let sni = ServerName::try_from(sni.to_string())
        .unwrap_or_else(|_| ServerName::try_from("threatmesh.invalid").expect("valid name"));
    let ep = Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(Duration::from_secs(10))
        // Bounded receive windows: what a server may push ahead of our
        // reading is what we hold in memory per stream (hyper's defaults
        // are 2 MB per stream and 5 MB per connection).
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive.interval)
        .keep_alive_timeout(keepalive.timeout);
    let svc = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        let sni = sni.clone();
        async move {
            let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(7443);
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(sni, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(ep.connect_with_connector_lazy(svc))
}
