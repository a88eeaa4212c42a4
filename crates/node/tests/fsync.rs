//! Durability counted at the system-call level: `kill -9` keeps the page cache, so only
//! counting fsyncs shows that each acknowledged call waited for one.

use std::path::Path;
use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::node::{Http, Node};

/// How many `fsync`/`fdatasync` calls thread `tid` made on the WAL file, as `trace` (an
/// `strace -f -y` log, each line starting with the thread's id) shows them.
///
/// Only the committer's are counted: those are the commits. The store's maintenance thread
/// also fsyncs the WAL when it checkpoints in the background, more often the slower the
/// machine, and those say nothing about replies.
fn wal_syncs(trace: &Path, tid: i32) -> usize {
    let prefix = format!("{tid} ");
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains("-wal>"))
        .count()
}

/// The thread id of the node's committer thread (named `perennial-committer`, which the
/// kernel cuts to 15 bytes). A new thread names itself once it first runs, which on a busy
/// machine may be a moment after the node listens.
fn committer_tid(node: Pid) -> i32 {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        let tasks = std::fs::read_dir(format!("/proc/{node}/task")).expect("/proc lists threads");
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == "perennial-commi"
                && let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok())
            {
                return tid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the node has no committer thread");
}

/// The process strace started: the node itself.
fn traced_child(strace: u32) -> Pid {
    let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
        .expect("/proc lists strace's children");
    let pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("strace started the node");
    Pid::from_raw(pid)
}

/// Kills the traced node if the test ends early, so no node outlives it.
struct TracedNode(Pid);

impl Drop for TracedNode {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
    }
}

/// Sequential calls each need their own WAL fsync before the reply; concurrent calls share
/// them (group commit). Runs the real binary under `strace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_acknowledged_call_waits_for_a_wal_fsync_and_concurrent_calls_share_them() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!(
            "SKIPPED each_acknowledged_call_waits_for_a_wal_fsync...: strace is not installed \
             (.ci/run installs it; on Debian: apt-get install strace)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.log");
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_perennial"));
    let node = Node::start_under(strace, &dir.path().join("data"));
    // Signals must go to the traced node, not to strace (which would detach and leave it).
    let traced = TracedNode(traced_child(node.child.id()));
    let committer = committer_tid(traced.0);
    let http = Http::new();

    let sequential = 40;
    let before = wal_syncs(&trace, committer);
    for i in 0..sequential {
        let (status, _) = http
            .post(node.addr, &format!("/v1/counter/s{i}"), r#"{"add": 1}"#)
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let after_sequential = wal_syncs(&trace, committer);
    let concurrent = 256;
    let calls: Vec<_> = (0..concurrent)
        .map(|i| {
            let http = http.clone();
            let addr = node.addr;
            tokio::spawn(async move {
                http.post(addr, &format!("/v1/counter/p{i}"), r#"{"add": 1}"#)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().0, 200);
    }
    let after_concurrent = wal_syncs(&trace, committer);
    kill(traced.0, Signal::SIGTERM).unwrap();
    let stopped = tokio::task::spawn_blocking(move || {
        let mut node = node;
        node.child.wait().map(|status| (status, node))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        stopped.0.success(),
        "strace or the node failed: {:?}",
        stopped.0
    );

    let per_sequential = after_sequential - before;
    let per_concurrent = after_concurrent - after_sequential;
    eprintln!(
        "WAL fsyncs: {per_sequential} for {sequential} sequential calls, \
         {per_concurrent} for {concurrent} concurrent calls"
    );
    assert!(
        per_sequential >= sequential,
        "{sequential} acknowledged calls, one at a time, but only {per_sequential} WAL fsyncs: \
         replies left before their commit was durable"
    );
    // Without group commit each call takes its own fsync (256 or more). Under strace, on two
    // cores shared with other tests, the calls arrive spread out and batches are small (74
    // fsyncs were seen once), so the bound leaves room for that and still catches its absence.
    assert!(
        per_concurrent < concurrent / 2,
        "{concurrent} concurrent calls took {per_concurrent} WAL fsyncs: no group commit"
    );
}
