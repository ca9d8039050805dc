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
    // The store file's mode is among the cases.
    let a = Org::new_sqlite("a.example");
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

/// The rules of `.dockerignore`: `*` first, then only `!path` re-inclusions
/// of exact paths (what this check understands, and all the file may use).
fn docker_context_rules() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
        .unwrap();
    let rules: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules.first(), Some(&"*"), "deny by default: {rules:?}");
    rules[1..]
        .iter()
        .map(|r| {
            let path = r
                .strip_prefix('!')
                .unwrap_or_else(|| panic!("not a re-inclusion: {r}"));
            assert!(
                !path.contains(['*', '?', '[']) && !path.ends_with('/'),
                "an exact path: {r}"
            );
            path.to_string()
        })
        .collect()
}

fn in_context(rules: &[String], path: &str) -> bool {
    rules
        .iter()
        .any(|r| path == r || path.starts_with(&format!("{r}/")))
}

/// Every file under `dir` (relative to `root`), recursively.
fn files_under(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(root, &p));
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

/// The Docker build (`COPY . .`) sees what it compiles, and none of what
/// `threatmesh init` writes, wherever in the checkout an operator ran it:
/// the quick start makes org folders beside the sources, and `certs/` and
/// `config/` invite keys and configs.
#[test]
fn the_docker_build_context_holds_the_build_inputs_and_no_org_secrets() {
    let rules = docker_context_rules();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".into(),
        "build.rs".into(),
        ".cargo/config.toml".into(),
        "config/defaults.toml".into(),
    ];
    for dir in ["proto", "src", "migrations", "config/policies"] {
        inputs.extend(files_under(root, &root.join(dir)));
    }
    for f in &inputs {
        assert!(
            in_context(&rules, f),
            "{f} is read by the build but left out"
        );
    }
    let org = Org::new("cert.example");
    let made = files_under(org.dir.path(), org.dir.path());
    assert!(made.iter().any(|f| f.ends_with(".key")), "{made:?}");
    for place in ["", "cert/", "org/", "certs/", "config/"] {
        for f in &made {
            let path = format!("{place}{f}");
            assert!(
                !in_context(&rules, &path),
                "{path} would be sent to the Docker build"
            );
        }
    }
    for loose in ["ca.key", "signing.key", "threatmesh.toml", "store.db"] {
        assert!(!in_context(&rules, loose), "{loose}");
    }
}

/// Every `RUN` step of the Dockerfile, and its HEALTHCHECK command, is
/// valid shell (no container daemon on the test machines: they are checked
/// with `bash -n`, not run).
#[test]
fn the_dockerfile_shell_steps_parse() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut checked = 0;
    for line in joined.lines() {
        let line = line.trim();
        let script = if let Some(run) = line.strip_prefix("RUN ") {
            // BuildKit flags before the command.
            run.split_whitespace()
                .skip_while(|w| w.starts_with("--mount="))
                .collect::<Vec<_>>()
                .join(" ")
        } else if let Some(hc) = line.strip_prefix("HEALTHCHECK ") {
            let cmd = &hc[hc.find("CMD [").unwrap() + 4..];
            let argv: Vec<String> = serde_json::from_str(cmd).unwrap();
            assert_eq!(&argv[..2], ["bash", "-c"], "{cmd}");
            assert!(argv[2].contains("/readyz"), "{cmd}");
            argv[2].clone()
        } else {
            continue;
        };
        let o = std::process::Command::new("bash")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 4, "{checked} shell steps found");
    for from in joined.lines().filter(|l| l.starts_with("FROM ")) {
        assert!(
            from.contains("@sha256:"),
            "base image not pinned by digest: {from}"
        );
    }
}

/// deploy/compose.yaml's scripts, run as its services run them but on this
/// machine: three orgs made by init.sh, served, linked by link.sh (twice:
/// it is idempotent), and an indicator published at the CERT reaches the
/// ISP and the police unit.
#[test]
fn the_compose_deployment_scripts_make_and_link_three_orgs() {
    use std::process::{Child, Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let bin = Path::new(env!("CARGO_BIN_EXE_threatmesh"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let cards = tmp.path().join("cards");
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let orgs = [
        (
            "cert",
            "cert.example",
            "isp.example=isp-feed police.example=agency-partner",
        ),
        (
            "isp",
            "isp.example",
            "cert.example=community-feed police.example=community-feed",
        ),
        (
            "police",
            "police.example",
            "cert.example=agency-partner isp.example=isp-feed",
        ),
    ];
    let sh = |script: &str, env: &[(&str, String)]| {
        let mut c = Command::new("sh");
        c.arg(deploy.join(script))
            .env("PATH", &path)
            .env("CARDS", &cards)
            .env_remove("THREATMESH_CONFIG")
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{script}: {said}");
        said
    };
    struct Nodes(Vec<Child>);
    impl Drop for Nodes {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut nodes = Nodes(Vec::new());
    let mut servers = Vec::new();
    for (svc, org, _) in orgs {
        let addr = format!("127.0.0.1:{}", port());
        let data = tmp.path().join(svc);
        sh(
            "init.sh",
            &[
                ("ORG", org.into()),
                ("HOST", org.into()),
                ("DATA", data.display().to_string()),
                ("LISTEN", addr.clone()),
                ("ENDPOINT", addr.clone()),
            ],
        );
        assert!(cards.join(format!("{org}.card")).is_file());
        assert!(data.join("policies/isp-feed.toml").is_file());
        nodes.0.push(
            Command::new(env!("CARGO_BIN_EXE_threatmesh"))
                .args(["serve", "-c"])
                .arg(data.join("threatmesh.toml"))
                .env("THREATMESH__FEDERATION__PEER_REFRESH_MS", "100")
                .env("THREATMESH__FEDERATION__RECONNECT_MIN_MS", "50")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        servers.push(addr);
    }
    for ((svc, org, partners), server) in orgs.iter().zip(&servers) {
        let env = [
            ("ORG", org.to_string()),
            ("PARTNERS", partners.to_string()),
            ("DATA", tmp.path().join(svc).display().to_string()),
            ("THREATMESH_SERVER", server.clone()),
        ];
        let said = sh("link.sh", &env);
        assert!(said.contains(&format!("{org}: linked to")), "{said}");
        let again = sh("link.sh", &env);
        assert!(again.contains("already registered"), "{again}");
    }
    let tm = |svc: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_threatmesh"))
            .arg("-c")
            .arg(tmp.path().join(svc).join("threatmesh.toml"))
            .args(args)
            .env_remove("THREATMESH_CONFIG")
            .output()
            .unwrap()
    };
    let o = tm(
        "cert",
        &[
            "publish",
            "--kind",
            "domain",
            "--value",
            "mesh-test.example",
            "--tlp",
            "GREEN",
            "--confidence",
            "85",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for svc in ["isp", "police"] {
        let mut tries = 0;
        loop {
            let o = tm(svc, &["tail", "--no-follow", "--json"]);
            if String::from_utf8_lossy(&o.stdout).contains("mesh-test.example") {
                break;
            }
            tries += 1;
            assert!(tries < 600, "{svc} never received it");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
