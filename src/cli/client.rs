//! Connections from the CLI to our own node, authenticated with the org's
//! admin or publisher certificate, trusting only our own CA and accepting
//! only our own node's identity.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tonic::transport::Channel;

use super::CliError;
use crate::config::Settings;
use crate::identity::{CertifiedKey, SpiffeId, TrustStore, client_config};

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

/// Turns an RPC error into a message naming the node and what to check.
pub fn rpc_error(settings: &Settings, s: tonic::Status) -> CliError {
    let server = settings.client_server().unwrap_or_default();
    if s.code() == tonic::Code::Unavailable {
        CliError::Rpc(format!(
            "cannot reach the node at {server} ({}); is `threatmesh serve` running with this config?",
            s.message()
        ))
    } else {
        CliError::Rpc(format!(
            "node at {server} refused: {:?}: {}",
            s.code(),
            s.message()
        ))
    }
}
