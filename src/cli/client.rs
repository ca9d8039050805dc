//! Connections from the CLI to our own node, authenticated with the org's
//! admin or publisher certificate, trusting only our own CA and accepting
//! only our own node's identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::Args;
use tonic::transport::Channel;

use super::CliError;
use crate::config::Settings;
use crate::identity::{CertifiedKey, SpiffeId, TrustStore, client_config};
use crate::model::OrgId;

/// Where the node is, overriding `client.server`: for commands that talk to
/// the running node.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Reaching the node")]
pub struct ServerArgs {
    /// host:port of the node (default: client.server, else node.listen).
    #[arg(
        long,
        global = true,
        env = "THREATMESH_SERVER",
        value_name = "HOST:PORT"
    )]
    pub server: Option<String>,
}

impl ServerArgs {
    /// Loads the config with `--server` applied.
    pub fn load(&self, config: &Path) -> Result<Settings, CliError> {
        let mut s = Settings::load(config)?;
        if let Some(server) = &self.server {
            crate::identity::check_endpoint(server)
                .map_err(|e| CliError::Usage(format!("--server: {e}")))?;
            s.client.server = server.clone();
        }
        Ok(s)
    }
}

/// How an Admin command reaches its node, overriding `[client]` in the
/// config.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Reaching the node")]
pub struct ClientArgs {
    /// Where the node is.
    #[command(flatten)]
    pub node: ServerArgs,
    /// Admin certificate to present (default: client.admin_cert).
    #[arg(long, global = true, value_name = "PEM", requires = "admin_key")]
    pub admin_cert: Option<PathBuf>,
    /// Its private key (default: client.admin_key).
    #[arg(long, global = true, value_name = "PEM", requires = "admin_cert")]
    pub admin_key: Option<PathBuf>,
}

/// How a publishing command reaches its node, overriding `[client]` in the
/// config.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Reaching the node")]
pub struct PublisherArgs {
    /// Where the node is.
    #[command(flatten)]
    pub node: ServerArgs,
    /// Publisher certificate to present (default: client.publisher_cert).
    #[arg(long, value_name = "PEM", requires = "publisher_key")]
    pub publisher_cert: Option<PathBuf>,
    /// Its private key (default: client.publisher_key).
    #[arg(long, value_name = "PEM", requires = "publisher_cert")]
    pub publisher_key: Option<PathBuf>,
}

impl PublisherArgs {
    /// Loads the config with these overrides applied.
    pub fn load(&self, config: &Path) -> Result<Settings, CliError> {
        let mut s = self.node.load(config)?;
        if let (Some(c), Some(k)) = (&self.publisher_cert, &self.publisher_key) {
            s.client.publisher_cert = c.clone();
            s.client.publisher_key = k.clone();
        }
        Ok(s)
    }
}

/// Loads the config and applies the command-line overrides of `[client]`.
pub fn load(config: &Path, conn: &ClientArgs) -> Result<Settings, CliError> {
    let mut s = conn.node.load(config)?;
    if let (Some(c), Some(k)) = (&conn.admin_cert, &conn.admin_key) {
        s.client.admin_cert = c.clone();
        s.client.admin_key = k.clone();
    }
    Ok(s)
}

/// The Admin service of our node, with the admin certificate.
pub fn admin(
    config: &Path,
    conn: &ClientArgs,
) -> Result<
    (
        Settings,
        crate::proto::v1::admin_client::AdminClient<Channel>,
    ),
    CliError,
> {
    let settings = load(config, conn)?;
    let ch = channel(&settings, As::Admin)?;
    Ok((
        settings,
        crate::proto::v1::admin_client::AdminClient::new(ch),
    ))
}

/// A session with our node's Admin service: the settings it was opened
/// with (for error messages naming the server) and the client.
pub struct AdminSession {
    /// Loaded settings.
    pub settings: Settings,
    /// The Admin client.
    pub client: crate::proto::v1::admin_client::AdminClient<Channel>,
}

