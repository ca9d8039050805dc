//! `threatmesh certs ...`: certificates of our own org, issued by our CA
//! through the node's Admin service, their revocation (enforced at once:
//! new connections are refused and open ones closed), our CRL for partners,
//! and partners' CRLs.

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use super::client::{AdminSession, ClientArgs};
use super::table::{col, listing};
use super::{CliError, write_file};
use crate::identity::{SpiffeId, certificate_request};
use crate::proto::v1::revoke_cert_request::Which;
use crate::proto::v1::{
    CertRecord, CertRole as ProtoRole, ExportCrlRequest, ImportCrlRequest, IssueCertRequest,
    ListCertsRequest, RevokeCertRequest, RotateNodeCertRequest,
};

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
    /// Issue an admin or publisher certificate. The key is made here and
    /// never leaves this machine; the node signs a request for it with our
    /// CA (the node must hold `tls.ca_key`).
    #[command(
        after_help = "Examples:\n  threatmesh certs issue --role publisher --name misp-bridge --out /etc/threatmesh/feeds\n  threatmesh certs issue --role admin --name alice --days 90 --out alice"
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
        /// Validity in days (1-3650).
        #[arg(long, default_value_t = 397)]
        days: u32,
    },
    /// Certificates of our org known to the node, with their revocation.
    #[command(after_help = "\
