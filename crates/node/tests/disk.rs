//! Disk faults under load, checked by the history checker: the data directory's disk runs
//! full (a size-limited tmpfs), and the WAL's fsyncs fail with EIO (injected by strace).
//! Calls fail with a clear, typed error while the fault lasts, nothing is acknowledged
//! without being durable, and service resumes by itself when the fault ends.
//!
//! They need root (to mount) and strace; without them they skip loudly, unless
//! `PERENNIAL_REQUIRE_DISK_FAULTS=1` (set by `.ci/run`), which makes them fail instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::node::{Http, Node, start_with_admin};
use crate::probes::{ADMIN, Load};

/// Says why a test cannot run: a loud skip, or a failure where CI requires the test.
fn skip(test: &str, why: &str) {
    assert!(
        std::env::var_os("PERENNIAL_REQUIRE_DISK_FAULTS").is_none(),
        "{test} cannot run: {why} (PERENNIAL_REQUIRE_DISK_FAULTS is set)"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// A tmpfs of a fixed size, mounted on a fresh directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `size` (such as `24m`); `Err` says why it cannot (not root, say).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `file` until the disk has no room left; returns the bytes written.
fn fill(file: &Path) -> u64 {
    let mut out = std::fs::File::create(file).expect("the filler can be created");
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0;
    loop {
        match out.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // A last fsync makes sure the pages are allocated, not just cached.
    let _ = out.sync_all();
    written
}

fn probes() -> Vec<String> {
    (0..16)
        .map(|i| format!("{}/d{i}", if i % 2 == 0 { "probe" } else { "jprobe" }))
        .collect()
}

/// The disk runs full under load: calls get `507 storage_full` (nothing acknowledged is
/// lost, nothing refused is applied), the node stays up, and once space is freed the same
/// node serves again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_calls_clearly_and_service_resumes_when_space_returns() {
    let test = "a_full_disk_fails_calls_clearly_and_service_resumes_when_space_returns";
    let tmpfs = match Tmpfs::mount("48m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => return skip(test, &why),
    };
    let data = tmpfs.path().join("data");
    let mut node = start_with_admin(&data);
    let http = Http::new();
    let load = Load::start(&http, vec![node.addr], 16, probes(), true);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let filler = tmpfs.path().join("filler");
    let filled = fill(&filler);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the node died when the disk ran full"
    );
    std::fs::remove_file(&filler).unwrap();
    load.mark();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the node died after space came back"
    );
    let outcome = load.finish(&http, &[node.addr], "disk-full").await;
    let full = outcome.errors.get("507 storage_full").copied().unwrap_or(0);
    println!(
        "disk full ({} MiB filler): {}; errors {:?}; {} calls sent again",
        filled >> 20,
        outcome.report,
        outcome.errors,
        outcome.retries
    );
    assert!(full > 0, "no call saw the full disk: {:?}", outcome.errors);
    assert!(
        outcome.errors.keys().all(|e| e == "507 storage_full"),
        "other errors than storage_full: {:?}",
        outcome.errors
    );
    for (c, first) in outcome.firsts.iter().enumerate() {
        assert!(
            first.is_some(),
            "client {c} was never served after space came back"
        );
    }
    node.kill9();
}

/// The node started by strace: signals must go to it, not to strace.
fn traced_child(strace: u32) -> Pid {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Pid::from_raw(pid);
        }
        assert!(Instant::now() < deadline, "strace started no node");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the traced node whatever happens, so none outlives the test.
struct Traced(Pid);

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
    }
}

/// The WAL's fsyncs fail with EIO for a while (strace injects the error into the 300th to
/// the 1,100th): the batches fail, their calls get `503 storage_io` ("may or may not have
/// been applied": the clients send them again with their keys), and the node goes on
/// serving when fsyncs work again. Then the node is killed with SIGKILL and started again
/// without strace, so that the history is checked against what the disk holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsyncs_fail_calls_clearly_and_nothing_unsynced_is_acknowledged() {
    let test = "failed_fsyncs_fail_calls_clearly_and_nothing_unsynced_is_acknowledged";
    if Command::new("strace").arg("-V").output().is_err() {
        return skip(
            test,
            "strace is not installed (on Debian: apt-get install strace)",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let wal = data.join("perennial.db-wal");
    // Only the WAL's fsyncs (-P): the ones that make a commit durable.
    let mut command = Command::new("strace");
    command
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fsync,fdatasync",
            "-P",
        ])
        .arg(&wal)
        .args(["-e", "inject=fsync,fdatasync:error=EIO:when=300..1100"])
        .arg(env!("CARGO_BIN_EXE_perennial"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("PERENNIAL_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "warn");
    let node = Node::spawn(command);
    let traced = Traced(traced_child(node.child.id()));
    let http = Http::new();
    let load = Load::start(&http, vec![node.addr], 16, probes(), true);

    // Until the injection has come and gone: errors seen, then 300 ms without a new one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = load.error_count();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        } else if seen > 0 && quiet_since.elapsed() > Duration::from_millis(1500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the injected fsync errors never came and went ({seen} errors)"
        );
    }
    load.mark();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // What the disk holds, after a kill: nothing acknowledged may be missing from it.
    kill(traced.0, Signal::SIGKILL).unwrap();
    // It is strace's child, so not ours to wait for: wait until it is gone (or a zombie,
    // whose files, and so its lock on the data directory, are closed) before starting again.
    let status = format!("/proc/{}/status", traced.0);
    let gone = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&status).is_ok_and(|s| !s.contains("State:\tZ")) {
        assert!(Instant::now() < gone, "the killed node is still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(node);
    let node = start_with_admin(&data);
    load.set_live(vec![node.addr]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = load.finish(&http, &[node.addr], "fsync-eio").await;
    println!(
        "fsync EIO (WAL fsyncs 300 to 1,100 failed): {}; errors {:?}; {} calls sent again",
        outcome.report, outcome.errors, outcome.retries
    );
    let io = outcome.errors.get("503 storage_io").copied().unwrap_or(0);
    assert!(io > 0, "no call saw a failed fsync: {:?}", outcome.errors);
    assert!(
        outcome.errors.keys().all(|e| e == "503 storage_io"),
        "other errors than storage_io: {:?}",
        outcome.errors
    );
    for (c, first) in outcome.firsts.iter().enumerate() {
        assert!(
            first.is_some(),
            "client {c} was never served after the errors"
        );
    }
}
