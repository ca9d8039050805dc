//! The store under a node's bad day, over a real SQLite file: closing it
//! commits what its group-commit writers already queued and refuses what
//! comes after; full disks; publishes whose deadline passes while the store
//! is busy, and retries under an idempotency key.

mod common;

use std::sync::Arc;

use common::*;
use prost::Message;
use threatmesh::clock::Clock;
use threatmesh::proto::v1::Tlp;
use threatmesh::store::{NewIndicator, Store, StoreError};

fn row(key: &threatmesh::signing::OrgSigningKey, i: usize) -> NewIndicator {
    let ind = hand_made(
        "a.example",
        key,
        &format!("host-{i}.evil.example"),
        Tlp::Green,
        now_ms(),
    );
    NewIndicator {
        envelope: seal_indicator(key, &ind).encode_to_vec(),
        indicator: ind,
        rule: "published-here",
        path: Vec::new(),
        upstream_seq: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_every_queued_write_and_refuses_later_ones() {
    let at = TestStore::new();
    let store = at.open().await;
    let (key, _) = threatmesh::signing::OrgSigningKey::generate().unwrap();
    let key = Arc::new(key);
    // Many publishes in flight, then close while they are queued.
    let mut pending = Vec::new();
    for i in 0..200 {
        let (s, k) = (store.clone(), key.clone());
        pending.push(tokio::spawn(async move {
            s.append_local(row(&k, i), "test", None).await
        }));
    }
    tokio::task::yield_now().await;
    store.close().await;
    let mut acknowledged = 0;
    for p in pending {
        match p.await.unwrap() {
            Ok(_) => acknowledged += 1,
            Err(StoreError::WriterStopped) => {}
            Err(e) => panic!("a write failed other than by the close: {e}"),
        }
    }
    // After close, a write is refused with the reason.
    let late = store.append_local(row(&key, 999), "test", None).await;
    assert!(matches!(late, Err(StoreError::WriterStopped)), "{late:?}");
    // Every acknowledged write is there, and nothing else; the ledger holds.
    let reopened = at.open().await;
    assert_eq!(reopened.count_indicators().await.unwrap(), acknowledged);
    assert!(reopened.verify_audit().await.unwrap().is_ok());
    reopened.close().await;
}

/// A publish of indicator `i` with a 4 KiB description.
async fn publish_big(
    client: &mut threatmesh::proto::v1::exchange_client::ExchangeClient<tonic::transport::Channel>,
    i: u32,
) -> Result<(), tonic::Status> {
    let mut d = ipv4_draft(i, Tlp::Green);
    d.description = format!("{i:08}").repeat(500);
    client
        .publish(threatmesh::proto::v1::PublishRequest {
            indicator: Some(d),
            ..Default::default()
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_publishes_and_takes_the_next_one_once_space_returns() {
    // store.max_size_mb bounds a SQLite file.
    let mut a = Org::new_sqlite("a.example");
    a.settings.store.max_size_mb = 4;
    let node = start(&a).await;
    // Most of the allowed size taken by something else (as another program
    // would fill a shared disk).
    let url = format!("sqlite://{}", a.settings.store.path.display());
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE filler (x BLOB)")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO filler VALUES (zeroblob(3 * 1024 * 1024))")
        .execute(&mut db)
        .await
        .unwrap();

    let mut client = publisher(&a, &node);
    let mut full = None;
    for i in 0..2000 {
        if let Err(s) = publish_big(&mut client, i).await {
            full = Some((i, s));
            break;
        }
    }
    let (at, status) = full.expect("the store never filled up");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("full"), "{status:?}");
    // Still full: refused again, nothing half-stored.
    let again = publish_big(&mut client, at).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::ResourceExhausted, "{again:?}");
    let held = node.ctx.store.count_indicators().await.unwrap();

    // Space returns: the next publish is stored, without a restart.
    sqlx::query("DROP TABLE filler")
        .execute(&mut db)
        .await
        .unwrap();
    publish_big(&mut client, at).await.unwrap();
    publish_big(&mut client, at + 1).await.unwrap();
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), held + 2);
    assert_eq!(
        node.ctx.store.verify_audit().await.unwrap(),
        Ok(node.ctx.store.count_audit().await.unwrap())
    );
    node.stop().await;
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl SmallDisk {
    /// Mounts an 8 MiB tmpfs (root only: the test machines run as root).
    fn mount() -> Option<Self> {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))?;
        if !root {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("disk");
        std::fs::create_dir(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs as root failed");
        Some(Self(mnt, dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_the_next_write_after_space_returns_succeeds() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("not root: cannot mount a small tmpfs here; the test machines run this as root");
        return;
    };
    let mut a = Org::new_sqlite("a.example");
    a.settings.store.path = disk.0.join("a.db");
    let node = start(&a).await;
    // Another program fills the disk.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; 6 << 20]).unwrap();
    let mut client = publisher(&a, &node);
    let mut refused = Vec::new();
    for i in 0..5000 {
        if let Err(s) = publish_big(&mut client, i).await {
            refused.push(s);
            if refused.len() == 6 {
                break;
            }
        }
    }
    assert_eq!(refused.len(), 6, "the disk never filled");
    // Every refusal names the full disk; none is a wedged store.
    for s in &refused {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("disk is full"), "{s:?}");
    }
    let held = node.ctx.store.count_indicators().await.unwrap();
    // Space returns: the next writes succeed, no restart.
    std::fs::remove_file(&filler).unwrap();
    for i in 9000..9005 {
        publish_big(&mut client, i).await.unwrap();
    }
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), held + 5);
    assert_eq!(
        node.ctx.store.verify_audit().await.unwrap(),
        Ok(node.ctx.store.count_audit().await.unwrap())
    );
    node.stop().await;
}