Examples:
  threatmesh certs list
  threatmesh certs list --json | jq -r 'select(.revoked) | .serial'")]
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Re-issue the node certificate in place (`tls.node_cert`,
    /// `tls.node_key` on the node's host). New connections get it at once,
    /// without a restart; open connections and partner streams continue.
    #[command(after_help = "\
Examples:
  threatmesh certs rotate                                   # new node certificate, same names
  threatmesh certs rotate --days 90 --dns-name node.cert.example")]
    Rotate {
        /// Validity in days (1-3650).
        #[arg(long, default_value_t = 397)]
        days: u32,
        /// Host name (DNS name or IP address) the new certificate serves
        /// as, for standard clients (repeatable); default: those of the
        /// current certificate.
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
    },
    /// Revoke one of our certificates: new connections with it are refused
    /// and its open connections are closed at once.
    #[command(after_help = "\
Examples:
  threatmesh certs revoke --cert feeds/misp-bridge.pem --reason key-compromise
  threatmesh certs revoke --serial 5f1c0e... --reason superseded
Then give partners the new CRL: threatmesh certs crl --out our.crl")]
    Revoke {
        /// The certificate file (PEM).
        #[arg(long, required_unless_present = "serial", conflicts_with = "serial")]
        cert: Option<PathBuf>,
        /// Its serial, as `certs list` prints it.
        #[arg(long)]
        serial: Option<String>,
        /// Why (recorded in the audit ledger).
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Write our CRL (signed by our CA, valid `revocation.crl_validity_days`)
    /// for partners to import.
    #[command(after_help = "\
Examples:
  threatmesh certs crl --out cert.example.crl   # give it to partners: certs import-crl")]
    Crl {
        /// Where to write the CRL (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a partner's CRL (PEM or DER). It must be signed by that
    /// partner's CA and not older than the one imported before; its
    /// certificates are refused at once, open connections closed.
    #[command(after_help = "\
What happens when the CRL passes its next-update time is the node setting
revocation.stale_crl: \"refuse\" (default) refuses all of the partner's
certificates until a fresh CRL is imported; \"accept\" keeps accepting those
not listed.")]
    #[command(after_help = "\
Examples:
  threatmesh certs import-crl --partner isp.example isp.example.crl")]
    ImportCrl {
        /// Partner org id.
        #[arg(long)]
        partner: String,
        /// The CRL file.
        file: PathBuf,
    },
}

fn ms_date(ms: i64) -> String {
    super::audit::rfc3339(ms)
}

fn cert_json(c: &CertRecord) -> serde_json::Value {
    serde_json::json!({
        "serial": c.serial, "spiffe_id": c.spiffe_id,
        "not_before_unix_ms": c.not_before_unix_ms, "not_after_unix_ms": c.not_after_unix_ms,
        "issued_unix_ms": c.issued_unix_ms, "issued_by": c.issued_by,
        "revoked": c.revoked, "revoked_unix_ms": c.revoked_unix_ms,
        "revocation_reason": c.revocation_reason,
    })
}

/// Runs a certs command.
pub async fn run(config: &Path, conn: &ClientArgs, cmd: &CertsCommand) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    match cmd {
        CertsCommand::Issue {
            role,
            name,
            out,
            days,
        } => issue(&mut a, *role, name, out, *days).await,
        CertsCommand::List { json } => list(&mut a, *json).await,
        CertsCommand::Rotate { days, dns_names } => rotate(&mut a, *days, dns_names).await,
        CertsCommand::Revoke {
            cert,
            serial,
            reason,
        } => {
            let which = match (cert, serial) {
                (Some(path), _) => Which::CertPem(
                    std::fs::read_to_string(path)
                        .map_err(|e| CliError::Usage(format!("--cert {}: {e}", path.display())))?,
                ),
                (None, Some(s)) => Which::Serial(s.clone()),
                (None, None) => return Err(CliError::Usage("give --cert or --serial".into())),
            };
            revoke(&mut a, which, reason).await
        }
        CertsCommand::Crl { out } => crl(&mut a, out).await,
        CertsCommand::ImportCrl { partner, file } => import_crl(&mut a, partner, file).await,
    }
}

/// `certs issue`: the key is made here and never leaves this machine; the
/// node signs the request.
async fn issue(
    a: &mut AdminSession,
    role: CertRole,
    name: &str,
    out: &Path,
    days: u32,
) -> Result<(), CliError> {
    let own = a.settings.org_id();
    let (id, proto_role) = match role {
        CertRole::Admin => (SpiffeId::admin(&own, name), ProtoRole::Admin),
        CertRole::Publisher => (SpiffeId::publisher(&own, name), ProtoRole::Publisher),
    };
    let id = id.map_err(|e| CliError::Usage(format!("--name: {e}")))?;
    let (csr_pem, key_pem) = certificate_request(&id)?;
    let c = rpc!(
        a,
        issue_cert(IssueCertRequest {
            role: proto_role as i32,
            name: name.to_string(),
            days,
            csr_pem,
        })
    );
    let (cert_path, key_path) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    write_file(&key_path, key_pem.as_bytes(), true)?;
    write_file(&cert_path, c.cert_pem.as_bytes(), false)?;
    out!(
        "issued {} (serial {}), valid until {}",
        c.spiffe_id,
        c.serial,
        ms_date(c.not_after_unix_ms)
    );
    out!("  certificate {}", cert_path.display());
    out!("  key         {} (mode 0600)", key_path.display());
    Ok(())
}

/// `certs list`.
async fn list(a: &mut AdminSession, json: bool) -> Result<(), CliError> {
    let certs = rpc!(a, list_certs(ListCertsRequest {})).certs;
    let now = crate::clock::wall_ms();
    listing(
        &certs,
        json,
        cert_json,
        "no certificates recorded",
        &[
            col("SERIAL"),
            col("IDENTITY"),
            col("NOT AFTER"),
            col("ISSUED BY"),
            col("STATUS"),
        ],
        |c| {
            let status = if c.revoked {
                format!("revoked ({})", c.revocation_reason)
            } else if c.not_after_unix_ms < now {
                "expired".into()
            } else {
                "valid".into()
            };
            vec![
                c.serial.clone(),
                c.spiffe_id.clone(),
                ms_date(c.not_after_unix_ms),
                c.issued_by.clone(),
                status,
            ]
        },
    );
    Ok(())
}

/// `certs rotate`.
async fn rotate(a: &mut AdminSession, days: u32, dns_names: &[String]) -> Result<(), CliError> {
    let c = rpc!(
        a,
        rotate_node_cert(RotateNodeCertRequest {
            days,
            dns_names: dns_names.to_vec(),
        })
    );
    out!(
        "rotated {}: new serial {}, valid until {}",
        c.spiffe_id,
        c.serial,
        ms_date(c.not_after_unix_ms)
    );
    out!("new connections get it now; open connections and partner streams continue");
    Ok(())
}

/// `certs revoke`.
async fn revoke(a: &mut AdminSession, which: Which, reason: &str) -> Result<(), CliError> {
    let r = rpc!(
        a,
        revoke_cert(RevokeCertRequest {
            which: Some(which),
            reason: reason.to_string(),
        })
    );
    if r.newly_revoked {
        out!(
            "revoked {} (serial {}); refused from now on, {} open connection(s) closed",
            r.spiffe_id,
            r.serial,
            r.connections_closed
        );
        out!("give partners the new CRL: threatmesh certs crl --out FILE");
    } else {
        out!("{} (serial {}) was already revoked", r.spiffe_id, r.serial);
    }
    Ok(())
}

/// `certs crl`.
async fn crl(a: &mut AdminSession, out: &Path) -> Result<(), CliError> {
    let r = rpc!(a, export_crl(ExportCrlRequest {}));
    write_file(out, r.crl_pem.as_bytes(), false)?;
    out!(
        "wrote the CRL of {} to {}: {} revoked, next update {}",
        r.issuer_org,
        out.display(),
        r.revoked_serials.len(),
        ms_date(r.next_update_unix_ms)
    );
    Ok(())
}

/// `certs import-crl`.
async fn import_crl(a: &mut AdminSession, partner: &str, file: &Path) -> Result<(), CliError> {
    let crl =
        std::fs::read(file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    let r = rpc!(
        a,
        import_crl(ImportCrlRequest {
            partner: partner.to_string(),
            crl,
        })
    );
    let next = if r.next_update_unix_ms == 0 {
        "none".to_string()
    } else {
        ms_date(r.next_update_unix_ms)
    };
    out!(
        "imported the CRL of {}: {} revoked, next update {next}",
        r.issuer_org,
        r.revoked_serials.len()
    );
    Ok(())
}
