//! Node settings: built-in defaults < the TOML file < `THREATMESH__SECTION__KEY`
//! environment variables, loaded with the `config` crate and validated before
//! anything is bound. Errors name the key at fault. Relative paths are taken
//! relative to the directory of the config file.
//!
//! Node-local settings live here; partners and (later) policies live in the
//! store, because admins change them at run time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::identity::check_endpoint;
use crate::model::OrgId;

/// Configuration errors. `serve` exits with status 64 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {0} not found (create one with `threatmesh init`)")]
    NotFound(PathBuf),
    /// `--config` named a directory (often the `--dir` given to `init`).
    #[error(
        "--config {}: is a directory; name the config file in it, e.g. `-c {}`",
        .0.display(),
        .0.join("threatmesh.toml").display()
    )]
    IsDirectory(PathBuf),
    /// The `config` crate could not read or deserialise the settings; its
    /// message names the key.
    #[error("config: {0}")]
    Load(String),
    /// A setting has a value we cannot use.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `tls.node_cert`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// All settings of one node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Who we are.
    pub org: OrgSettings,
    /// Where we listen and how partners reach us.
    pub node: NodeSettings,
    /// Our CA and node certificate.
    pub tls: TlsSettings,
    /// Our Ed25519 signing key.
    pub signing: SigningSettings,
    /// Where indicators, partners and cursors are kept.
    pub store: StoreSettings,
    /// How the CLI reaches this node, and with which certificates.
    pub client: ClientSettings,
    /// Outbound partner links.
    pub federation: FederationSettings,
    /// Certificate revocation lists.
    pub revocation: RevocationSettings,
    /// What one partner or connection may use of the node.
    pub limits: LimitsSettings,
    /// The TAXII 2.1 server.
    pub taxii: TaxiiSettings,
    /// Metrics and probes.
    pub metrics: MetricsSettings,
    /// Logging.
    pub log: LogSettings,
    /// The file these settings were loaded from (`serve` checks that only
    /// its owner can change it).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[org]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSettings {
    /// DNS-style org id, also the SPIFFE trust domain.
    pub id: String,
    /// Name shown to partners in our card.
    pub display_name: String,
    /// ISO 3166-1 alpha-2 country, may be empty.
    pub country: String,
    /// Sector, may be empty.
    pub sector: String,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Socket address the gRPC server binds.
    pub listen: String,
    /// `host:port` partners dial, published in our card (may be empty for a
    /// node that only subscribes).
    pub endpoint: String,
    /// How long a client has to complete the TLS handshake, in ms.
    pub handshake_timeout_ms: u64,
    /// How long a connection without a verified client certificate is kept
    /// (enough to tell it why it is refused), in ms.
    pub unverified_grace_ms: u64,
    /// Most connections from one address that are not (yet) verified.
    pub max_unverified_per_address: usize,
    /// Most connections in all that are not (yet) verified; beyond it the
    /// oldest is closed to make room. Verified partners and admins are not
    /// counted.
    pub max_unverified: usize,
    /// HTTP/2 PING interval on links and served connections, in ms.
    pub keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is taken as
    /// dead, in ms.
    pub keepalive_timeout_ms: u64,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Our CA certificate (PEM), sent to partners in our card.
    pub ca_cert: PathBuf,
    /// Our CA private key; only `certs issue` reads it (keep it offline).
    pub ca_key: PathBuf,
    /// Node certificate (`spiffe://<org>/node`).
    pub node_cert: PathBuf,
    /// Node private key (must be mode 0600).
    pub node_key: PathBuf,
}

/// `[signing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSettings {
    /// PEM PKCS#8 Ed25519 key (must be mode 0600).
    pub key: PathBuf,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// SQLite database file (created if missing); unused when `url` is set.
    pub path: PathBuf,
    /// `postgres://user@host/db`: keep the store in PostgreSQL instead of
    /// the SQLite file (the database must exist; it is migrated at start).
    /// Empty: SQLite.
    pub url: String,
    /// PostgreSQL: most connections this node opens.
    pub pool_size: u32,
    /// PostgreSQL: a statement running longer than this is cancelled, in
    /// ms (0 = never).
    pub statement_timeout_ms: u64,
    /// Most the database may grow to, in MiB (0 = as far as the disk
    /// allows); past it writes fail as on a full disk.
    pub max_size_mb: u64,
    /// How long a publisher's idempotency keys are remembered (ms): a
    /// retry within it returns the first attempt's result.
    pub publish_keys_kept_ms: u64,
}