impl AdminSession {
    /// Opens a session as [`admin`] does.
    pub fn open(config: &Path, conn: &ClientArgs) -> Result<Self, CliError> {
        let (settings, client) = admin(config, conn)?;
        Ok(Self { settings, client })
    }

    /// A refused or failed call, as the CLI reports it.
    pub fn fail(&self, s: tonic::Status) -> CliError {
        rpc_error(&self.settings, s)
    }

    /// A stream that broke off with `s`. A connection the node closes
    /// (our certificate revoked, the node stopping) shows on the client only
    /// as a broken HTTP/2 stream, so one cheap call on a new connection
    /// asks why: its refusal, if any, is the reason reported.
    pub async fn stream_broken(&mut self, s: tonic::Status) -> CliError {
        if matches!(
            s.code(),
            tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable
        ) {
            // On a new connection: the old one may still be closing, and a
            // call on it would only be cancelled.
            let probe = match channel(&self.settings, As::Admin) {
                Ok(ch) => {
                    crate::proto::v1::admin_client::AdminClient::new(ch)
                        .status(crate::proto::v1::StatusRequest::default())
                        .await
                }
                Err(_) => return self.fail(s),
            };
            if let Err(why) = probe {
                let server = self.settings.client_server().unwrap_or_default();
                return CliError::Rpc(format!(
                    "the node at {server} ended the stream; asked again, it says: {}",
                    rpc_error(&self.settings, why)
                ));
            }
        }
        self.fail(s)
    }
}

/// Which of our certificates the CLI presents.
#[derive(Debug, Clone, Copy)]
pub enum As {
    /// `client.admin_cert`.
    Admin,
    /// `client.publisher_cert`.
    Publisher,
}

/// Sends `items` in one PublishBatch: for each item, in order, what
/// Publish would have answered it (every item gets the call's own error if
/// the call failed, and an item the node left unanswered an internal error).
pub async fn publish_batch(
    client: &mut crate::proto::v1::exchange_client::ExchangeClient<Channel>,
    items: Vec<crate::proto::v1::PublishRequest>,
) -> Vec<Result<crate::proto::v1::PublishResponse, tonic::Status>> {
    let n = items.len();
    let request = crate::proto::v1::PublishBatchRequest { items };
    let mut answers: Vec<_> = match client.publish_batch(request).await {
        Ok(r) => r
            .into_inner()
            .outcomes
            .into_iter()
            .take(n)
            .map(|o| match o.published {
                Some(p) if o.code == 0 => Ok(p),
                _ => Err(tonic::Status::new(
                    tonic::Code::from(o.code as i32),
                    o.message,
                )),
            })
            .collect(),
        Err(s) => vec![Err(s); n],
    };
    answers.resize_with(n, || {
        Err(tonic::Status::internal(
            "the node answered fewer outcomes than items",
        ))
    });
    answers
}

/// A lazily connecting channel to our node.
pub fn channel(settings: &Settings, who: As) -> Result<Channel, CliError> {
    let (ck, cp, kk, kp) = match who {
        As::Admin => (
            "client.admin_cert",
            &settings.client.admin_cert,
            "client.admin_key",
            &settings.client.admin_key,
        ),
        As::Publisher => (
            "client.publisher_cert",
            &settings.client.publisher_cert,
            "client.publisher_key",
            &settings.client.publisher_key,
        ),
    };
    Settings::check_file(ck, cp, false)?;
    Settings::check_file(kk, kp, true)?;
    Settings::check_file("tls.ca_cert", &settings.tls.ca_cert, false)?;
    let own = settings.org_id();
    let ca = std::fs::read_to_string(&settings.tls.ca_cert)
        .map_err(|e| CliError::Failed(format!("{}: {e}", settings.tls.ca_cert.display())))?;
    let trust = Arc::new(ArcSwap::from_pointee(TrustStore::new(own.clone(), &ca)?));
    let cert = CertifiedKey::load(cp, kp)?;
    let tls = client_config(trust, SpiffeId::node(&own), Some(&cert))?;
    let server = settings.client_server()?;
    crate::net::mtls_channel(&server, own.as_str(), tls)
        .map_err(|e| CliError::Failed(format!("client.server {server}: {e}")))
}

