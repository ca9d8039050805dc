//! `threatmesh init`: a new organisation's CA, certificates, signing key and
//! config file, laid out in one directory.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::provision::{OrgOptions, ProvisionError, provision_org};

/// Arguments of `threatmesh init`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Creates, under DIR:
  threatmesh.toml            node configuration (edit, or override with THREATMESH__SECTION__KEY)
  certs/ca.pem, ca.key       the org's own CA (keep ca.key offline in production)
  certs/node.pem, node.key   spiffe://<org>/node: serves and dials partners (with DNS/IP
                             names for standard clients: see --dns-name)
  certs/admin.pem, .key      spiffe://<org>/admin/<name>: admin CLI (tail, ...)
  certs/publisher.pem, .key  spiffe://<org>/publisher/<name>: publishing
  keys/signing.key           Ed25519 key that signs every indicator the org publishes
Private keys are written with mode 0600.

Examples:
  threatmesh init --org cert.example --dir /etc/threatmesh --endpoint node.cert.example:7443 --listen 0.0.0.0:7443 --dns-name node.cert.example
  threatmesh init --org cert.example --dir cert --listen 127.0.0.1:7441 --endpoint 127.0.0.1:7441 --with-examples")]
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
    /// Socket address the node binds [default: 127.0.0.1:7443].
    #[arg(long)]
    pub listen: Option<String>,
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
    /// Host name (DNS name or IP address) the node certificate serves as,
    /// for standard gRPC and TAXII clients that check the host they dial
    /// (repeatable). The endpoint's host is always included; with neither,
    /// localhost and 127.0.0.1. Partners' nodes identify us by the SPIFFE
    /// id alone.
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
    /// Replace the keys and certificates of an existing organisation
    /// (partners will need the new card). Stored data is kept.
    #[arg(long)]
    pub force: bool,
    /// Also write the example sharing policies (isp-feed, community-feed,
    /// agency-partner) to DIR/policies/, to apply or adapt: the quick start
    /// then needs nothing from the source checkout.
    #[arg(long)]
    pub with_examples: bool,
    /// Keep the store in PostgreSQL: `postgres://user@host:5432/dbname` (the
    /// database must exist; written to `store.url`). Without it, SQLite at
    /// `store.path`.
    #[arg(long, value_name = "URL")]
    pub store_url: Option<String>,
}

impl From<&InitArgs> for OrgOptions {
    fn from(a: &InitArgs) -> Self {
        OrgOptions {
            org: a.org.clone(),
            dir: a.dir.clone(),
            endpoint: a.endpoint.clone(),
            listen: a.listen.clone(),
            display_name: a.display_name.clone(),
            country: a.country.clone(),
            sector: a.sector.clone(),
            admin_name: a.admin_name.clone(),
            publisher_name: a.publisher_name.clone(),
            dns_names: a.dns_names.clone(),
            force: a.force,
            store_url: a.store_url.clone(),
        }
    }
}

impl From<ProvisionError> for CliError {
    fn from(e: ProvisionError) -> Self {
        match e {
            ProvisionError::Invalid { .. } | ProvisionError::Exists { .. } => {
                CliError::Usage(e.to_string())
            }
            other => CliError::Failed(other.to_string()),
        }
    }
}

/// The example policies of `config/policies/`, built in for
/// `init --with-examples`.
pub const EXAMPLE_POLICIES: [(&str, &str); 3] = [
    (
        "agency-partner.toml",
        include_str!("../../config/policies/agency-partner.toml"),
    ),
    (
        "community-feed.toml",
        include_str!("../../config/policies/community-feed.toml"),
    ),
    (
        "isp-feed.toml",
        include_str!("../../config/policies/isp-feed.toml"),
    ),
];

/// Runs `threatmesh init`.
pub async fn run(args: &InitArgs) -> Result<(), CliError> {
    let r = provision_org(&args.into())?;
    // The store is created here, not by the first `serve`: a node that later
    // finds its store missing knows it was lost, not never made.
    let settings = crate::config::Settings::load(&r.config)?;
    let store = crate::store::Store::open(&settings.store, crate::clock::Clock::system()).await?;
    store.close().await;
    out!("initialised {} in {}", r.org, args.dir.display());
    out!("  config:      {}", r.config.display());
    out!("  signing key: {}", r.key_id);
    if args.with_examples {
        let dir = args.dir.join("policies");
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::Failed(format!("{}: {e}", dir.display())))?;
        for (name, text) in EXAMPLE_POLICIES {
            super::write_file(&dir.join(name), text.as_bytes(), false)?;
        }
        out!(
            "  policies:    {} ({})",
            dir.display(),
            EXAMPLE_POLICIES.map(|(n, _)| n).join(", ")
        );
    }
    out!(
        "next: threatmesh -c {} card export --out {}.card   (give the card to partners)",
        r.config.display(),
        r.org
    );
    Ok(())
}
