//! Provisioning a new organisation in one directory: its own CA, node /
//! admin / publisher certificates (SPIFFE ids only), an Ed25519 signing key
//! and a config file. Private keys are written 0600, the data directory
//! 0700; an existing organisation is never overwritten without `force`.
//! `threatmesh init`, the demo, the benchmark and the test harness all
//! provision through [`provision_org`].

use std::path::{Path, PathBuf};

use crate::identity::{
    IdentityError, SpiffeId, generate_ca, issue_with_names, pem_encode, write_atomic,
};
use crate::model::OrgId;
use crate::signing::OrgSigningKey;

/// Validity of the org CA, in days.
const CA_DAYS: i64 = 3650;
/// Validity of node, admin and publisher certificates, in days.
const LEAF_DAYS: i64 = 397;

/// What to provision.
#[derive(Debug, Clone)]
pub struct OrgOptions {
    /// Organisation id: a lower-case DNS-style name such as `cert.example`.
    pub org: String,
    /// Directory to create the organisation in.
    pub dir: PathBuf,
    /// `host:port` partners will dial; published in the org card.
    pub endpoint: Option<String>,
    /// Socket address the node binds (`None`: the default).
    pub listen: Option<String>,
    /// Name shown to partners (`None`: the org id).
    pub display_name: Option<String>,
    /// ISO 3166-1 alpha-2 country code, or "".
    pub country: String,
    /// Sector, or "".
    pub sector: String,
    /// Name in the admin certificate's SPIFFE id.
    pub admin_name: String,
    /// Name in the publisher certificate's SPIFFE id.
    pub publisher_name: String,
    /// Host names (DNS or IP) the node certificate serves as, beside the
    /// endpoint's host (empty and no endpoint: localhost and 127.0.0.1).
    pub dns_names: Vec<String>,
    /// Replace the keys and certificates of an existing organisation.
    pub force: bool,
    /// Keep the store in this PostgreSQL database (`store.url`) instead of
    /// the SQLite file.
    pub store_url: Option<String>,
}

impl OrgOptions {
    /// The host names the node certificate names: `dns_names` and the
    /// endpoint's host, or, with neither, `localhost` and `127.0.0.1` (the
    /// default listen address), so standard clients that check the host
    /// they dialled accept it.
    pub fn server_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.dns_names.clone();
        if let Some((host, _)) = self.endpoint.as_deref().and_then(|e| e.rsplit_once(':')) {
            names.push(host.trim_matches(['[', ']']).to_string());
        }
        if names.is_empty() {
            names = vec!["localhost".into(), "127.0.0.1".into()];
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.to_ascii_lowercase()));
        names
    }
}

impl OrgOptions {
    /// Options for `org` in `dir`, everything else at its default.
    pub fn new(org: &str, dir: impl Into<PathBuf>) -> Self {
        Self {
            org: org.to_string(),
            dir: dir.into(),
            endpoint: None,
            listen: None,
            display_name: None,
            country: String::new(),
            sector: String::new(),
            admin_name: "admin".into(),
            publisher_name: "publisher".into(),
            dns_names: Vec::new(),
            force: false,
            store_url: None,
        }
    }
}

/// Why an organisation was not provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// An option is invalid; `field` names it as `init`'s flag does.
    #[error("--{field}: {reason}")]
    Invalid {
        /// The option.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// An organisation already exists there and `force` is not set.
    #[error(
        "an organisation already exists in {} ({} is present); pass --force to replace its keys and certificates",
        .dir.display(), .config.display()
    )]
    Exists {
        /// The directory.
        dir: PathBuf,
        /// Its config file.
        config: PathBuf,
    },
    /// Making keys or certificates failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A file or directory could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file or directory.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What was provisioned.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The org.
    pub org: OrgId,
    /// Path of the config file.
    pub config: PathBuf,
    /// Key id of the signing key.
    pub key_id: String,
}