/// Whether something accepts connections at the node's address: taken as
/// the node running (commands that replace its files refuse then).
pub async fn node_answers(settings: &Settings) -> bool {
    let Ok(server) = settings.client_server() else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::net::TcpStream::connect(server.as_str())
        )
        .await,
        Ok(Ok(_))
    )
}

/// Turns an RPC error into a message naming the node and what to check.
/// A refusal of the request itself (invalid argument, not found, not
/// possible in the node's state) is a usage error (exit 64); anything else
/// exits 1.
pub fn rpc_error(settings: &Settings, s: tonic::Status) -> CliError {
    let server = settings.client_server().unwrap_or_default();
    if let Some(why) = connection_failure(&s, &server, &settings.org_id()) {
        return CliError::Rpc(why);
    }
    match s.code() {
        tonic::Code::Unavailable => CliError::Rpc(format!(
            "cannot reach the node at {server} ({}); is `threatmesh serve` running with this config?",
            s.message()
        )),
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
            CliError::Usage(format!("node at {server} refused: {}", s.message()))
        }
        code => CliError::Rpc(format!(
            "node at {server} refused: {code:?}: {}",
            s.message()
        )),
    }
}

/// What went wrong connecting to `server`, in words, when `s` failed on the
/// connection (nothing listening, not TLS, not our node, our certificate
/// refused) rather than on the request; found in the error's sources.
pub fn connection_failure(s: &tonic::Status, server: &str, own: &OrgId) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_failure(t, server, own));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // TLS errors reach hyper wrapped in an I/O error.
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls_failure(t, server, own));
            }
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return Some(format!(
                        "nothing listens at {server} (connection refused); is `threatmesh serve` running, and is that its node.listen?"
                    ));
                }
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe => {
                    return Some(format!(
                        "{server} closed the connection during the TLS handshake: is that the node's gRPC port (node.listen), not another service?"
                    ));
                }
                std::io::ErrorKind::TimedOut => {
                    return Some(format!(
                        "{server} did not answer in time; check the address and any firewall between"
                    ));
                }
                _ => {}
            }
        }
        next = e.source();
    }
    None
}

/// A TLS failure towards our node `server`, in words.
fn tls_failure(e: &rustls::Error, server: &str, own: &OrgId) -> String {
    use rustls::{AlertDescription as A, CertificateError, Error as E};
    match e {
        E::InvalidMessage(_) => format!(
            "{server} does not speak TLS: is that the node's gRPC port (node.listen), not another service?"
        ),
        E::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<crate::identity::IdentityError>() {
                Some(crate::identity::IdentityError::UnknownOrg(id)) => format!(
                    "{server} is {id}, not our node (spiffe://{own}/node): check --server or client.server, and -c"
                ),
                Some(why) => format!("{server} presented a certificate we refuse: {why}"),
                None => format!("{server} presented a certificate we refuse: {other}"),
            }
        }
        E::InvalidCertificate(_) => {
            format!(
                "{server} presented a certificate we refuse ({e}): is it our node, and is tls.ca_cert our CA?"
            )
        }
        E::AlertReceived(A::CertificateRevoked) => format!(
            "the node at {server} refused our certificate: it has been revoked; use a current one (`threatmesh certs list`)"
        ),
        E::AlertReceived(A::CertificateExpired) => format!(
            "the node at {server} refused our certificate: it has expired; issue a new one (`threatmesh certs issue`)"
        ),
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::AccessDenied
            | A::CertificateRequired),
        ) => format!(
            "the node at {server} refused our certificate ({a:?}): present one issued by our CA for this org (--admin-cert/--admin-key or [client])"
        ),
        E::AlertReceived(a) => format!("the node at {server} ended the TLS session: {a:?}"),
        other => format!("TLS with {server} failed: {other}"),
    }
}
