//! File safety: `serve` refuses secrets others can read and files others
//! can change; `init` keeps keys and data private whatever the umask.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use threatmesh::config::{ConfigError, Settings};
use threatmesh::node::{Node, NodeError};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// The key `Node::open` refuses `settings` for, with its message.
async fn refused_key(settings: &Settings) -> (String, String) {
    match Node::open(settings.clone()).await {
        Err(NodeError::Config(ConfigError::Invalid { key, reason })) => (key.to_string(), reason),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("served although a file is unsafe"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_secrets_others_can_read_and_files_others_can_change() {
    let a = Org::new("a.example");
    let s = &a.settings;
    // A first start creates the store; it is the owner's only.
    let node = start(&a).await;
    node.stop().await;
    assert_eq!(mode(&s.store.path), 0o600);
    let keys_dir = s.signing.key.parent().unwrap().to_path_buf();
    let cases: Vec<(&Path, u32, u32, &str)> = vec![
        (&s.tls.ca_key, 0o644, 0o600, "tls.ca_key"),
        (&s.store.path, 0o666, 0o600, "store.path"),
        (&a.config, 0o666, 0o644, "config file"),
        (&keys_dir, 0o777, 0o700, "signing.key"),
    ];
    for (path, unsafe_mode, safe_mode, key) in cases {
        chmod(path, unsafe_mode);
        let (refused, reason) = refused_key(s).await;
        assert_eq!(refused, key, "{}: {reason}", path.display());
        assert!(
            reason.contains(&format!("{unsafe_mode:o}")),
            "the message shows the mode: {reason}"
        );
        chmod(path, safe_mode);
    }
    // All safe again: it serves.
    let node = start(&a).await;
    node.stop().await;
}

#[test]
fn init_under_umask_000_keeps_keys_and_data_private() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("u");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec '{}' init --org u.example --dir '{}'",
            env!("CARGO_BIN_EXE_threatmesh"),
            dir.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&dir.join("keys")), 0o700);
    assert_eq!(mode(&dir.join("data")), 0o700);
    assert_eq!(mode(&dir.join("certs")), 0o755);
    assert_eq!(
        mode(&dir) & 0o022,
        0,
        "the org directory is not writable by others"
    );
    for key in [
        "keys/signing.key",
        "certs/ca.key",
        "certs/node.key",
        "certs/admin.key",
    ] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&dir.join("threatmesh.toml")) & 0o022, 0);
    // And serve's checks pass on what init made.
    let s = Settings::load(&dir.join("threatmesh.toml")).unwrap();
    s.check_node_files().unwrap();
    // Without --listen, init leaves the default its --help names.
    assert_eq!(s.node.listen, "127.0.0.1:7443");
}
