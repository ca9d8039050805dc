//! `threatmesh certs issue|rotate|revoke`: certificates of our own org, issued by
//! our CA, and their revocation (enforced by a running node within
//! `federation.peer_refresh_ms`, on new connections and on the next RPC of
//! open ones).

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use super::{CliError, local_actor, write_file};
use crate::config::Settings;
use crate::identity::{CertifiedKey, SpiffeId, TrustStore, Usage, cert_serial, issue, provider};
use crate::store::Store;

/// Which kind of certificate to issue.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CertRole {
    /// `spiffe://<org>/admin/<name>`.
    Admin,
    /// `spiffe://<org>/publisher/<name>`.
    Publisher,
}

/// `threatmesh certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Issue an admin or publisher certificate from our CA (`tls.ca_key`).
    #[command(
        after_help = "Example:\n  threatmesh certs issue --role publisher --name misp-bridge --out /etc/threatmesh/feeds"
    )]
    Issue {
        /// Role of the certificate.
        #[arg(long, value_enum)]
        role: CertRole,
        /// Name in the SPIFFE path (a-z 0-9 - _ .).
        #[arg(long)]
        name: String,
        /// Directory for `<name>.pem` and `<name>.key` (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
    /// Re-issue the node certificate in place (`tls.node_cert`,
    /// `tls.node_key`). A running node serves it to new connections within
    /// `federation.peer_refresh_ms`, without a restart; open connections and
    /// partner streams continue.
    Rotate {
        /// Validity in days.
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
    /// Revoke one of our certificates: the node refuses it on new
    /// connections and on the next RPC of open ones.
    Revoke {
        /// The certificate file (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Why (recorded in the audit ledger).
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
}

/// Runs a certs command.
pub async fn run(config: &Path, cmd: &CertsCommand) -> Result<(), CliError> {
    let settings = Settings::load(config)?;
    let own = settings.org_id();
    match cmd {
        CertsCommand::Issue {
            role,
            name,
            out,
            days,
        } => {
            let id = match role {
                CertRole::Admin => SpiffeId::admin(&own, name),
                CertRole::Publisher => SpiffeId::publisher(&own, name),
            }
            .map_err(|e| CliError::Usage(format!("--name: {e}")))?;
            let (c, serial) = issue_from_ca(&settings, &id, *days)?;
            let (cert_path, key_path) = (
                out.join(format!("{name}.pem")),
                out.join(format!("{name}.key")),
            );
            write_file(&cert_path, c.cert_pem.as_bytes(), false)?;
            write_file(&key_path, c.key_pem.as_bytes(), true)?;
            out!("issued {id} (serial {serial}), valid {days} days");
            out!("  certificate {}", cert_path.display());
            out!("  key         {} (mode 0600)", key_path.display());
            Ok(())
        }
        CertsCommand::Rotate { days } => {
            let id = SpiffeId::node(&own);
            let (c, serial) = issue_from_ca(&settings, &id, *days)?;
            // Each file is replaced atomically; the node takes the pair only
            // once both match.
            write_file(&settings.tls.node_key, c.key_pem.as_bytes(), true)?;
            write_file(&settings.tls.node_cert, c.cert_pem.as_bytes(), false)?;
            out!("rotated {id}: new serial {serial}, valid {days} days");
            out!("a running node serves it to new connections within federation.peer_refresh_ms");
            Ok(())
        }
        CertsCommand::Revoke { cert, reason } => {
            let pem = std::fs::read_to_string(cert)
                .map_err(|e| CliError::Usage(format!("--cert {}: {e}", cert.display())))?;
            let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
                .map_err(|e| CliError::Usage(format!("--cert {}: {e}", cert.display())))?;
            let der: rustls_pki_types::CertificateDer<'static> = der;
            let ca = std::fs::read_to_string(&settings.tls.ca_cert).map_err(|e| {
                CliError::Failed(format!("{}: {e}", settings.tls.ca_cert.display()))
            })?;
            // Only certificates our own CA issued can be revoked here.
            let trust = TrustStore::new(own.clone(), &ca)?;
            let algs = provider().signature_verification_algorithms.all;
            let id = trust
                .verify(
                    &der,
                    &[],
                    rustls_pki_types::UnixTime::now(),
                    Usage::Client,
                    algs,
                )
                .map_err(|e| CliError::Usage(format!("--cert {}: {e}", cert.display())))?;
            if id.org != own {
                return Err(CliError::Usage(format!(
                    "--cert: {id} is not a certificate of {own}"
                )));
            }
            let serial = cert_serial(der.as_ref())?;
            let store = Store::open_sqlite(&settings.store.path).await?;
            let new = store
                .revoke_cert(&serial, &id.to_string(), reason, &local_actor())
                .await;
            store.close().await;
            if new? {
                out!(
                    "revoked {id} (serial {serial}); a running node refuses it within federation.peer_refresh_ms"
                );
            } else {
                out!("{id} (serial {serial}) was already revoked");
            }
            Ok(())
        }
    }
}

/// Issues a certificate for `id` from our CA (`tls.ca_cert`, `tls.ca_key`);
/// returns it with its serial.
fn issue_from_ca(
    settings: &Settings,
    id: &SpiffeId,
    days: i64,
) -> Result<(crate::identity::IssuedCert, String), CliError> {
    Settings::check_file("tls.ca_cert", &settings.tls.ca_cert, false)?;
    Settings::check_file("tls.ca_key", &settings.tls.ca_key, true)?;
    if !(1..=3650).contains(&days) {
        return Err(CliError::Usage("--days: must be 1-3650".into()));
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| CliError::Failed(format!("{}: {e}", p.display())))
    };
    let c = issue(
        &read(&settings.tls.ca_cert)?,
        &read(&settings.tls.ca_key)?,
        id,
        days,
    )?;
    let serial = cert_serial(CertifiedKey::from_pem(&c.cert_pem, &c.key_pem)?.chain[0].as_ref())?;
    Ok((c, serial))
}
