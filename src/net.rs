//! Mutual-TLS transport for tonic. The server side accepts TCP, completes the
//! TLS handshake itself (so the per-org verifier decides), and hands tonic a
//! connection that carries the caller's verified SPIFFE id as its connect
//! info. The client side dials with a connector that expects one exact node
//! identity. DNS names play no part in identity.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::SpiffeId;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The authenticated caller of a connection, attached to every request on it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// SPIFFE id from the verified client certificate.
    pub id: SpiffeId,
    /// Remote socket address, for logs.
    pub remote: SocketAddr,
}

/// A server-side TLS connection whose client certificate has been verified.
pub struct PeerConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
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
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
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
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections on `listener` and yields those whose TLS handshake
/// (with mandatory, per-org verified client certificates) succeeds. The
/// server config is read per connection, so a swapped config applies to the
/// next handshake. Ends when the receiver is dropped.
pub fn accept_mtls(
    listener: TcpListener,
    tls: Arc<ArcSwap<ServerConfig>>,
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
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.load_full());
            let tx = tx.clone();
            tokio::spawn(async move {
                let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let id = io
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| SpiffeId::from_cert_der(c.as_ref()));
                let Some(Ok(id)) = id else {
                    // Unreachable with a mandatory-client-auth verifier; fail closed.
                    tracing::warn!(%remote, "connection without a verified identity dropped");
                    return;
                };
                tracing::debug!(%remote, peer = %id, "mTLS connection");
                let _ = tx
                    .send(Ok(PeerConn {
                        io,
                        info: PeerInfo { id, remote },
                    }))
                    .await;
            });
        }
    });
    rx
}

/// A lazily connecting gRPC channel to `endpoint` (`host:port`) over mutual
/// TLS with `tls`, whose verifier pins the expected node identity.
/// `sni` is sent as the TLS server name (the partner's org id).
pub fn mtls_channel(
    endpoint: &str,
    sni: &str,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = TlsConnector::from(tls);
    let sni = ServerName::try_from(sni.to_string())
        .unwrap_or_else(|_| ServerName::try_from("threatmesh.invalid").expect("valid name"));
    let ep = Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
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