impl SmallDisk {
    /// Fills the disk, leaving `free` bytes; the filler is `path`.
    fn fill_leaving(&self, free: usize) -> std::path::PathBuf {
        use std::io::Write;
        let reserve = self.0.join("reserve");
        std::fs::write(&reserve, vec![0u8; free]).unwrap();
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        drop(f);
        std::fs::remove_file(reserve).unwrap();
        filler
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_disk_is_full_backs_off_and_catches_up_once_space_returns() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("not root: cannot mount a small tmpfs here; the test machines run this as root");
        return;
    };
    let a = Org::new("a.example");
    let mut b = Org::new_sqlite("b.example");
    b.settings.store.path = disk.0.join("b.db");
    b.settings.federation.reconnect_min_ms = 50;
    b.settings.federation.reconnect_max_ms = 3200;
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    let mut client = publisher(&a, &node_a);
    for i in 0..600 {
        publish_big(&mut client, i).await.unwrap();
    }
    b.add_peer(&a, Some(node_a.addr)).await;
    // Another program fills B's disk, leaving too little for A's log.
    let filler = disk.fill_leaving(512 * 1024);
    let node_b = start(&b).await;

    // B's link fails on its own store, again and again: it backs off
    // (the delay grows) instead of retrying at the shortest delay, and
    // says why.
    let (ctx, a_id) = (node_b.ctx.clone(), a.id.clone());
    wait_until(60, "B's link to back off", || {
        let (ctx, a_id) = (ctx.clone(), a_id.clone());
        async move {
            ctx.links
                .snapshot()
                .get(&a_id)
                .is_some_and(|h| h.retry_in_ms >= 800)
        }
    })
    .await;
    let health = node_b.ctx.links.snapshot().get(&a.id).cloned().unwrap();
    assert!(health.last_error.contains("disk is full"), "{health:?}");

    // Space returns: B catches up, nothing lost.
    std::fs::remove_file(filler).unwrap();
    wait_until(60, "B to hold A's 600 indicators", || {
        let s = node_b.ctx.store.clone();
        async move { s.count_indicators().await.unwrap() >= 600 }
    })
    .await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 600);
    node_b.stop().await;
    node_a.stop().await;
}