impl StoreSettings {
    /// Whether the store is PostgreSQL (`url` set).
    pub fn is_postgres(&self) -> bool {
        !self.url.is_empty()
    }

    /// Whether there is a store to open without creating one: the SQLite
    /// file exists, or a PostgreSQL URL is set (the server says the rest).
    pub fn present(&self) -> bool {
        self.is_postgres() || self.path.is_file()
    }

    /// The store as messages name it: `store.path …` or `store.url …`
    /// (password hidden).
    pub fn describe(&self) -> String {
        if self.is_postgres() {
            format!("store.url {}", crate::store::redact_url(&self.url))
        } else {
            format!("store.path {}", self.path.display())
        }
    }
}

/// `[client]`: used by `publish`, `tail` and other CLI clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// `host:port` of our node.
    pub server: String,
    /// Admin certificate (`spiffe://<org>/admin/<name>`).
    pub admin_cert: PathBuf,
    /// Admin private key.
    pub admin_key: PathBuf,
    /// Publisher certificate (`spiffe://<org>/publisher/<name>`).
    pub publisher_cert: PathBuf,
    /// Publisher private key.
    pub publisher_key: PathBuf,
}

/// `[federation]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSettings {
    /// First reconnect delay after a failed link, in ms.
    pub reconnect_min_ms: u64,
    /// Cap of the exponential reconnect delay, in ms.
    pub reconnect_max_ms: u64,
    /// How often the partner list is re-read from the store, in ms.
    pub peer_refresh_ms: u64,
    /// Most envelopes per Subscribe message.
    pub batch_size: u32,
    /// How long an envelope signed by an unknown key waits in quarantine
    /// for its org's card before it is dropped (with a ledger row), in ms.
    pub quarantine_ttl_ms: u64,
    /// Most envelopes one partner can have waiting in our quarantine; more
    /// are refused (`limit-reached`, one ledger row per batch).
    pub quarantine_max_per_partner: u64,
    /// Most bytes of envelopes one partner can have waiting in quarantine.
    pub quarantine_max_bytes_per_partner: u64,
    /// How often an idle Subscribe stream sends a heartbeat (no deliveries;
    /// the sender's cursor and latest sequence number), in ms.
    pub heartbeat_ms: u64,
    /// A partner whose clock is off ours by more than this (ms) is flagged
    /// in `status` and the log: indicators dated more than 5 minutes ahead
    /// of our clock wait until it reaches them.
    pub clock_offset_warn_ms: u64,
    /// How often each link asks its partner for its signed ledger head.
    pub witness_interval_ms: u64,
    /// Bytes of refused envelopes kept per partner for the operator to
    /// inspect; beyond it, refusals are recorded without the envelope.
    pub rejected_bytes_kept_per_partner: u64,
    /// Refusal records kept per partner (the newest); older ones are
    /// removed, with a ledger row (the ledger keeps every refusal's row).
    pub refusals_kept_per_partner: u64,
    /// Most cards of not-yet-approved orgs one partner can make us hold
    /// pending.
    pub pending_cards_max_per_partner: u64,
    /// Most bytes of such pending cards per partner.
    pub pending_cards_max_bytes_per_partner: u64,
    /// How often each link retries sightings waiting for its partner (ms);
    /// new ones go at once.
    pub sightings_interval_ms: u64,
    /// Most sightings (sighter, indicator, day) one partner can make us
    /// keep; more are refused (`RESOURCE_EXHAUSTED`, a ledger row).
    pub sightings_max_per_partner: u64,
    /// How often each link offers its partner our statistics reports and
    /// those we relay (ms); a report goes again only when it changed.
    pub statistics_interval_ms: u64,
    /// Most statistics reports (reporter, period) one partner can make us
    /// keep.
    pub statistics_max_per_partner: u64,
    /// Relay hops our statistics reports allow beyond the first partner.
    pub statistics_hop_limit: u32,
}

