//! Writing certificate and key files: atomically (temp file, fsync, rename),
//! so a crash never leaves half a key, and private keys with mode 0600 from
//! the moment they exist.

use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path` atomically; with `private`, the file is
/// created with mode 0600 (Unix). Creates the parent directory if needed.
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".threatmesh-")
        .permissions({
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::Permissions::from_mode(if private { 0o600 } else { 0o644 })
            }
            #[cfg(not(unix))]
            {
                let _ = private;
                std::fs::metadata(dir)?.permissions()
            }
        })
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// PEM text of one DER object under `label` (e.g. `PRIVATE KEY`): 64
/// characters a line, `\n` line ends.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}