/// Takes the store's write lock on `org`'s database from outside the node
/// (as a long backup, another program or another replica would), so the
/// node's next write waits: SQLite's lock, or the advisory lock every
/// PostgreSQL writer takes.
async fn hold_write_lock(org: &Org) -> sqlx::AnyConnection {
    let mut db = org.raw_db().await;
    if org.pg.is_some() {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(threatmesh::store::PG_WRITE_LOCK)
            .execute(&mut db)
            .await
            .unwrap();
    } else {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut db)
            .await
            .unwrap();
    }
    db
}

async fn release_write_lock(mut db: sqlx::AnyConnection) {
    if db.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut db)
            .await
            .unwrap();
    } else {
        sqlx::query("ROLLBACK").execute(&mut db).await.unwrap();
    }
}

/// A Publish request for `d` with a deadline of `ms` and an idempotency
/// key ("" = none).
fn publish_request(
    d: threatmesh::proto::v1::IndicatorDraft,
    key: &str,
    ms: Option<u64>,
) -> tonic::Request<threatmesh::proto::v1::PublishRequest> {
    let mut req = tonic::Request::new(threatmesh::proto::v1::PublishRequest {
        indicator: Some(d),
        idempotency_key: key.into(),
        ..Default::default()
    });
    if let Some(ms) = ms {
        req.set_timeout(std::time::Duration::from_millis(ms));
    }
    req
}

/// The deadline's end as a tonic client reports it: its own timer fires
/// at the deadline (CANCELLED, "Timeout expired") as the node's answer,
/// DEADLINE_EXCEEDED (checked on the wire in `rpc.rs`), is on its way.
fn deadline_passed(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::DeadlineExceeded
        || (s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired")
}

/// Waits until `node` has given up `n` calls whose deadline passed: the
/// client's timer fires first and it cancels the call; the node drops the
/// call when that reaches it, or when its own timer (armed when the
/// request arrived) fires, whichever is first. Only then is the publish
/// the call waited for given up.
async fn deadlines_passed(node: &RunningNode, n: u64) {
    let metrics = node.metrics;
    wait_until(60, "the node to give up the late call", || async move {
        let (_, scrape) = http_get(metrics, "/metrics").await;
        let count = |s| sample(&scrape, s).unwrap_or(0.0);
        count("threatmesh_deadline_exceeded_total") + count("threatmesh_requests_abandoned_total")
            == n as f64
    })
    .await;
}

/// The store is busy past a publisher's deadline (grpc-timeout): the
/// publish is not stored once the store frees up (before: stored anyway,
/// so a retry published it twice under a new id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_past_its_deadline_is_not_stored() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let mut client = publisher(&a, &node);
    let lock = hold_write_lock(&a).await;
    let late = client
        .publish(publish_request(ipv4_draft(1, Tlp::Green), "", Some(300)))
        .await
        .unwrap_err();
    assert!(deadline_passed(&late), "{late:?}");
    deadlines_passed(&node, 1).await;
    release_write_lock(lock).await;

    // The writer takes publishes in order: once a later one is stored, the
    // late one has been decided.
    let next = client
        .publish(publish_request(ipv4_draft(2, Tlp::Green), "", None))
        .await
        .unwrap()
        .into_inner();
    let held = node.ctx.store.indicators(None).await.unwrap();
    assert_eq!(
        held.len(),
        1,
        "only the publish whose caller waited: {held:#?}"
    );
    assert_eq!(held[0].indicator_id, next.id);
    let published: Vec<_> = node
        .ctx
        .store
        .audit_rows(None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.entry.event == "published")
        .collect();
    assert_eq!(published.len(), 1, "{published:#?}");
    node.stop().await;
}