impl FederationSettings {
    /// What is kept of one partner's refused envelopes.
    pub fn refusals_kept(&self) -> crate::store::RefusalsKept {
        crate::store::RefusalsKept {
            bytes: self.rejected_bytes_kept_per_partner,
            rows: self.refusals_kept_per_partner.max(1),
        }
    }
}

/// `[revocation]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationSettings {
    /// What a partner CRL past its next-update time means: `refuse` (every
    /// certificate of that partner is refused until a fresh CRL is imported;
    /// the default, fail closed) or `accept` (the stale list is still
    /// enforced, other certificates are accepted; fail open).
    pub stale_crl: String,
    /// How long the CRLs this node signs for partners are valid (nextUpdate
    /// = now + this many days).
    pub crl_validity_days: u32,
}

impl RevocationSettings {
    /// The validated `stale_crl` setting.
    pub fn stale_crl(&self) -> crate::identity::StaleCrl {
        crate::identity::StaleCrl::parse(&self.stale_crl).expect("validated at load")
    }
}

/// `[limits]`: bounds on what one connection or partner may use of the
/// node, so one cannot starve the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Largest gRPC message accepted (requests, and partners' Subscribe
    /// replies) and sent (Subscribe replies are cut below it), in bytes.
    pub max_message_bytes: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest HTTP/2 header block (all headers of one request), in bytes.
    pub max_header_list_bytes: u32,
    /// Streams a client may open and reset before they are served before its
    /// connection is closed (HTTP/2 rapid reset).
    pub max_pending_reset_streams: usize,
    /// Subscribe streams one partner may hold open.
    pub max_streams_per_partner: usize,
    /// Envelope bytes of one Subscribe reply, shared out over the streams
    /// open: each stream's replies carry at most this divided by the open
    /// streams (between 16 KiB and 256 KiB), so many subscribers hold
    /// smaller replies in flight, not more memory.
    pub reply_bytes_all_streams: usize,
    /// Verified connections one partner org may hold open.
    pub max_connections_per_partner: usize,
    /// Requests per second one partner may make (bursts of twice that).
    pub partner_requests_per_second: u32,
}

/// `[taxii]`: the TAXII 2.1 server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxiiSettings {
    /// Socket address the TAXII HTTPS server binds ("" = no TAXII server).
    pub listen: String,
    /// Most objects one page holds (a client's `limit` is capped to it).
    pub max_page_objects: u32,
    /// Largest request body accepted (POSTed objects), bytes.
    pub max_content_length: u64,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Socket address of the metrics and probe listener ("" = off).
    pub listen: String,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `human` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `threatmesh=debug`.
    pub level: String,
}

/// Smallest `limits.max_message_bytes`: a reply must hold one envelope of
/// the largest payload with room to spare.
pub const MIN_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest `limits.max_message_bytes`.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The built-in defaults (`config/defaults.toml`): the one place each
/// default is written. `threatmesh init` copies the same text.
pub const DEFAULTS_TOML: &str = include_str!("../config/defaults.toml");

