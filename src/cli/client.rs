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

/// How the CLI reaches its node, overriding `[client]` in the config.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientArgs {
    /// host:port of the node (default: client.server, else node.listen).
    #[arg(
        long,
        global = true,
        env = "THREATMESH_SERVER",
        value_name = "HOST:PORT"
    )]
    pub server: Option<String>,
    /// Admin certificate to present (default: client.admin_cert).
    #[arg(long, global = true, value_name = "PEM", requires = "admin_key")]
    pub admin_cert: Option<PathBuf>,
    /// Its private key (default: client.admin_key).
    #[arg(long, global = true, value_name = "PEM", requires = "admin_cert")]
    pub admin_key: Option<PathBuf>,
}

/// Loads the config and applies the command-line overrides of `[client]`.
pub fn load(config: &Path, conn: &ClientArgs) -> Result<Settings, CliError> {
    let mut s = Settings::load(config)?;
    if let Some(server) = &conn.server {
        crate::identity::check_endpoint(server)
            .map_err(|e| CliError::Usage(format!("--server: {e}")))?;
        s.client.server = server.clone();
    }
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
}

/// Which of our certificates the CLI presents.
#[derive(Debug, Clone, Copy)]
pub enum As {
    /// `client.admin_cert`.
    Admin,
    /// `client.publisher_cert`.
    Publisher,
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