/// A retry under the same idempotency key returns the first attempt's id,
/// version and seq and stores nothing; so do concurrent duplicates; the
/// same key for other content, or a malformed key, is INVALID_ARGUMENT
/// naming the field. A publish whose deadline passed is retried under its
/// key and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_with_the_same_idempotency_key_returns_the_original() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let mut client = publisher(&a, &node);
    let d = ipv4_draft(1, Tlp::Green);
    let first = client
        .publish(publish_request(d.clone(), "k-1", None))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let again = client
        .publish(publish_request(d.clone(), "k-1", None))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(
        (&again.id, again.version, again.seq),
        (&first.id, first.version, first.seq)
    );

    // Another indicator under a key already used: refused, nothing stored.
    let other = client
        .publish(publish_request(ipv4_draft(2, Tlp::Green), "k-1", None))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::InvalidArgument);
    assert!(
        other
            .message()
            .starts_with("idempotency_key: 'k-1' was used for another indicator")
            && other.message().contains(&first.id),
        "{other:?}"
    );
    for bad in ["has space", &"x".repeat(129)] {
        let e = client
            .publish(publish_request(d.clone(), bad, None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("idempotency_key:"), "{e:?}");
    }

    // Sixteen concurrent attempts under one new key: one indicator.
    let tries: Vec<_> = (0..16)
        .map(|_| {
            let mut c = client.clone();
            let d = ipv4_draft(3, Tlp::Green);
            tokio::spawn(async move {
                c.publish(publish_request(d, "k-2", None))
                    .await
                    .unwrap()
                    .into_inner()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tries {
        answers.push(t.await.unwrap());
    }
    assert_eq!(answers.iter().filter(|r| !r.replayed).count(), 1);
    assert!(
        answers
            .iter()
            .all(|r| r.id == answers[0].id && r.seq == answers[0].seq)
    );

    // The deadline passes while the store is busy; the retry under the
    // same key publishes it once, and a second retry gets that one back.
    let lock = hold_write_lock(&a).await;
    let late = client
        .publish(publish_request(ipv4_draft(4, Tlp::Green), "k-3", Some(300)))
        .await
        .unwrap_err();
    assert!(deadline_passed(&late), "{late:?}");
    deadlines_passed(&node, 1).await;
    release_write_lock(lock).await;
    let retry = client
        .publish(publish_request(ipv4_draft(4, Tlp::Green), "k-3", None))
        .await
        .unwrap()
        .into_inner();
    let retry2 = client
        .publish(publish_request(ipv4_draft(4, Tlp::Green), "k-3", None))
        .await
        .unwrap()
        .into_inner();
    assert!(!retry.replayed && retry2.replayed && retry2.id == retry.id);
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 3);
    node.stop().await;
}

/// `publish --file` (PublishBatch) tells the publisher what each partner
/// will be sent or not, decided as the send path decides, and reports a
/// line naming an id the node does not hold by its number, after the rest
/// are published (as `publish --help` says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_file_previews_each_partner_and_reports_an_unknown_id_by_line() {
    let (a, _b, node_a, node_b) = linked_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    let lines = [
        r#"{"kind":"ipv4","value":"198.51.100.1","tlp":"GREEN"}"#.to_string(),
        r#"{"kind":"ipv4","value":"198.51.100.2","tlp":"GREEN"}"#.to_string(),
        r#"{"kind":"ipv4","value":"198.51.100.3","tlp":"RED","recipients":["c.example"]}"#
            .to_string(),
        format!(
            r#"{{"kind":"ipv4","value":"198.51.100.4","tlp":"GREEN","id":"{}"}}"#,
            uuid::Uuid::new_v4()
        ),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let o = cli(&a, &node_a, &["publish", "--file", file.to_str().unwrap()]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "{out}\n{err}");
    assert!(out.contains("published 3 of 4 indicator(s)"), "{out}");
    let b_line = out
        .lines()
        .find(|l| l.contains("b.example"))
        .unwrap_or_else(|| panic!("no line for b.example: {out}"));
    assert!(b_line.contains("sent 2"), "{b_line}");
    assert!(b_line.contains("withheld 1"), "{b_line}");
    assert!(
        err.contains("line 4") && err.contains("never published by a.example"),
        "{err}"
    );
    assert_eq!(node_a.ctx.store.count_indicators().await.unwrap(), 3);
    node_b.stop().await;
    node_a.stop().await;
}

/// `publish --file` run again after part of the file was published (an
/// interruption) publishes only the rest: each line carries a key made
/// from its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_file_run_again_publishes_only_what_is_missing() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    let line =
        |i: u32| format!("{{\"kind\":\"ipv4\",\"value\":\"198.51.100.{i}\",\"tlp\":\"GREEN\"}}\n");
    std::fs::write(&file, format!("{}{}", line(1), line(2))).unwrap();
    let path = file.to_str().unwrap();
    let first = cli(&a, &node, &["publish", "--file", path]);
    assert!(first.status.success(), "{first:?}");
    // The file grows by a line and is run again.
    std::fs::write(&file, format!("{}{}{}", line(1), line(2), line(3))).unwrap();
    let second = cli(&a, &node, &["publish", "--file", path]);
    assert!(second.status.success(), "{second:?}");
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        out.contains("published 1 of 3 indicator(s); 2 were already published by an earlier run"),
        "{out}"
    );
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 3);
    let json = cli(&a, &node, &["publish", "--file", path, "--json"]);
    let replayed = String::from_utf8_lossy(&json.stdout)
        .lines()
        .filter(|l| l.contains("\"replayed\":true"))
        .count();
    assert_eq!(replayed, 3);
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 3);
    node.stop().await;
}

