//! rustls configurations (ring provider, TLS 1.3/1.2, ALPN h2) with verifiers
//! that take identity only from a certificate verified against its own org's
//! CA bundle, read from a swappable [`SharedTrust`] so partner changes apply
//! to the next handshake without a restart.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::{IdentityError, Role, SpiffeId, TrustStore, Usage};

/// Where verifiers read the trust store current at the moment of a
/// handshake or request; the node swaps what it returns when partners,
/// revocations or CRLs change.
pub trait TrustSource: Send + Sync + std::fmt::Debug {
    /// The trust store in force now.
    fn current(&self) -> Arc<TrustStore>;
}

impl TrustSource for ArcSwap<TrustStore> {
    fn current(&self) -> Arc<TrustStore> {
        self.load_full()
    }
}

/// The trust store, shared between verifiers and swapped on changes.
pub type SharedTrust = Arc<dyn TrustSource>;

/// The ring crypto provider (the only one compiled in).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate chain and its private key, as loaded from PEM files.
pub struct CertifiedKey {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl CertifiedKey {
    /// Loads a PEM certificate chain and PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, IdentityError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| IdentityError::File {
                path: cert.display().to_string(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(IdentityError::File {
                path: cert.display().to_string(),
                reason: "no certificate in file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| IdentityError::File {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self { chain, key })
    }

    /// Loads from PEM text (used where certificates are made in memory).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::CertParse(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| IdentityError::CertParse(e.to_string()))?;
        Ok(Self { chain, key })
    }

    /// The SPIFFE id in the leaf certificate.
    pub fn spiffe_id(&self) -> Result<SpiffeId, IdentityError> {
        SpiffeId::from_cert_der(self.chain[0].as_ref())
    }
}

fn refuse(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The handshake-signature methods every verifier here shares: checked
/// with the verifier's `algs` (ring's algorithms).
macro_rules! handshake_signatures_by_algs {
    () => {
        handshake_signatures_by_algs!(@check verify_tls12_signature);
        handshake_signatures_by_algs!(@check verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
    (@check $name:ident) => {
        fn $name(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::$name(message, cert, dss, &self.algs)
        }
    };
}

/// Server side. The handshake proves the client holds the private key of the
/// certificate it presents; whether that certificate is **trusted** is
/// decided once per connection by [`crate::net::accept_mtls`] with
/// [`TrustStore::verify`] (chain to the claimed org's own CA). Deciding there
/// rather than in the handshake lets a refused caller receive a gRPC
/// `Unauthenticated` naming the reason instead of a bare TLS alert; the
/// node's request gate lets no request without a verified identity through.
#[derive(Debug)]
struct DeferredClientCertVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for DeferredClientCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Do not advertise which partners we trust.
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        // A caller without a certificate is refused by the request gate with
        // a clear status rather than by a handshake failure.
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures_by_algs!();
}

/// Client side: the server must be exactly the node we meant to dial, with a
/// certificate chaining to that org's CA. DNS names play no part.
#[derive(Debug)]
struct NodeCertVerifier {
    trust: SharedTrust,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let trust = self.trust.current();
        let id = trust
            .verify(end_entity, intermediates, now, Usage::Server, self.algs.all)
            .map_err(refuse)?;
        if id != self.expected {
            return Err(refuse(IdentityError::UnexpectedPeer {
                expected: self.expected.clone(),
                got: id,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures_by_algs!();
}

/// The server configuration of a node: its node certificate, client
/// certificates requested (and trusted per org in [`crate::net`]), ALPN h2.
pub fn server_config(node: &CertifiedKey) -> Result<Arc<ServerConfig>, IdentityError> {
    let id = node.spiffe_id()?;
    if id.role != Role::Node {
        return Err(IdentityError::WrongRole {
            id,
            expected: "node",
        });
    }
    let provider = provider();
    let verifier = Arc::new(DeferredClientCertVerifier {
        algs: provider.signature_verification_algorithms,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(node.chain.clone(), node.key.clone_key())
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration that presents `client`'s certificate (or none:
/// every node refuses such a client, but it can still check who a node is)
/// and accepts only a server whose verified SPIFFE id is `expected`.
pub fn client_config(
    trust: SharedTrust,
    expected: SpiffeId,
    client: Option<&CertifiedKey>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = provider();
    let verifier = Arc::new(NodeCertVerifier {
        trust,
        expected,
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|e| IdentityError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}