/// The config path for an organisation in `dir`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("threatmesh.toml")
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProvisionError {
    ProvisionError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn write(path: &Path, contents: &[u8], private: bool) -> Result<(), ProvisionError> {
    write_atomic(path, contents, private).map_err(|e| ProvisionError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Creates an organisation as `o` says.
pub fn provision_org(o: &OrgOptions) -> Result<Provisioned, ProvisionError> {
    let org = OrgId::parse(&o.org).map_err(|e| invalid("org", e.to_string()))?;
    if let Some(e) = &o.endpoint {
        crate::identity::check_endpoint(e).map_err(|m| invalid("endpoint", m))?;
    }
    for n in o.server_names() {
        crate::identity::server_name_san(&n).map_err(|e| invalid("dns-name", e.to_string()))?;
    }
    if let Some(l) = &o.listen {
        l.parse::<std::net::SocketAddr>()
            .map_err(|_| invalid("listen", format!("'{l}' is not a socket address")))?;
    }
    if !o.country.is_empty() && !crate::model::is_iso3166_alpha2(&o.country) {
        return Err(invalid(
            "country",
            format!(
                "'{}' is not an ISO 3166-1 alpha-2 code (upper case, e.g. DE)",
                o.country
            ),
        ));
    }
    let admin =
        SpiffeId::admin(&org, &o.admin_name).map_err(|e| invalid("admin-name", e.to_string()))?;
    let publisher = SpiffeId::publisher(&org, &o.publisher_name)
        .map_err(|e| invalid("publisher-name", e.to_string()))?;
    let config = config_path(&o.dir);
    if config.exists() && !o.force {
        return Err(ProvisionError::Exists {
            dir: o.dir.clone(),
            config,
        });
    }
    let file = |p: &str| -> PathBuf { o.dir.join(p) };
    for dir in ["keys", "data", "certs"] {
        std::fs::create_dir_all(file(dir)).map_err(|e| ProvisionError::Write {
            path: file(dir).display().to_string(),
            reason: e.to_string(),
        })?;
    }
    // Modes set explicitly, whatever the umask: keys and data for the owner
    // only, certificates readable, nothing writable by group or others.
    for (dir, mode) in [("keys", 0o700), ("data", 0o700), ("certs", 0o755)] {
        restrict(&file(dir), mode)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&o.dir)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o755);
        restrict(&o.dir, mode & !0o022)?;
    }
    let ca = generate_ca(&org, CA_DAYS)?;
    write(&file("certs/ca.pem"), ca.cert_pem.as_bytes(), false)?;
    write(&file("certs/ca.key"), ca.key_pem.as_bytes(), true)?;
    for (name, id) in [
        ("node", SpiffeId::node(&org)),
        ("admin", admin),
        ("publisher", publisher),
    ] {
        let names = if id.role == crate::identity::Role::Node {
            o.server_names()
        } else {
            Vec::new()
        };
        let c = issue_with_names(&ca.cert_pem, &ca.key_pem, &id, LEAF_DAYS, &names)?;
        write(
            &file(&format!("certs/{name}.pem")),
            c.cert_pem.as_bytes(),
            false,
        )?;
        write(
            &file(&format!("certs/{name}.key")),
            c.key_pem.as_bytes(),
            true,
        )?;
    }
    let (key, pkcs8) = OrgSigningKey::generate().map_err(|e| IdentityError::Pki(e.to_string()))?;
    let key_pem = pem_encode("PRIVATE KEY", &pkcs8);
    write(&file("keys/signing.key"), key_pem.as_bytes(), true)?;
    write(&config, config_text(&org, o).as_bytes(), false)?;
    Ok(Provisioned {
        org,
        config,
        key_id: key.key_id().to_string(),
    })
}

/// Sets `dir`'s permission bits to `mode` (Unix).
fn restrict(dir: &Path, mode: u32) -> Result<(), ProvisionError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            ProvisionError::Write {
                path: dir.display().to_string(),
                reason: e.to_string(),
            }
        })?;
    }
    #[cfg(not(unix))]
    let _ = (dir, mode);
    Ok(())
}

fn toml_str(s: &str) -> String {
    // JSON string escapes are valid TOML basic-string escapes.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The config file for `org`: its [org] and [node] values, then every other
/// section as the built-in defaults file has it.
fn config_text(org: &OrgId, o: &OrgOptions) -> String {
    let defaults = crate::config::DEFAULTS_TOML;
    let mut rest = defaults
        .find("\n[tls]")
        .map(|i| defaults[i + 1..].to_string())
        .unwrap_or_default();
    if let Some(url) = &o.store_url {
        rest = rest.replacen("\nurl = \"\"\n", &format!("\nurl = {}\n", toml_str(url)), 1);
    }
    let display_name = o.display_name.clone().unwrap_or_else(|| org.to_string());
    let listen = o
        .listen
        .as_deref()
        .map(|l| format!("listen = {}\n", toml_str(l)))
        .unwrap_or_default();
    format!(
        "# ThreatMesh node configuration for {org}, written by `threatmesh init`.\n\
         # Precedence: built-in defaults (config/defaults.toml) < this file <\n\
         # environment variables THREATMESH__<SECTION>__<KEY>, e.g.\n\
         # THREATMESH__NODE__LISTEN=0.0.0.0:7443. Relative paths are relative\n\
         # to this file's directory.\n\n\
         [org]\nid = {id}\n# Shown to partners in the org card.\ndisplay_name = {name}\n\
         country = {country}\nsector = {sector}\n\n\
         [node]\n# Socket address the gRPC server binds (default in config/defaults.toml).\n{listen}\
         # host:port partners dial; published in the org card (\"\" = partners cannot dial us).\n\
         endpoint = {endpoint}\n\n{rest}",
        id = toml_str(org.as_str()),
        name = toml_str(&display_name),
        country = toml_str(&o.country),
        sector = toml_str(&o.sector),
        endpoint = toml_str(o.endpoint.as_deref().unwrap_or("")),
    )
}