/// PublishBatch: each item its own outcome, in order — a bad one refused
/// with the code Publish would give, the others published; duplicates of
/// one idempotency key in one batch give one indicator; too many items are
/// refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_batch_gives_each_item_its_own_outcome() {
    use threatmesh::proto::v1::{PublishBatchRequest, PublishRequest};
    let a = Org::new("a.example");
    let node = start(&a).await;
    let mut client = publisher(&a, &node);
    let mut bad = ipv4_draft(2, Tlp::Green);
    bad.value = "999.0.0.1".into();
    let item = |d, key: &str| PublishRequest {
        indicator: Some(d),
        idempotency_key: key.into(),
        ..Default::default()
    };
    let r = client
        .publish_batch(PublishBatchRequest {
            items: vec![
                item(ipv4_draft(1, Tlp::Green), ""),
                item(bad, ""),
                item(ipv4_draft(3, Tlp::Green), "k"),
                item(ipv4_draft(3, Tlp::Green), "k"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].code, 0);
    assert_eq!(r[1].code, tonic::Code::InvalidArgument as u32);
    assert!(r[1].message.starts_with("value:"), "{:?}", r[1]);
    let (x, y) = (
        r[2].published.as_ref().unwrap(),
        r[3].published.as_ref().unwrap(),
    );
    assert_eq!(x.id, y.id);
    assert!(
        x.replayed != y.replayed,
        "one stored, one replayed: {x:?} {y:?}"
    );
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 2);
    let too_many = client
        .publish_batch(PublishBatchRequest {
            items: (0..1001)
                .map(|i| item(ipv4_draft(100 + i, Tlp::Green), ""))
                .collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(too_many.message().starts_with("items:"));
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 2);
    node.stop().await;
}

/// Idempotency keys are remembered for store.publish_keys_kept_ms and then
/// forgotten: the same key later publishes anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_keys_are_forgotten_after_their_time() {
    let at = TestStore::new();
    let store = at.open().await;
    let (key, _) = threatmesh::signing::OrgSigningKey::generate().unwrap();
    let k = threatmesh::store::PublishKey {
        key: "k".into(),
        request_digest: vec![1; 32],
    };
    store
        .append_local(row(&key, 1), "p", Some(k.clone()))
        .await
        .unwrap();
    assert!(store.published_under("p", &k).await.unwrap().is_some());
    assert_eq!(
        store.forget_publish_keys(now_ms() - 60_000).await.unwrap(),
        0
    );
    assert_eq!(store.forget_publish_keys(now_ms() + 1).await.unwrap(), 1);
    assert!(store.published_under("p", &k).await.unwrap().is_none());
    store.close().await;
}

