//! `threatmesh init`: a new organisation's CA, certificates, signing key and
//! config file, laid out in one directory.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, write_file};
use crate::identity::{SpiffeId, generate_ca, issue};
use crate::model::OrgId;
use crate::signing::OrgSigningKey;

/// Validity of the org CA, in days.
const CA_DAYS: i64 = 3650;
/// Validity of node, admin and publisher certificates, in days.
const LEAF_DAYS: i64 = 397;

/// Arguments of `threatmesh init`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Creates, under DIR:
  threatmesh.toml            node configuration (edit, or override with THREATMESH__SECTION__KEY)
  certs/ca.pem, ca.key       the org's own CA (keep ca.key offline in production)
  certs/node.pem, node.key   spiffe://<org>/node: serves and dials partners
  certs/admin.pem, .key      spiffe://<org>/admin/<name>: admin CLI (tail, ...)
  certs/publisher.pem, .key  spiffe://<org>/publisher/<name>: publishing
  keys/signing.key           Ed25519 key that signs every indicator the org publishes
Private keys are written with mode 0600.

Example:
  threatmesh init --org cert.example --dir /etc/threatmesh --endpoint node.cert.example:7443 --listen 0.0.0.0:7443")]
pub struct InitArgs {
    /// Organisation id: a lower-case DNS-style name such as `cert.example`.
    #[arg(long)]
    pub org: String,
    /// Directory to create the organisation in.
    #[arg(long)]
    pub dir: PathBuf,
    /// `host:port` partners will dial; published in the org card.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Socket address the node binds.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: String,
    /// Name shown to partners (defaults to the org id).
    #[arg(long)]
    pub display_name: Option<String>,
    /// ISO 3166-1 alpha-2 country code, e.g. DE.
    #[arg(long, default_value = "")]
    pub country: String,
    /// Sector, e.g. law-enforcement, cert, isp, vendor.
    #[arg(long, default_value = "")]
    pub sector: String,
    /// Name in the admin certificate's SPIFFE id.
    #[arg(long, default_value = "admin")]
    pub admin_name: String,
    /// Name in the publisher certificate's SPIFFE id.
    #[arg(long, default_value = "publisher")]
    pub publisher_name: String,
    /// Replace the keys and certificates of an existing organisation
    /// (partners will need the new card). Stored data is kept.
    #[arg(long)]
    pub force: bool,
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The org.
    pub org: OrgId,
    /// Path of the config file.
    pub config: PathBuf,
    /// Key id of the signing key.
    pub key_id: String,
}

/// Runs `threatmesh init`.
pub fn run(args: &InitArgs) -> Result<(), CliError> {
    let r = init_org(args)?;
    out!("initialised {} in {}", r.org, args.dir.display());
    out!("  config:      {}", r.config.display());
    out!("  signing key: {}", r.key_id);
    out!(
        "next: threatmesh -c {} card export --out {}.card   (give the card to partners)",
        r.config.display(),
        r.org
    );
    Ok(())
}

