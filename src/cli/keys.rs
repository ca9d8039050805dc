//! `threatmesh keys rotate|revoke`: our org's Ed25519 signing key. A
//! rotation makes a new key current and publishes a card signed by the old
//! one, so partners (and their partners) take it as our card's successor;
//! what the old key signed stays valid. Revoking a retired key makes every
//! node that takes our next card refuse anything newly received under it.

use std::path::Path;

use clap::Subcommand;

use super::CliError;
use super::client::{AdminSession, ClientArgs};
use crate::proto::v1::{RevokeSigningKeyRequest, RotateSigningKeyRequest, SigningKeysResponse};

/// `threatmesh keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key current (the old one signs nothing new).
    #[command(after_help = "After a suspected compromise: rotate, then revoke the old key id.")]
    #[command(after_help = "\
Examples:
  threatmesh keys rotate            # prints the old and new key ids")]
    Rotate,
    /// Revoke a retired signing key (not the current one).
    #[command(after_help = "\
Examples:
  threatmesh keys revoke 5f1c0e9a...   # a retired key, as `keys rotate` printed it")]
    Revoke {
        /// Key id, as `keys rotate` prints it.
        key_id: String,
    },
}

fn print_keys(r: &SigningKeysResponse) {
    out!("our card is now version {}", r.card_version);
    for k in &r.keys {
        let status = if k.revoked {
            "revoked".to_string()
        } else if k.not_after_unix_ms == 0 {
            "current".to_string()
        } else {
            format!("retired {}", super::audit::rfc3339(k.not_after_unix_ms))
        };
        out!("  {}  {status}", k.key_id);
    }
}

/// Runs a keys command.
pub async fn run(config: &Path, conn: &ClientArgs, cmd: &KeysCommand) -> Result<(), CliError> {
    let mut a = AdminSession::open(config, conn)?;
    let r = match cmd {
        KeysCommand::Rotate => rpc!(a, rotate_signing_key(RotateSigningKeyRequest {})),
        KeysCommand::Revoke { key_id } => rpc!(
            a,
            revoke_signing_key(RevokeSigningKeyRequest {
                key_id: key_id.clone(),
            })
        ),
    };
    print_keys(&r);
    Ok(())
}