/// Idempotency keys kept by a store from before their look-up hash
/// (migration 0016) still answer a retry after the upgrade: the same
/// content gets the original, other content under the key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_kept_from_before_the_hashed_index_still_answer_retries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        let mut before = sqlx::migrate!("migrations/sqlite");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < 16)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&pool).await.unwrap();
        for (key, id, seq) in [("retry-1", "id-1", 7), ("retry-2", "id-2", 8)] {
            sqlx::query(
                "INSERT INTO publish_keys (publisher, key, request_digest, indicator_id, version, seq, created_ms) \
                 VALUES ('spiffe://a.example/publisher/siem', ?, x'01', ?, 1, ?, ?)",
            )
            .bind(key)
            .bind(id)
            .bind(seq)
            .bind(now_ms())
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = Store::open_sqlite(&path, Clock::system()).await.unwrap();
    let key = |k: &str, digest: u8| threatmesh::store::PublishKey {
        key: k.to_string(),
        request_digest: vec![digest],
    };
    let publisher = "spiffe://a.example/publisher/siem";
    assert_eq!(
        store
            .published_under(publisher, &key("retry-2", 1))
            .await
            .unwrap(),
        Some(threatmesh::store::Appended::Again {
            id: "id-2".into(),
            version: 1,
            seq: 8
        })
    );
    assert!(matches!(
        store.published_under(publisher, &key("retry-1", 2)).await,
        Err(StoreError::KeyReused { .. })
    ));
    assert_eq!(
        store
            .published_under("spiffe://a.example/publisher/other", &key("retry-1", 1))
            .await
            .unwrap(),
        None,
        "a key is its publisher's own"
    );
    let many = store
        .published_under_many(publisher, &[&key("retry-1", 1), &key("unused", 1)])
        .await
        .unwrap();
    assert_eq!(many.len(), 1, "{many:?}");
    assert!(matches!(
        many["retry-1"],
        Ok(threatmesh::store::Appended::Again { seq: 7, .. })
    ));
    store.close().await;
}

/// A group holding versions already stored (and one twice) stores the
/// others, each under the sequence number it reports, and refuses the
/// duplicates: the numbers come back right whether or not the statement
/// skipped rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_duplicates_reports_the_sequence_numbers_it_stored() {
    let at = TestStore::new();
    let store = at.open().await;
    let (key, _) = threatmesh::signing::OrgSigningKey::generate().unwrap();
    let rows: Vec<NewIndicator> = (0..6).map(|i| row(&key, i)).collect();
    for r in &rows[..2] {
        store.append_local(r.clone(), "test", None).await.unwrap();
    }
    // Rows 0 and 1 again, row 3 twice, rows 2-5 new.
    let group: Vec<_> = [0, 2, 1, 3, 3, 4, 5]
        .iter()
        .map(|&i| (rows[i].clone(), None))
        .collect();
    let got = store.append_local_many(group, "test").await.unwrap();
    let stored: std::collections::HashMap<String, u64> = store
        .indicators(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.indicator_id.clone(), r.seq))
        .collect();
    assert_eq!(stored.len(), 6);
    let seq_of = |i: usize| stored[&rows[i].indicator.id];
    for (at, i) in [(1, 2), (3, 3), (5, 4), (6, 5)] {
        assert_eq!(
            got[at].as_ref().unwrap(),
            &threatmesh::store::Appended::New(seq_of(i)),
            "item {at}: {got:?}"
        );
    }
    for at in [0, 2, 4] {
        assert!(
            matches!(got[at], Err(StoreError::Duplicate { .. })),
            "item {at}: {got:?}"
        );
    }
    // And a group of only new rows takes numbers after the last, in
    // order: on SQLite the next ones; on PostgreSQL, whose sequence does
    // not give back the numbers the refused duplicates drew, maybe after a
    // gap (docs/scaling.md).
    let more: Vec<_> = (6..9).map(|i| (row(&key, i), None)).collect();
    let got = store.append_local_many(more, "test").await.unwrap();
    let last = *stored.values().max().unwrap();
    let seqs: Vec<u64> = got
        .into_iter()
        .map(|r| match r {
            Ok(threatmesh::store::Appended::New(seq)) => seq,
            other => panic!("{other:?}"),
        })
        .collect();
    if store.is_postgres() {
        assert!(
            seqs[0] > last && seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{seqs:?}"
        );
    } else {
        assert_eq!(seqs, vec![last + 1, last + 2, last + 3]);
    }
    assert!(store.verify_audit().await.unwrap().is_ok());
    store.close().await;
}