fn toml_str(s: &str) -> String {
    // JSON string escapes are valid TOML basic-string escapes.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Creates an organisation under `args.dir`.
pub fn init_org(args: &InitArgs) -> Result<InitReport, CliError> {
    let org = OrgId::parse(&args.org).map_err(|e| CliError::Usage(format!("--org: {e}")))?;
    if let Some(e) = &args.endpoint {
        crate::identity::check_endpoint(e)
            .map_err(|m| CliError::Usage(format!("--endpoint: {m}")))?;
    }
    args.listen.parse::<std::net::SocketAddr>().map_err(|_| {
        CliError::Usage(format!(
            "--listen: '{}' is not a socket address",
            args.listen
        ))
    })?;
    if !args.country.is_empty() && !crate::model::is_iso3166_alpha2(&args.country) {
        return Err(CliError::Usage(format!(
            "--country: '{}' is not an ISO 3166-1 alpha-2 code (upper case, e.g. DE)",
            args.country
        )));
    }
    let admin = SpiffeId::admin(&org, &args.admin_name)
        .map_err(|e| CliError::Usage(format!("--admin-name: {e}")))?;
    let publisher = SpiffeId::publisher(&org, &args.publisher_name)
        .map_err(|e| CliError::Usage(format!("--publisher-name: {e}")))?;
    let dir = &args.dir;
    let config = dir.join("threatmesh.toml");
    if config.exists() && !args.force {
        return Err(CliError::Usage(format!(
            "an organisation already exists in {} ({} is present); pass --force to replace its keys and certificates",
            dir.display(),
            config.display()
        )));
    }
    let file = |p: &str| -> PathBuf { dir.join(p) };
    let ca = generate_ca(&org, CA_DAYS)?;
    write_file(&file("certs/ca.pem"), ca.cert_pem.as_bytes(), false)?;
    write_file(&file("certs/ca.key"), ca.key_pem.as_bytes(), true)?;
    for (name, id) in [
        ("node", SpiffeId::node(&org)),
        ("admin", admin),
        ("publisher", publisher),
    ] {
        let c = issue(&ca.cert_pem, &ca.key_pem, &id, LEAF_DAYS)?;
        write_file(
            &file(&format!("certs/{name}.pem")),
            c.cert_pem.as_bytes(),
            false,
        )?;
        write_file(
            &file(&format!("certs/{name}.key")),
            c.key_pem.as_bytes(),
            true,
        )?;
    }
    let (key, pkcs8) = OrgSigningKey::generate().map_err(|e| CliError::Failed(e.to_string()))?;
    write_file(
        &file("keys/signing.key"),
        crate::identity::pem_encode("PRIVATE KEY", &pkcs8).as_bytes(),
        true,
    )?;
    let data = file("data");
    std::fs::create_dir_all(&data)
        .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", data.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CliError::Failed(format!("cannot restrict {}: {e}", data.display())))?;
    }
    let display_name = args.display_name.clone().unwrap_or_else(|| org.to_string());
    let body = config_text(&org, &display_name, args);
    write_file(&config, body.as_bytes(), false)?;
    Ok(InitReport {
        org,
        config,
        key_id: key.key_id().to_string(),
    })
}

fn config_text(org: &OrgId, display_name: &str, args: &InitArgs) -> String {
    format!(
        r#"# ThreatMesh node configuration for {org}, written by `threatmesh init`.
# Precedence: built-in defaults < this file < environment variables named
# THREATMESH__<SECTION>__<KEY>, e.g. THREATMESH__NODE__LISTEN=0.0.0.0:7443.
# Relative paths are relative to this file's directory.

[org]
id = {id}
display_name = {display_name}
country = {country}
sector = {sector}

[node]
# Socket address the gRPC server binds.
listen = {listen}
# host:port partners dial; published in the org card ("" = partners cannot dial us).
endpoint = {endpoint}

[tls]
ca_cert = "certs/ca.pem"
# Read by the node only for `certs issue|rotate|crl`; move it off the host to
# keep the CA offline (those commands then fail, nothing else does).
ca_key = "certs/ca.key"
node_cert = "certs/node.pem"
node_key = "certs/node.key"

[signing]
key = "keys/signing.key"

[store]
# SQLite database (WAL, synchronous=FULL); created on first start.
path = "data/threatmesh.db"

[client]
# host:port the CLI dials ("" = node.listen, with 0.0.0.0 read as 127.0.0.1).
server = ""
admin_cert = "certs/admin.pem"
admin_key = "certs/admin.key"
publisher_cert = "certs/publisher.pem"
publisher_key = "certs/publisher.key"

[federation]
reconnect_min_ms = 250
reconnect_max_ms = 30000
peer_refresh_ms = 500
batch_size = 256
quarantine_ttl_ms = 604800000

[revocation]
# A partner CRL past its next update: "refuse" its certificates until a fresh
# CRL is imported (fail closed), or "accept" them unless listed (fail open).
stale_crl = "refuse"
# Validity of the CRLs this node signs (`threatmesh certs crl`), in days.
crl_validity_days = 7

[log]
# "human" or "json"; RUST_LOG overrides level.
format = "human"
level = "info"
"#,
        id = toml_str(org.as_str()),
        display_name = toml_str(display_name),
        country = toml_str(&args.country),
        sector = toml_str(&args.sector),
        listen = toml_str(&args.listen),
        endpoint = toml_str(args.endpoint.as_deref().unwrap_or("")),
    )
}

/// The config path `init` writes for `dir`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("threatmesh.toml")
}
