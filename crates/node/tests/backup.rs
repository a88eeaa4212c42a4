//! `perennial backup` and `perennial restore` against the real binary: a backup taken while
//! a node serves under load holds every add acknowledged before it began and none that was
//! never issued; it verifies, restores into a new directory and serves there; periodic
//! backups keep the newest few.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::node::{Http, Node, perennial, stop};

/// Counters added to at once, one client each.
const CLIENTS: usize = 8;

fn run(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = perennial();
    command.args(args);
    for path in paths {
        command.arg(path);
    }
    command.output().expect("the binary runs")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_acknowledged_add_and_serves_once_restored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data);
    let http = Http::new();
    // Per counter: adds issued, and the value the last acknowledged add returned.
    let issued = Arc::new(Mutex::new(vec![0i64; CLIENTS]));
    let acked = Arc::new(Mutex::new(vec![0i64; CLIENTS]));
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, addr) = (http.clone(), node.addr);
        let (issued, acked, stop_load) = (issued.clone(), acked.clone(), stop_load.clone());
        clients.push(tokio::spawn(async move {
            // Bounded: at most 5,000 adds each.
            for _ in 0..5_000 {
                if stop_load.load(Ordering::Relaxed) {
                    break;
                }
                issued.lock()[c] += 1;
                let (status, reply) = http
                    .post(addr, &format!("/v1/counter/c{c}"), r#"{"add": 1}"#)
                    .await
                    .expect("the node answers");
                assert_eq!(status, 200, "{reply}");
                acked.lock()[c] = reply["value"].as_i64().expect("a value");
            }
        }));
    }
    let total = |acked: &Mutex<Vec<i64>>| acked.lock().iter().sum::<i64>();
    let started = Instant::now();
    while total(&acked) < 400 {
        assert!(started.elapsed() < Duration::from_secs(60), "no load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = acked.lock().clone();
    let file = dir.path().join("backup.db");
    let (d, f) = (data.clone(), file.clone());
    let out = tokio::task::spawn_blocking(move || {
        run(
            &["backup", "--json", "--data"],
            &[&d, Path::new("--to"), &f],
        )
    })
    .await
    .unwrap();
    let report: serde_json::Value = serde_json::from_str(&ok(&out, "backup")).unwrap();
    assert!(report["bytes"].as_u64().unwrap() > 0, "{report}");
    // The load goes on after the backup; then it stops.
    let after = total(&acked);
    while total(&acked) < after + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_load.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let verified = ok(&run(&["backup", "--verify"], &[&file]), "verify");
    assert!(verified.contains("intact"), "{verified}");
    assert!(
        verified.contains("0 this build cannot activate"),
        "{verified}"
    );
    // Without --to or --verify there is nothing to do, and it says so.
    let nothing = run(&["backup", "--data"], &[&data]);
    assert!(!nothing.status.success());
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("--to"));
    let restored = dir.path().join("restored");
    ok(
        &run(
            &["restore", "--from"],
            &[&file, Path::new("--data"), &restored],
        ),
        "restore",
    );
    // A restore never overwrites.
    let again = run(
        &["restore", "--from"],
        &[&file, Path::new("--data"), &restored],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    stop(node);

    let node = Node::start(&restored);
    let issued = issued.lock().clone();
    for c in 0..CLIENTS {
        let value = http.counter(node.addr, &format!("c{c}")).await;
        assert!(
            before[c] <= value && value <= issued[c],
            "c{c}: {value} restored, {} acknowledged before the backup, {} issued",
            before[c],
            issued[c]
        );
    }
    stop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_backups_keep_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backups) = (dir.path().join("data"), dir.path().join("backups"));
    let mut serve = perennial();
    serve
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backup-every",
            "300ms",
        ])
        .args(["--backup-keep", "2", "--data"])
        .arg(&data)
        .arg("--backup-dir")
        .arg(&backups);
    let node = Node::spawn(serve);
    let http = Http::new();
    http.post(node.addr, "/v1/counter/c1", r#"{"add": 5}"#)
        .await
        .unwrap();
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&backups)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".db"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    // A backup is named by the time it began; only one that began after the add was
    // acknowledged must hold it.
    let acknowledged = format!(
        "perennial-{}",
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
    );
    // Wait for a third backup that began after the add, with the oldest ones deleted. A new
    // one is renamed into place before the oldest is deleted, so three may stand for a moment.
    let started = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", names());
        let now = names();
        assert!(now.len() <= 3, "{now:?}");
        seen.extend(now.iter().cloned());
        let newest_after = now.last().is_some_and(|n| *n > acknowledged);
        if seen.len() >= 3 && now.len() == 2 && newest_after {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(node);
    let newest = backups.join(names().pop().unwrap());
    let verified = ok(&run(&["backup", "--verify"], &[&newest]), "verify");
    assert!(verified.contains("1 entities"), "{verified}");
}
