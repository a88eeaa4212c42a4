//! The web console in a real browser: headless Chromium (Debian's package) driven by
//! playwright-core (`e2e/`, installed with `npm ci --prefix e2e`) against the real binary.
//! Skipped, loudly, where either is missing, unless `PERENNIAL_REQUIRE_BROWSER` is set (as
//! `.ci/run` sets it, after installing both). With `PERENNIAL_SCREENSHOTS=DIR`, the script
//! saves a screenshot of each page there (`docs/screenshots/` holds the committed ones). The
//! console is driven over HTTPS (a certificate the test's own authority signed), so it is
//! known to work there; the poker page over plain HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::node::{Node, perennial};
use crate::probes::ADMIN;

fn e2e() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e")
}

/// Why the browser tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    if !chromium.exists() {
        return Some(format!(
            "no Chromium at {} (apt-get install chromium)",
            chromium.display()
        ));
    }
    if !e2e().join("node_modules/playwright-core").exists() {
        return Some("no playwright-core in e2e/node_modules (npm ci --prefix e2e)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on the PATH".into());
    }
    None
}

/// Whether to run: `false` (after saying why) where the browser is missing and not required.
fn browser_here() -> bool {
    let Some(why) = missing() else {
        return true;
    };
    assert!(
        std::env::var_os("PERENNIAL_REQUIRE_BROWSER").is_none(),
        "PERENNIAL_REQUIRE_BROWSER is set, but {why}"
    );
    eprintln!("SKIPPED: the browser tests need {why}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_finds_pauses_scrubs_and_retries_in_chromium() {
    if !browser_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    crate::cli::seed_dead_letters(&data).await;
    // Over HTTPS, with a certificate the test's own authority signed.
    let (ca, cert, key) = crate::tls::certificates(dir.path());
    let mut command = perennial();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("PERENNIAL_ADMIN_TOKEN", ADMIN);
    let node = Node::spawn(command);
    let url = format!("https://{}", node.addr);
    let call = |entity: &str, message: &str| {
        let out = perennial()
            .args(["call", entity, message, "--node", &url, "--ca"])
            .arg(&ca)
            .output()
            .expect("the binary runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    call("counter/c-small", r#"{"add": 3}"#);
    call("counter/c-big", r#"{"add": 500}"#);
    call(
        "probe/p1",
        r#"{"schedule": {"token": "later", "ms": 3600000}}"#,
    );
    for n in 0..20 {
        call("jprobe/j1", &format!(r#"{{"append": "t{n}"}}"#));
    }
    let mut args = vec![url.as_ref(), ADMIN.as_ref()];
    let shots = std::env::var_os("PERENNIAL_SCREENSHOTS");
    if let Some(shots) = &shots {
        args.push(shots.as_os_str());
    }
    script("console.mjs", &args, Some(&ca));
}

/// Runs the script `e2e/{name}` with `args`, its own HTTPS requests trusting the authority
/// `ca` if given; panics with what it said unless every check passed.
fn script(name: &str, args: &[&std::ffi::OsStr], ca: Option<&Path>) {
    let mut script = Command::new("node");
    script.arg(e2e().join(name)).args(args);
    if let Some(ca) = ca {
        script.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let out = script.output().expect("node runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.contains("every check passed"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_players_play_a_hand_in_chromium_and_it_survives_kill_9() {
    if !browser_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = |listen: &str| {
        let mut command = perennial();
        command.args(["serve", "--listen", listen, "--data"]);
        command.arg(&data);
        Node::spawn(command)
    };
    let node = start("127.0.0.1:0");
    let url = node.url();
    let state = dir.path().join("seen.json");
    let shots = std::env::var_os("PERENNIAL_SCREENSHOTS");
    let mut before = vec![url.as_ref(), "before".as_ref(), state.as_os_str()];
    if let Some(shots) = &shots {
        before.push(shots);
    }
    script("play.mjs", &before, None);
    // Mid-hand (the flop is dealt, a player is to act): kill -9, and start again.
    let addr = node.addr.to_string();
    node.kill9();
    let node = start(&addr);
    assert_eq!(node.url(), url);
    script(
        "play.mjs",
        &[url.as_ref(), "after".as_ref(), state.as_os_str()],
        None,
    );
}