/// Two handles on one store (two processes on one SQLite file, two
/// replicas on one database) append to one ledger: each moves the head on
/// from the one it last wrote only if that is still the stored one, and
/// otherwise reads it, so the ledger stays one chain with no row lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_appending_in_turn_keep_one_ledger_chain() {
    let at = TestStore::new();
    let (first, second) = (at.open().await, at.open().await);
    let (key, _) = threatmesh::signing::OrgSigningKey::generate().unwrap();
    for i in 0..12 {
        let store = if i % 3 == 0 { &second } else { &first };
        store
            .append_local(row(&key, i), "test", None)
            .await
            .unwrap();
    }
    for store in [&first, &second] {
        assert_eq!(store.count_indicators().await.unwrap(), 12);
        assert_eq!(store.verify_audit().await.unwrap(), Ok(12));
        assert_eq!(store.count_audit().await.unwrap(), 12);
    }
    first.close().await;
    second.close().await;
}

/// Release records (what was sent to whom) are committed without a sync
/// of their own on SQLite, so a relayed indicator waits for one durable
/// commit less; the next sync puts them on disk, and a writer left idle
/// syncs them by itself: nothing stays unsynced, and the ledger is whole.
/// On PostgreSQL every commit is on disk when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_records_committed_without_a_sync_are_synced_once_idle() {
    let (a, _b, node_a, node_b) = linked_pair().await;
    let drafts = (0..5).map(|i| ipv4_draft(i, Tlp::Green)).collect();
    publish_all(&publisher(&a, &node_a), drafts, 1).await;
    caught_up(&node_b, &a, &node_a).await;
    let sent = ledger(&node_a, "b.example")
        .await
        .into_iter()
        .filter(|r| r.entry.event == "sent")
        .count();
    assert!(sent >= 1, "A's ledger has no release to b.example");
    let store = &node_a.ctx.store;
    if store.is_postgres() {
        assert_eq!(store.unsynced_commits(), 0);
    } else {
        wait_until(30, "A's writer to sync its release records", || async {
            store.unsynced_commits() == 0
        })
        .await;
    }
    assert!(store.verify_audit().await.unwrap().is_ok());
    node_b.stop().await;
    node_a.stop().await;
}

/// Rows a node commits go straight onto its shared tail, so the streams it
/// wakes do not read them back; a row another handle wrote in between
/// (another process on the file, another replica) is never skipped: a
/// stream reading after the first row gets every later one, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_elsewhere_between_two_of_ours_are_not_skipped_by_the_tail() {
    let at = TestStore::new();
    let (ours, other) = (at.open().await, at.open().await);
    let (key, _) = threatmesh::signing::OrgSigningKey::generate().unwrap();
    let rows: Vec<NewIndicator> = (0..4).map(|i| row(&key, i)).collect();
    let seq = |a: threatmesh::store::Appended| match a {
        threatmesh::store::Appended::New(seq) => seq,
        other => panic!("{other:?}"),
    };
    let first = seq(ours
        .append_local(rows[0].clone(), "test", None)
        .await
        .unwrap());
    let read = ours.read_after(0, 100).await.unwrap();
    assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![first]);
    let between = seq(other
        .append_local(rows[1].clone(), "test", None)
        .await
        .unwrap());
    let next = seq(ours
        .append_local(rows[2].clone(), "test", None)
        .await
        .unwrap());
    let last = seq(ours
        .append_local(rows[3].clone(), "test", None)
        .await
        .unwrap());
    let read = ours.read_after(first, 100).await.unwrap();
    assert_eq!(
        read.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![between, next, last]
    );
    let ids: Vec<&str> = read.iter().map(|r| r.indicator_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            &rows[1].indicator.id,
            &rows[2].indicator.id,
            &rows[3].indicator.id
        ]
    );
    ours.close().await;
    other.close().await;
}
