//! `threatmesh card export|show`: the org card partners register us with.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{CliError, write_file};
use crate::config::Settings;
use crate::identity::{envelope_from_json, envelope_to_json, open_card};
use crate::node::{load_signing_key, own_card_with_keys};

/// `threatmesh card ...`
#[derive(Debug, Subcommand)]
pub enum CardCommand {
    /// Write this org's card (org id, display name, CA bundle, signing key,
    /// endpoint), self-signed with the signing key. Works offline.
    #[command(after_help = "\
Examples:
  threatmesh card export --out cert.example.card   # give this file to partners
  threatmesh card export > cert.example.card         # fingerprints go to the terminal")]
    Export {
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a card file and print what it says, with fingerprints to
    /// compare with the partner out of band.
    #[command(after_help = "\
Examples:
  threatmesh card show isp.example.card   # read the fingerprints back to the partner by phone")]
    Show {
        /// The card file.
        file: PathBuf,
    },
}

/// Runs a card command.
pub async fn run(config: &Path, cmd: &CardCommand) -> Result<(), CliError> {
    match cmd {
        CardCommand::Export { out } => {
            let settings = Settings::load(config)?;
            Settings::check_file("tls.ca_cert", &settings.tls.ca_cert, false)?;
            Settings::check_file("signing.key", &settings.signing.key, true)?;
            let ca_pem = std::fs::read_to_string(&settings.tls.ca_cert).map_err(|e| {
                CliError::Failed(format!("{}: {e}", settings.tls.ca_cert.display()))
            })?;
            let key = load_signing_key(&settings)?;
            // After a key rotation the card must also carry the retired
            // keys, which only the store records (read, not changed).
            let keys = if settings.store.present() {
                let store =
                    crate::store::Store::open(&settings.store, crate::clock::Clock::system())
                        .await?;
                let keys = store.own_signing_keys().await;
                store.close().await;
                keys?
            } else {
                Vec::new()
            };
            let card = own_card_with_keys(&settings, &key, &ca_pem, &keys, crate::clock::wall_ms());
            let json = envelope_to_json(&card);
            // What the partner should read back to us out of band: the card
            // is checked as a partner will check it, then summarised.
            let summary = open_card(&card).map(|v| fingerprint_lines(&v))?;
            let compare = "compare the CA fingerprint and signing key with the partner out of band (phone, signed letter) before either side registers the other";
            match out {
                Some(p) => {
                    write_file(p, json.as_bytes(), false)?;
                    out!("wrote the card of {} to {}", settings.org.id, p.display());
                    for line in &summary {
                        out!("  {line}");
                    }
                    out!("{compare}");
                }
                None => {
                    out_raw!("{json}");
                    // The card itself is standard output: the summary goes
                    // to the terminal.
                    for line in &summary {
                        eprintln!("  {line}");
                    }
                    eprintln!("{compare}");
                }
            }
            Ok(())
        }
        CardCommand::Show { file } => {
            let card = read_card(file)?;
            print_card(&card);
            Ok(())
        }
    }
}

/// Reads and verifies a card file.
pub fn read_card(file: &Path) -> Result<crate::identity::VerifiedCard, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("--card {}: {e}", file.display())))?;
    let env = envelope_from_json(&text)
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    open_card(&env).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))
}

/// Prints who an org is: id, name, and country and sector when given.
pub fn print_org(org: &str, display_name: &str, country: &str, sector: &str) {
    out!("org:          {org}");
    out!("display name: {display_name}");
    for (label, value) in [("country:     ", country), ("sector:      ", sector)] {
        if !value.is_empty() {
            out!("{label} {value}");
        }
    }
}

/// Prints a verified card for a person.
pub fn print_card(v: &crate::identity::VerifiedCard) {
    let c = &v.card;
    print_org(v.org.as_str(), &c.display_name, &c.country, &c.sector);
    out!("endpoints:    {}", c.endpoints.join(", "));
    out!("card version: {}", c.version);
    for line in fingerprint_lines(v) {
        out!("{line}");
    }
}

/// The lines that identify a card's trust anchors: each CA certificate's
/// SHA-256 fingerprint and each signing key id.
fn fingerprint_lines(v: &crate::identity::VerifiedCard) -> Vec<String> {
    let cas = v
        .ca_fingerprints
        .iter()
        .map(|f| format!("CA SHA-256:   {f}"));
    let keys = v.keys.iter().map(|k| format!("signing key:  {}", k.key_id));
    cas.chain(keys).collect()
}