impl Settings {
    /// Loads defaults, then `path`, then `THREATMESH__SECTION__KEY` variables,
    /// and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As [`Settings::load`], with an explicit environment map (for tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        if path.is_dir() {
            return Err(ConfigError::IsDirectory(path.to_path_buf()));
        }
        if !path.is_file() {
            return Err(ConfigError::NotFound(path.to_path_buf()));
        }
        let b = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        let env_source = config::Environment::with_prefix("THREATMESH")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env);
        let cfg = b
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(env_source)
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut s: Settings = cfg
            .try_deserialize()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut s.tls.ca_cert,
            &mut s.tls.ca_key,
            &mut s.tls.node_cert,
            &mut s.tls.node_key,
            &mut s.signing.key,
            &mut s.store.path,
            &mut s.client.admin_cert,
            &mut s.client.admin_key,
            &mut s.client.publisher_cert,
            &mut s.client.publisher_key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        s.source = path.to_path_buf();
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        OrgId::parse(&self.org.id).map_err(|e| invalid("org.id", e.to_string()))?;
        if self.org.display_name.trim().is_empty() {
            return Err(invalid("org.display_name", "must not be empty"));
        }
        if !self.org.country.is_empty() && !crate::model::is_iso3166_alpha2(&self.org.country) {
            return Err(invalid(
                "org.country",
                format!(
                    "'{}' is not an ISO 3166-1 alpha-2 code (upper case, e.g. DE)",
                    self.org.country
                ),
            ));
        }
        self.listen_addr()?;
        if !self.node.endpoint.is_empty() {
            check_endpoint(&self.node.endpoint).map_err(|e| invalid("node.endpoint", e))?;
        }
        if !self.client.server.is_empty() {
            check_endpoint(&self.client.server).map_err(|e| invalid("client.server", e))?;
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return Err(invalid("log.format", "must be \"human\" or \"json\""));
        }
        let f = &self.federation;
        if f.reconnect_min_ms == 0 || f.reconnect_max_ms < f.reconnect_min_ms {
            return Err(invalid(
                "federation.reconnect_max_ms",
                "need 0 < reconnect_min_ms <= reconnect_max_ms",
            ));
        }
        if f.heartbeat_ms == 0 {
            return Err(invalid("federation.heartbeat_ms", "must be positive"));
        }
        let m = &self.metrics.listen;
        if !m.is_empty() && m.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                format!("'{m}' is not a socket address (\"\" turns metrics off)"),
            ));
        }
        let t = &self.taxii;
        if !t.listen.is_empty() && t.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "taxii.listen",
                format!(
                    "'{}' is not a socket address (\"\" turns TAXII off)",
                    t.listen
                ),
            ));
        }
        if t.max_page_objects == 0 || t.max_page_objects > 100_000 {
            return Err(invalid("taxii.max_page_objects", "must be 1-100000"));
        }
        if t.max_content_length == 0 {
            return Err(invalid("taxii.max_content_length", "must be positive"));
        }
        if f.clock_offset_warn_ms == 0 {
            return Err(invalid(
                "federation.clock_offset_warn_ms",
                "must be positive",
            ));
        }
        if f.witness_interval_ms == 0 {
            return Err(invalid(
                "federation.witness_interval_ms",
                "must be positive",
            ));
        }
        if f.statistics_interval_ms == 0 {
            return Err(invalid(
                "federation.statistics_interval_ms",
                "must be positive",
            ));
        }
        if f.statistics_hop_limit > 16 {
            return Err(invalid(
                "federation.statistics_hop_limit",
                "at most 16 (the longest path a report may take)",
            ));
        }
        if f.sightings_interval_ms == 0 {
            return Err(invalid(
                "federation.sightings_interval_ms",
                "must be positive",
            ));
        }
        if f.peer_refresh_ms == 0 {
            return Err(invalid("federation.peer_refresh_ms", "must be positive"));
        }
        let n = &self.node;
        if n.keepalive_interval_ms == 0 || n.keepalive_timeout_ms == 0 {
            return Err(invalid(
                "node.keepalive_interval_ms",
                "keepalive interval and timeout must be positive",
            ));
        }
        if n.handshake_timeout_ms == 0
            || n.unverified_grace_ms == 0
            || n.max_unverified == 0
            || n.max_unverified_per_address == 0
        {
            return Err(invalid(
                "node.max_unverified",
                "connection limits and timeouts must be positive",
            ));
        }
        if f.pending_cards_max_per_partner == 0 || f.pending_cards_max_bytes_per_partner == 0 {
            return Err(invalid(
                "federation.pending_cards_max_per_partner",
                "pending card limits must be positive",
            ));
        }
        if f.quarantine_max_per_partner == 0 || f.quarantine_max_bytes_per_partner == 0 {
            return Err(invalid(
                "federation.quarantine_max_per_partner",
                "quarantine limits must be positive",
            ));
        }
        let l = &self.limits;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&l.max_message_bytes) {
            return Err(invalid(
                "limits.max_message_bytes",
                format!("must be {MIN_MESSAGE_BYTES}-{MAX_MESSAGE_BYTES} (one envelope must fit)"),
            ));
        }
        for (key, value) in [
            (
                "limits.max_concurrent_streams",
                l.max_concurrent_streams as usize,
            ),
            (
                "limits.max_header_list_bytes",
                l.max_header_list_bytes as usize,
            ),
            (
                "limits.max_pending_reset_streams",
                l.max_pending_reset_streams,
            ),
            ("limits.max_streams_per_partner", l.max_streams_per_partner),
            ("limits.reply_bytes_all_streams", l.reply_bytes_all_streams),
            (
                "limits.max_connections_per_partner",
                l.max_connections_per_partner,
            ),
            (
                "limits.partner_requests_per_second",
                l.partner_requests_per_second as usize,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if f.quarantine_ttl_ms == 0 {
            return Err(invalid("federation.quarantine_ttl_ms", "must be positive"));
        }
        if f.batch_size == 0 || f.batch_size > 4096 {
            return Err(invalid("federation.batch_size", "must be 1-4096"));
        }
        if crate::identity::StaleCrl::parse(&self.revocation.stale_crl).is_none() {
            return Err(invalid(
                "revocation.stale_crl",
                format!(
                    "'{}': must be \"refuse\" or \"accept\"",
                    self.revocation.stale_crl
                ),
            ));
        }
        if !(1..=366).contains(&self.revocation.crl_validity_days) {
            return Err(invalid("revocation.crl_validity_days", "must be 1-366"));
        }
        Ok(())
    }

    /// The validated org id.
    pub fn org_id(&self) -> OrgId {
        OrgId::parse(&self.org.id).expect("validated at load")
    }

    /// The listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.node.listen.parse().map_err(|_| {
            invalid(
                "node.listen",
                format!(
                    "'{}' is not a socket address such as 0.0.0.0:7443",
                    self.node.listen
                ),
            )
        })
    }

    /// Where CLI clients dial our node: `client.server`, else the listen
    /// address (with an unspecified IP replaced by loopback).
    pub fn client_server(&self) -> Result<String, ConfigError> {
        if !self.client.server.is_empty() {
            return Ok(self.client.server.clone());
        }
        let mut a = self.listen_addr()?;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(a.to_string())
    }

    /// Checks that a file named by `key` exists and, for private keys, is not
    /// readable by group or others.
    pub fn check_file(key: &'static str, path: &Path, secret: bool) -> Result<(), ConfigError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(invalid(key, format!("{} is not a file", path.display())));
        }
        if secret {
            check_mode(
                key,
                path,
                0o077,
                "holds secrets but is accessible",
                "chmod 600",
            )?;
        }
        Ok(())
    }

    /// Checks every file `serve` needs, and that nobody but their owner
    /// can read the secrets or change what the node trusts: private keys
    /// (the CA key too, when present) and the store (it holds partners'
    /// TLP:RED data and the ledger) readable by the owner only; the config
    /// file and the directories holding keys not writable by group or
    /// others (whoever can write them can swap a key or a path).
    pub fn check_node_files(&self) -> Result<(), ConfigError> {
        if !self.source.as_os_str().is_empty() {
            check_not_writable("config file", &self.source)?;
        }
        Self::check_file("tls.ca_cert", &self.tls.ca_cert, false)?;
        Self::check_file("tls.node_cert", &self.tls.node_cert, false)?;
        Self::check_file("tls.node_key", &self.tls.node_key, true)?;
        Self::check_file("signing.key", &self.signing.key, true)?;
        if self.tls.ca_key.exists() {
            Self::check_file("tls.ca_key", &self.tls.ca_key, true)?;
        }
        if self.store.path.exists() {
            Self::check_file("store.path", &self.store.path, true)?;
        }
        for (key, file) in [
            ("tls.node_key", &self.tls.node_key),
            ("signing.key", &self.signing.key),
            ("store.path", &self.store.path),
        ] {
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                check_not_writable(key, dir)?;
            }
        }
        Ok(())
    }
}

