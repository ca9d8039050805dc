//! The `threatmesh` binary as an operator uses it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tm(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_threatmesh"));
    c.args(args)
        .env_remove("THREATMESH_CONFIG")
        .env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    tm(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn init(dir: &Path, org: &str, port: u16) -> String {
    let addr = format!("127.0.0.1:{port}");
    let o = run(&[
        "init",
        "--org",
        org,
        "--dir",
        dir.to_str().unwrap(),
        "--endpoint",
        &addr,
        "--listen",
        &addr,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    dir.join("threatmesh.toml").to_str().unwrap().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn init_writes_private_keys_0600_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    init(&dir, "a.example", 7443);
    for key in [
        "certs/ca.key",
        "certs/node.key",
        "certs/admin.key",
        "certs/publisher.key",
        "keys/signing.key",
    ] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let data = std::fs::metadata(dir.join("data"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(data, 0o700, "data/ holds the database");
    let before = std::fs::read(dir.join("keys/signing.key")).unwrap();
    let o = run(&["init", "--org", "a.example", "--dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(before, std::fs::read(dir.join("keys/signing.key")).unwrap());
    let o = run(&[
        "init",
        "--org",
        "a.example",
        "--dir",
        dir.to_str().unwrap(),
        "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(before, std::fs::read(dir.join("keys/signing.key")).unwrap());

    let o = run(&[
        "init",
        "--org",
        "Bad_Org",
        "--dir",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(64));
    assert!(text(&o).contains("--org"), "{}", text(&o));
}

#[test]
fn serve_exits_64_naming_the_bad_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = init(&tmp.path().join("a"), "a.example", 7443);

    let missing = tmp.path().join("nope.toml");
    expect_64(
        run(&["serve", "--config", missing.to_str().unwrap()]),
        &["not found"],
    );
    let with_env = |key: &str, value: &str| {
        tm(&["serve", "--config", &cfg])
            .env(key, value)
            .output()
            .unwrap()
    };
    expect_64(
        with_env("THREATMESH__NODE__LISTEN", "not-an-address"),
        &["node.listen"],
    );
    expect_64(
        with_env("THREATMESH__ORG__ID", "UPPER.example"),
        &["org.id"],
    );
    let key = tmp.path().join("a/certs/node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    expect_64(
        run(&["serve", "--config", &cfg]),
        &["tls.node_key", "chmod 600"],
    );
}

/// Asserts exit status 64 and that the message names each of `needles`.
fn expect_64(o: Output, needles: &[&str]) {
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    for n in needles {
        assert!(text(&o).contains(n), "'{n}' missing from: {}", text(&o));
    }
}

#[test]
fn cards_are_verified_before_a_partner_is_registered() {
    let tmp = tempfile::tempdir().unwrap();
    let a_port = free_port();
    let a = init(&tmp.path().join("a"), "a.example", a_port);
    let b = init(&tmp.path().join("b"), "b.example", free_port());
    let _node_a = serve_ready(&a);
    let _node_b = serve_ready(&b);
    let card = tmp.path().join("a.card");
    let o = run(&["-c", &a, "card", "export", "--out", card.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    let o = run(&["card", "show", card.to_str().unwrap()]);
    assert!(text(&o).contains("org:          a.example") && text(&o).contains("CA SHA-256"));

    // Own card refused.
    let o = run(&["-c", &a, "peer", "add", "--card", card.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));

    // A tampered card is refused and nothing is registered.
    let original = std::fs::read_to_string(&card).unwrap();
    let tampered = tmp.path().join("tampered.card");
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    let sig = json["signatures"][0]["sig"].as_str().unwrap().to_string();
    // Change the first signature character: still base64, no longer valid.
    let first = if sig.starts_with('A') { "B" } else { "A" };
    let flipped = format!("{first}{}", &sig[1..]);
    json["signatures"][0]["sig"] = flipped.into();
    std::fs::write(&tampered, json.to_string()).unwrap();
    let o = run(&[
        "-c",
        &b,
        "peer",
        "add",
        "--card",
        tampered.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("self-signature"), "{}", text(&o));
    let o = run(&["-c", &b, "peer", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "");

    let o = run(&["-c", &b, "peer", "add", "--card", card.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("registered partner a.example")
            && text(&o).contains(&format!("dial:         127.0.0.1:{a_port}")),
        "{}",
        text(&o)
    );
    let o = run(&["-c", &b, "peer", "list", "--json"]);
    let row: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for f in ["threatmesh.db", "threatmesh.db-wal"] {
        let p = tmp.path().join("b/data").join(f);
        if p.exists() {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
    assert_eq!(row["org"], "a.example");
    assert_eq!(row["endpoint"], format!("127.0.0.1:{a_port}"));
    assert_eq!(row["state"], "active");

    // Lifecycle through the CLI.
    let o = run(&["-c", &b, "peer", "suspend", "--partner", "a.example"]);
    assert!(
        text(&o).contains("a.example: active -> suspended"),
        "{}",
        text(&o)
    );
    let o = run(&["-c", &b, "peer", "remove", "--partner", "a.example"]);
    assert!(text(&o).contains("suspended -> removed"), "{}", text(&o));
    expect_64(
        run(&["-c", &b, "peer", "resume", "--partner", "a.example"]),
        &["was removed", "peer add"],
    );
    let o = run(&["-c", &b, "peer", "list", "--json"]);
    let row: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(row["state"], "removed");
}

#[test]
fn a_bad_publish_file_names_line_and_field_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a = init(&tmp.path().join("a"), "a.example", free_port());
    let file = tmp.path().join("in.jsonl");
    std::fs::write(
        &file,
        "{\"kind\":\"domain\",\"value\":\"ok.example\",\"tlp\":\"GREEN\"}\n\
         # comment\n\
         {\"kind\":\"domian\",\"value\":\"x.example\",\"tlp\":\"GREEN\"}\n\
         {\"kind\":\"domain\",\"value\":\"x.example\",\"tlp\":\"WHITE\"}\n\
         {\"kind\":\"domain\",\"value\":\"x.example\",\"tlp\":\"GREEN\",\"colour\":1}\n\
         {\"kind\":\"ipv4\",\"value\":\"999.1.1.1\",\"tlp\":\"GREEN\"}\n\
         {\"kind\":\"domain\",\"value\":\"red.example\",\"tlp\":\"RED\"}\n\
         {\"kind\":\"url\",\"value\":\"http://a.example/x\\u0000y\",\"tlp\":\"GREEN\"}\n",
    )
    .unwrap();
    // No node is running: the file is rejected before anything is sent,
    // value errors (which the node would find) included.
    let o = run(&["-c", &a, "publish", "--file", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("6 bad line(s); nothing was published"), "{t}");
    assert!(t.contains("line 6: value"), "{t}");
    assert!(t.contains("line 7: marking.recipients"), "{t}");
    assert!(t.contains("line 8: value"), "{t}");
    assert!(t.contains("line 3: kind: 'domian'"), "{t}");
    assert!(t.contains("line 4: tlp: 'WHITE'"), "{t}");
    assert!(t.contains("line 5:") && t.contains("colour"), "{t}");
}

struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(cfg: &str) -> Serve {
    Serve(
        tm(&["-c", cfg, "serve"])
            .env("THREATMESH__FEDERATION__PEER_REFRESH_MS", "100")
            .env("THREATMESH__FEDERATION__RECONNECT_MIN_MS", "50")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `serve`, then waits until the node answers `status` with its admin
/// certificate, as an operator would before managing it.
fn serve_ready(cfg: &str) -> Serve {
    let node = serve(cfg);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run(&["-c", cfg, "status", "--json"]);
        if o.status.success() {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "node never answered: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The README quick start: two orgs, cards exchanged, two `serve`
/// processes, publish at A with the CLI, see it with `tail` at B.
#[test]
fn quick_start_two_processes_publish_and_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let a = init(&tmp.path().join("a"), "a.example", free_port());
    let b = init(&tmp.path().join("b"), "b.example", free_port());
    let _sa = serve_ready(&a);
    let _sb = serve_ready(&b);
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policies");
    let agency = policies.join("agency-partner.toml");
    for cfg in [&a, &b] {
        let o = run(&["-c", cfg, "policy", "apply", agency.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("applied policy agency-partner version 1"),
            "{}",
            text(&o)
        );
    }
    for (from, to) in [(&a, &b), (&b, &a)] {
        let card = tmp.path().join("x.card");
        let o = run(&[
            "-c",
            from,
            "card",
            "export",
            "--out",
            card.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let o = run(&[
            "-c",
            to,
            "peer",
            "add",
            "--card",
            card.to_str().unwrap(),
            "--policy",
            "agency-partner",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }

    // Retry while the node starts listening.
    let deadline = Instant::now() + Duration::from_secs(30);
    let published = loop {
        let o = run(&[
            "-c",
            &a,
            "publish",
            "--kind",
            "domain",
            "--value",
            "Phish.EXAMPLE",
            "--tlp",
            "green",
            "--confidence",
            "85",
            "--tag",
            "phishing",
            "--json",
        ]);
        if o.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "publish never succeeded: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The publisher is told who receives it under the current policies.
    assert_eq!(
        published["recipients"],
        serde_json::json!([{"partner": "b.example", "allow": true, "rule": "tlp-green-community", "reason": ""}]),
        "{published}"
    );
    let o = run(&[
        "-c",
        &a,
        "publish",
        "--kind",
        "domain",
        "--value",
        "secret.example",
        "--tlp",
        "RED",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("refused") && text(&o).contains("marking.recipients"),
        "{}",
        text(&o)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run(&["-c", &b, "tail", "--no-follow", "--json"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        if let Some(line) = out.lines().next() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["id"], published["id"]);
            assert_eq!(v["value"], "phish.example", "normalised by the origin");
            assert_eq!(v["origin"], "a.example");
            assert_eq!(v["received_from"], "a.example");
            assert_eq!(v["tlp"], "GREEN");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never showed the indicator: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Why B got it, and what A would do with a draft, without sending.
    let o = run(&[
        "-c",
        &a,
        "policy",
        "explain",
        "--partner",
        "b.example",
        "--indicator",
        published["id"].as_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).starts_with("ALLOW  rule tlp-green-community"),
        "{}",
        text(&o)
    );
    let draft = tmp.path().join("draft.json");
    std::fs::write(
        &draft,
        r#"{"kind":"ipv4","value":"192.0.2.1","tlp":"RED","recipients":["c.example"]}"#,
    )
    .unwrap();
    let o = run(&[
        "-c",
        &a,
        "policy",
        "explain",
        "--partner",
        "b.example",
        "--file",
        draft.to_str().unwrap(),
    ]);
    assert!(
        text(&o).starts_with("DENY   rule red-not-named"),
        "{}",
        text(&o)
    );
    // A script can test the decision by the exit status: 3 for DENY.
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // The ledger at A records the release to B, and verifies.
    let o = run(&["-c", &a, "audit", "log", "--partner", "b.example", "--json"]);
    let sent: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "sent")
        .collect();
    assert_eq!(sent.len(), 1, "{}", text(&o));
    assert_eq!(sent[0]["rule"], "tlp-green-community");
    let o = run(&["-c", &a, "audit", "verify"]);
    assert!(
        o.status.success() && text(&o).contains("audit ledger intact"),
        "{}",
        text(&o)
    );

    // The publisher certificate cannot tail.
    let o = tm(&["-c", &b, "tail", "--no-follow"])
        .env("THREATMESH__CLIENT__ADMIN_CERT", "certs/publisher.pem")
        .env("THREATMESH__CLIENT__ADMIN_KEY", "certs/publisher.key")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("PermissionDenied"), "{}", text(&o));
}

#[test]
fn demo_exits_zero_with_the_summary_line() {
    let o = run(&["demo"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().unwrap();
    assert_eq!(
        last,
        "demo: 8 published, 12 delivered, 4 withheld, 0 verification failures"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("demo: ")).count(),
        1
    );
    // A clean run logs no error, at shutdown included (the writers drain
    // before the store closes).
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("ERROR") && !stdout.contains("ERROR"),
        "{stderr}"
    );
}

#[test]
fn policy_files_are_checked_versioned_and_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let a = init(&tmp.path().join("a"), "a.example", free_port());
    let _node = serve_ready(&a);
    let file = tmp.path().join("p.toml");
    std::fs::write(
        &file,
        "name = \"isp\"\n[egress]\ntlp_ceiling = \"GREEN\"\nkinds = [\"ipv4\", \"domian\"]\n",
    )
    .unwrap();
    let o = run(&["-c", &a, "policy", "apply", file.to_str().unwrap()]);
    expect_64(o, &["line 4", "domian", "not an indicator kind"]);
    let o = run(&["-c", &a, "policy", "show"]);
    assert!(text(&o).contains("no policies applied"), "{}", text(&o));

    std::fs::write(&file, "name = \"isp\"\n[egress]\ntlp_ceiling = \"GREEN\"\n").unwrap();
    let o = run(&["-c", &a, "policy", "apply", file.to_str().unwrap()]);
    assert!(
        text(&o).contains("applied policy isp version 1"),
        "{}",
        text(&o)
    );
    let o = run(&["-c", &a, "policy", "apply", file.to_str().unwrap()]);
    assert!(
        text(&o).contains("policy isp unchanged (version 1)"),
        "{}",
        text(&o)
    );
    std::fs::write(&file, "name = \"isp\"\n[egress]\ntlp_ceiling = \"CLEAR\"\n").unwrap();
    let o = run(&["-c", &a, "policy", "apply", file.to_str().unwrap()]);
    assert!(
        text(&o).contains("applied policy isp version 2"),
        "{}",
        text(&o)
    );
    let o = run(&["-c", &a, "policy", "show", "isp", "--version", "1"]);
    assert!(text(&o).contains("tlp_ceiling = \"GREEN\""), "{}", text(&o));
    let o = run(&["-c", &a, "policy", "show", "isp"]);
    assert!(
        text(&o).contains("version 2") && text(&o).contains("\"CLEAR\""),
        "{}",
        text(&o)
    );
    // Binding needs a registered partner and an existing policy.
    let o = run(&[
        "-c",
        &a,
        "peer",
        "set-policy",
        "--partner",
        "b.example",
        "--policy",
        "isp",
    ]);
    expect_64(o, &["b.example is not a registered partner"]);
    let o = run(&[
        "-c",
        &a,
        "peer",
        "set-policy",
        "--partner",
        "b.example",
        "--policy",
        "nope",
    ]);
    expect_64(o, &["no policy named 'nope'"]);
    let o = run(&["-c", &a, "policy", "history", "isp"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{}", text(&o));
    assert!(
        lines[1].trim_start().starts_with('2')
            && lines[1].ends_with("spiffe://a.example/admin/admin")
    );
    let o = run(&["-c", &a, "audit", "log", "--json"]);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "policy-applied")
        .collect();
    assert_eq!(events.len(), 2, "two applied versions on the ledger");
    assert_eq!(events[1]["subject"], "isp@2");
    assert_eq!(events[1]["actor"], "spiffe://a.example/admin/admin");
}

/// `threatmesh bench` end to end at toy sizes: every figure is measured.
#[test]
fn bench_runs_every_measurement_and_prints_json() {
    let o = run(&[
        "bench",
        "--publish",
        "200",
        "--backlog",
        "500",
        "--subscribers",
        "5",
        "--fanout-indicators",
        "30",
        "--latency-secs",
        "1",
        "--latency-rate",
        "50",
        "--primitive-secs",
        "0.1",
        "--taxii-objects",
        "300",
        "--import-indicators",
        "200",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Not a terminal: each phase as a plain line, and no progress drawing.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bench: "), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for f in [
        "/primitives/sign_per_s_1core",
        "/primitives/verify_per_s_all",
        "/primitives/verify_batch_per_s_all",
        "/primitives/sqlite_insert_per_s",
        "/publish_per_s",
        "/publish_ratio",
        "/publish_batch_per_s",
        "/publish_batch_ratio",
        "/ingest_per_s",
        "/ingest_ratio",
        "/latency/p99_ms",
        "/fanout/deliveries_per_s",
        "/fanout/peak_rss_mb",
        "/taxii/objects_per_s",
        "/import/per_s",
        "/import/peak_rss_mb",
    ] {
        assert!(
            r.pointer(f).and_then(|v| v.as_f64()).unwrap() > 0.0,
            "{f}: {r}"
        );
    }
    assert_eq!(r["latency"]["samples"], 50);
    assert_eq!(r["fanout"]["subscribers"], 5);
    // The node ran in its own process in the publish and fan-out phases:
    // its CPU and the clients' are reported apart.
    for f in [
        "/publish_cpu/user",
        "/publish_clients_cpu/user",
        "/publish_batch_clients_cpu/user",
        "/fanout/cpu/user",
        "/fanout/clients_cpu/user",
    ] {
        assert!(r.pointer(f).and_then(|v| v.as_f64()).is_some(), "{f}: {r}");
    }
    assert_eq!(
        (r["taxii"]["objects"].as_u64(), r["taxii"]["pages"].as_u64()),
        (Some(300), Some(1))
    );
    assert_eq!(r["import"]["indicators"], 200);
    // The primitives are measured before and after the node phases; each
    // ratio divides by the better of the two.
    for f in ["sign_per_s_1core", "verify_per_s_all"] {
        let (b, a) = (
            r["primitives_before"][f].as_f64().unwrap(),
            r["primitives_after"][f].as_f64().unwrap(),
        );
        assert!(b > 0.0 && a > 0.0, "{f}: {r}");
        assert_eq!(r["primitives"][f].as_f64().unwrap(), b.max(a), "{f}");
    }
    let ratio = r["publish_per_s"].as_f64().unwrap()
        / r["primitives"]["sign_per_s_1core"].as_f64().unwrap();
    assert!((r["publish_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
    assert!(err.contains("primitives again"), "{err}");
}

#[test]
fn serve_refuses_a_lost_empty_or_damaged_store_unless_told_to_start_afresh() {
    let tmp = tempfile::tempdir().unwrap();
    let a = init(&tmp.path().join("a"), "a.example", free_port());
    let db = tmp.path().join("a/data/threatmesh.db");
    assert!(db.is_file(), "init creates the store");
    // Served once, with something in its log, and stopped cleanly.
    let mut node = serve_ready(&a);
    let o = run(&[
        "-c",
        &a,
        "publish",
        "--kind",
        "domain",
        "--value",
        "evil.example",
        "--tlp",
        "GREEN",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let pid = node.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(node.0.wait().unwrap().success());
    // Runs `serve` expecting it to refuse; one that starts is killed and
    // fails the test.
    let serve_once = || {
        let mut child = tm(&["-c", &a, "serve"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve started instead of refusing the store");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };

    // A damaged page in the middle of the store: refused at start.
    let healthy = std::fs::read(&db).unwrap();
    let mut damaged = healthy.clone();
    let page = 4096;
    assert!(damaged.len() > 3 * page, "store of {} bytes", damaged.len());
    for b in &mut damaged[2 * page..2 * page + 900] {
        *b = 0xa5;
    }
    std::fs::write(&db, &damaged).unwrap();
    let o = serve_once();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("damaged"), "{}", text(&o));
    std::fs::write(&db, &healthy).unwrap();

    // Empty, then missing: refused, naming what to do.
    std::fs::write(&db, b"").unwrap();
    let o = serve_once();
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        text(&o).contains("is empty") && text(&o).contains("--new-store"),
        "{}",
        text(&o)
    );
    std::fs::remove_file(&db).unwrap();
    let o = serve_once();
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        text(&o).contains("store restore") && text(&o).contains("--new-store"),
        "{}",
        text(&o)
    );

    // Told to start afresh, it does.
    let node = Serve(
        tm(&["-c", &a, "serve", "--new-store"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run(&["-c", &a, "status"]).status.success() {
        assert!(Instant::now() < deadline, "the fresh node never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(node);
}

/// Every usage error exits 64 (`EX_USAGE`), naming what is wrong; asking for
/// help or the version is not an error.
#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    expect_64(run(&["--bogus"]), &["unexpected argument '--bogus'"]);
    expect_64(run(&[]), &["Usage: threatmesh"]);
    expect_64(run(&["peer"]), &["Usage: threatmesh peer"]);
    // Flags that do nothing for a command are not accepted by it.
    expect_64(
        run(&["serve", "--server", "127.0.0.1:1"]),
        &["unexpected argument '--server'"],
    );
    expect_64(
        run(&["publish", "--admin-cert", "x.pem", "--admin-key", "x.key"]),
        &["unexpected argument '--admin-cert'"],
    );
    expect_64(
        run(&["policy", "explain", "--partner", "b.example"]),
        &["--indicator"],
    );
    // `-c` naming a directory (init's --dir) says which file to name.
    expect_64(
        run(&["-c", dir, "status"]),
        &["is a directory", "threatmesh.toml"],
    );
    // An org id init would refuse is never what it suggests.
    let o = run(&["init", "--org", "CERT_example", "--dir", dir]);
    expect_64(o, &["did you mean 'cert.example'?"]);
    for args in [
        &["--help"][..],
        &["--version"],
        &["peer", "list", "--help"],
        &["help", "tail"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(!o.stdout.is_empty(), "{args:?}");
    }
}

/// Completion scripts and manual pages come from the parser's own
/// definitions.
#[test]
fn completions_and_manual_pages_cover_every_command() {
    let o = run(&["completions", "bash"]);
    assert!(o.status.success(), "{}", text(&o));
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(script.contains("complete -F _threatmesh"), "{script}");
    for word in [
        "peer",
        "policy",
        "explain",
        "--publisher-cert",
        "--no-follow",
    ] {
        assert!(script.contains(word), "{word} missing from the bash script");
    }
    for shell in ["zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success() && !o.stdout.is_empty(), "{shell}");
    }
    expect_64(run(&["completions", "cmd"]), &["invalid value 'cmd'"]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("man1");
    let o = run(&["man", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    for page in [
        "threatmesh.1",
        "threatmesh-peer-add.1",
        "threatmesh-policy-explain.1",
    ] {
        let roff = std::fs::read_to_string(out.join(page)).unwrap();
        assert!(roff.contains(".TH"), "{page} is not a manual page");
    }
    let roff = std::fs::read_to_string(out.join("threatmesh-policy-explain.1")).unwrap();
    assert!(roff.contains("Exit status"), "{roff}");
}

/// What goes wrong reaching the node is said in words, with what to check,
/// never as a Rust debug dump.
#[test]
fn connection_errors_name_the_problem_without_debug_dumps() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let a = init(&tmp.path().join("a"), "a.example", port);
    let b = init(&tmp.path().join("b"), "b.example", free_port());
    let _node = serve_ready(&a);
    let no_dump = |o: &Output| {
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
        for dump in [
            "Some(",
            "OtherError",
            "SpiffeId {",
            "Unknown: transport error",
        ] {
            assert!(!text(o).contains(dump), "debug output: {}", text(o));
        }
    };
    // B's CLI pointed at A's node: not our node, and which one it is.
    let o = run(&["-c", &b, "status", "--server", &format!("127.0.0.1:{port}")]);
    no_dump(&o);
    assert!(
        text(&o).contains("is spiffe://a.example/node, not our node (spiffe://b.example/node)"),
        "{}",
        text(&o)
    );
    // A port that answers, but not with TLS.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for c in other.incoming().take(2) {
            let mut c = c.unwrap();
            let _ = c.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
            let _ = c.read(&mut [0u8; 64]);
        }
    });
    let o = run(&["-c", &a, "status", "--server", &other_addr.to_string()]);
    no_dump(&o);
    assert!(text(&o).contains("does not speak TLS"), "{}", text(&o));
    // Nothing there at all.
    let closed = free_port();
    let o = run(&[
        "-c",
        &a,
        "status",
        "--server",
        &format!("127.0.0.1:{closed}"),
    ]);
    no_dump(&o);
    assert!(text(&o).contains("nothing listens at"), "{}", text(&o));
}

/// The README's quick start, run as written from an empty directory
/// outside the checkout. Only three things differ, each because a test
/// cannot do otherwise: the `cargo build` and `cd` lines are left out (the
/// binary under test is put on PATH, the directory is a fresh temporary
/// one), and ports 7441/7442 become free ports. The last line, `tail`,
/// follows until stopped: it is read until the published indicator shows,
/// then every process the script started is stopped.
#[test]
fn the_readme_quick_start_works_verbatim_outside_the_checkout() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("## Quick start").unwrap()..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    assert!(block.contains("cargo build --release") && block.contains("tail"));
    let (p1, p2) = (free_port().to_string(), free_port().to_string());
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo build") && !l.starts_with("mkdir -p"))
        .map(|l| l.replace("7441", &p1).replace("7442", &p2) + "\n")
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_threatmesh"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut sh = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(tmp.path())
        .env("PATH", path)
        .env_remove("THREATMESH_CONFIG")
        .env("RUST_LOG", "warn")
        .env("THREATMESH__FEDERATION__PEER_REFRESH_MS", "100")
        .env("THREATMESH__FEDERATION__RECONNECT_MIN_MS", "50")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so the nodes it starts stop with it.
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = sh.id();
    let stop_all = || {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{pgid}")])
            .status();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = sh.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let shown = loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let hit = line.contains("login-bank.example") && line.contains("cert.example");
                seen.push(line);
                if hit && seen.iter().any(|l| l.starts_with("   SEQ")) {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    stop_all();
    let out = sh.wait_with_output().unwrap();
    let said = format!(
        "{}\n{}",
        seen.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown, "tail never showed the indicator:\n{said}");
    // Along the way: the examples were written, and the publisher was told
    // who receives what it published.
    assert!(tmp.path().join("cert/policies/isp-feed.toml").is_file());
    assert!(said.contains("policies:"), "{said}");
    // `card export` prints what to compare out of band.
    assert!(
        said.contains("CA SHA-256:") && said.contains("signing key:"),
        "{said}"
    );
    assert!(
        said.contains("isp.example") && said.contains("sent 1 (1 by rule"),
        "{said}"
    );
}

/// The node's log, human and JSON, at debug level under some traffic: one
/// line per event, and no Rust debug output (`Some(..)`, `Ok(..)`, structs).
#[test]
fn node_logs_carry_no_rust_debug_output() {
    for format in ["human", "json"] {
        let tmp = tempfile::tempdir().unwrap();
        let a = init(&tmp.path().join("a"), "a.example", free_port());
        let node = tm(&["-c", &a, "serve"])
            .env("THREATMESH__LOG__FORMAT", format)
            .env("RUST_LOG", "threatmesh=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let o = run(&["-c", &a, "status", "--wait", "60"]);
        assert!(o.status.success(), "{}", text(&o));
        let o = run(&[
            "-c",
            &a,
            "publish",
            "--kind",
            "ipv4",
            "--value",
            "192.0.2.7",
            "--tlp",
            "CLEAR",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        // A refused connection is logged too.
        let b = init(&tmp.path().join("b"), "b.example", free_port());
        let addr = std::fs::read_to_string(&a)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("listen = \"")
                    .map(|v| v.trim_end_matches('"').to_string())
            })
            .unwrap();
        let _ = run(&["-c", &b, "status", "--server", &addr]);
        let _ = Command::new("kill").arg(node.id().to_string()).status();
        let out = node.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains("node serving"), "{log}");
        for dump in [
            "Some(",
            "Ok(",
            "Err(",
            "None,",
            " { org:",
            "OrgId(",
            "SpiffeId {",
        ] {
            assert!(!log.contains(dump), "{format} log has {dump:?}:\n{log}");
        }
        // Any `Variant(` — a capitalised word glued to a parenthesis — is
        // an enum's Debug output.
        let bytes = log.as_bytes();
        for (i, _) in log.match_indices('(') {
            let word: String = log[..i]
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let capitalised = word.chars().next().is_some_and(|c| c.is_ascii_uppercase());
            assert!(
                !(capitalised && i > 0 && bytes[i - 1] != b' '),
                "{format} log has Debug output {word}(: {}",
                &log[i.saturating_sub(80)..(i + 40).min(log.len())]
            );
        }
        if format == "json" {
            for line in log.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
            }
        }
    }
}