/// Fails if `path` (a file or directory) can be written by group or others.
fn check_not_writable(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    check_mode(key, path, 0o022, "can be changed", "chmod go-w")
}

/// Fails, saying `what` and the `fix`, if `path`'s mode has any of the
/// `forbidden` group/other bits (Unix; elsewhere nothing is checked).
fn check_mode(
    key: &'static str,
    path: &Path,
    forbidden: u32,
    what: &str,
    fix: &str,
) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & forbidden != 0 {
            let who = "by group or others";
            return Err(invalid(
                key,
                format!("{} {what} {who} (mode {mode:o}); run {fix}", path.display()),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (key, path, forbidden, what, fix);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("threatmesh.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const MINIMAL: &str = "[org]\nid = \"a.example\"\ndisplay_name = \"A\"\n";

    #[test]
    fn defaults_file_env_precedence_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            &format!("{MINIMAL}[node]\nlisten = \"127.0.0.1:9000\"\n"),
        );
        let s = Settings::load_with_env(&p, Some(HashMap::new())).unwrap();
        assert_eq!(s.node.listen, "127.0.0.1:9000");
        assert_eq!(s.store.path, dir.path().join("data/threatmesh.db"));
        assert_eq!(s.federation.batch_size, 1024);
        assert_eq!(s.client_server().unwrap(), "127.0.0.1:9000");

        let env = HashMap::from([
            (
                "THREATMESH__NODE__LISTEN".to_string(),
                "0.0.0.0:9100".to_string(),
            ),
            (
                "THREATMESH__FEDERATION__BATCH_SIZE".to_string(),
                "64".to_string(),
            ),
        ]);
        let s = Settings::load_with_env(&p, Some(env)).unwrap();
        assert_eq!(s.node.listen, "0.0.0.0:9100");
        assert_eq!(s.federation.batch_size, 64);
        assert_eq!(s.client_server().unwrap(), "127.0.0.1:9100");
    }

    #[test]
    fn a_minimal_file_gets_every_default_from_the_defaults_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with_env(&write(dir.path(), MINIMAL), Some(HashMap::new())).unwrap();
        let defaults: toml::Table = toml::from_str(DEFAULTS_TOML).unwrap();
        let num = |section: &str, key: &str| defaults[section][key].as_integer().unwrap() as u64;
        let text = |section: &str, key: &str| defaults[section][key].as_str().unwrap().to_string();
        assert_eq!(s.node.listen, text("node", "listen"));
        assert_eq!(s.client_server().unwrap(), "127.0.0.1:7443");
        assert_eq!(
            s.federation.reconnect_min_ms,
            num("federation", "reconnect_min_ms")
        );
        assert_eq!(
            s.federation.reconnect_max_ms,
            num("federation", "reconnect_max_ms")
        );
        assert_eq!(
            s.federation.peer_refresh_ms,
            num("federation", "peer_refresh_ms")
        );
        assert_eq!(
            u64::from(s.federation.batch_size),
            num("federation", "batch_size")
        );
        assert_eq!(
            s.federation.quarantine_ttl_ms,
            num("federation", "quarantine_ttl_ms")
        );
        assert_eq!(s.revocation.stale_crl, text("revocation", "stale_crl"));
        assert_eq!(s.log.format, text("log", "format"));
        assert!(s.store.path.ends_with(text("store", "path")));
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = |body: &str, env: &[(&str, &str)]| {
            let p = write(dir.path(), body);
            let env = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::load_with_env(&p, Some(env))
                .unwrap_err()
                .to_string()
        };
        assert!(err("[org]\ndisplay_name = \"A\"\n", &[]).contains("org.id"));
        assert!(err("[org]\nid = \"A\"\ndisplay_name = \"A\"\n", &[]).contains("org.id"));
        assert!(err(MINIMAL, &[("THREATMESH__NODE__LISTEN", "nowhere")]).contains("node.listen"));
        assert!(err(MINIMAL, &[("THREATMESH__LOG__FORMAT", "xml")]).contains("log.format"));
        assert!(
            err(MINIMAL, &[("THREATMESH__FEDERATION__BATCH_SIZE", "lots")]).contains("batch_size")
        );
        assert!(
            err(MINIMAL, &[("THREATMESH__METRICS__LISTEN", "localhost")])
                .contains("metrics.listen")
        );
        let e = err(&format!("{MINIMAL}[node]\nlisen = \"x\"\n"), &[]);
        assert!(e.contains("lisen"), "{e}");
        let missing = Settings::load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(matches!(missing, ConfigError::NotFound(_)));
    }
}
