//! `perennial serve`'s configuration: flags over `PERENNIAL_*` variables over the file over
//! the defaults, shown by `--print-config`; errors that name the key and the file; tokens
//! never printed; and a node that really runs on what the file says.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::node::{Node, perennial, stop};

/// `perennial serve --print-config` with `args` and `env`, run in `cwd`; its output parsed
/// as TOML.
fn print_config(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> toml::Table {
    let out = serve(cwd, env, &[args, &["--print-config"]].concat());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .parse()
        .unwrap_or_else(|e| panic!("not TOML: {e}\n{stdout}"))
}

fn serve(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    perennial()
        .current_dir(cwd)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

/// The stderr of a `serve` that must fail before doing anything. A `serve` that starts
/// instead is stopped after 10 s, and fails the test.
fn refused(cwd: &Path, args: &[&str]) -> String {
    let mut child = perennial()
        .current_dir(cwd)
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} was not refused: {stderr}"
    );
    assert!(out.stdout.is_empty());
    stderr
}

/// Without a file, variables or flags, `--print-config` shows every key's default (tokens,
/// unset, are left out).
#[test]
fn print_config_shows_the_defaults() {
    let cwd = tempfile::tempdir().unwrap();
    let config = print_config(cwd.path(), &[], &[]);
    let expected: toml::Table = r#"
        data = "./perennial-data"
        store_schema = "perennial"
        listen = "127.0.0.1:8080"
        insecure = false
        max_resident = 1000000
        max_resident_bytes = 1073741824
        max_body_bytes = 1048576
        request_timeout = "30s"
        lease = "5s"
        cluster_mtls = false
        backup_every = "1h"
        backup_keep = 24
        sqlite_readers = 2
    "#
    .parse()
    .unwrap();
    assert_eq!(config, expected);
}

/// Each key comes from the first of: flag, variable, file, default. The file is
/// `./perennial.toml` unless `PERENNIAL_CONFIG` or `--config` (which wins) names another.
#[test]
fn flags_beat_variables_beat_the_file_beat_the_defaults() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("perennial.toml"),
        r#"
            listen = "127.0.0.1:7001"
            max_resident = 11
            max_body_bytes = 12
            request_timeout = "2m"
            insecure = true
        "#,
    )
    .unwrap();
    let env = [
        ("PERENNIAL_LISTEN", "127.0.0.1:7002"),
        ("PERENNIAL_MAX_RESIDENT", "21"),
    ];
    let config = print_config(cwd.path(), &env, &["--listen", "127.0.0.1:7003"]);
    assert_eq!(config["listen"].as_str(), Some("127.0.0.1:7003"), "flag");
    assert_eq!(config["max_resident"].as_integer(), Some(21), "variable");
    assert_eq!(config["max_body_bytes"].as_integer(), Some(12), "file");
    assert_eq!(config["request_timeout"].as_str(), Some("2m"), "file");
    assert_eq!(config["insecure"].as_bool(), Some(true), "file");
    assert_eq!(
        config["max_resident_bytes"].as_integer(),
        Some(1 << 30),
        "default"
    );
    let config = print_config(cwd.path(), &env, &["--insecure=false"]);
    assert_eq!(
        config["listen"].as_str(),
        Some("127.0.0.1:7002"),
        "variable"
    );
    assert_eq!(config["insecure"].as_bool(), Some(false), "flag");

    // Another file, by variable and by flag; its relative data directory is relative to it.
    let other = tempfile::tempdir().unwrap();
    let by_variable = other.path().join("a.toml");
    std::fs::write(&by_variable, "max_resident = 31\ndata = \"d\"\n").unwrap();
    let by_flag = other.path().join("b.toml");
    std::fs::write(&by_flag, "max_resident = 41\n").unwrap();
    let variable = [("PERENNIAL_CONFIG", by_variable.to_str().unwrap())];
    let config = print_config(cwd.path(), &variable, &[]);
    assert_eq!(config["max_resident"].as_integer(), Some(31));
    assert_eq!(
        config["data"].as_str(),
        other.path().join("d").to_str(),
        "relative to the file"
    );
    assert_eq!(
        config["listen"].as_str(),
        Some("127.0.0.1:8080"),
        "only one file is read"
    );
    let config = print_config(
        cwd.path(),
        &variable,
        &["--config", by_flag.to_str().unwrap()],
    );
    assert_eq!(config["max_resident"].as_integer(), Some(41));
}

/// Tokens, from any layer, print as `"<set>"`; their values appear nowhere in the output.
#[test]
fn tokens_are_redacted() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("perennial.toml"),
        "admin_token = \"admin-secret-from-the-file\"\n",
    )
    .unwrap();
    let env = [("PERENNIAL_CLIENT_TOKEN", "client-secret-from-a-variable")];
    let flags = [
        "--print-config",
        "--cluster-secret",
        "cluster-secret-from-a-flag",
    ];
    let out = serve(cwd.path(), &env, &flags);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(!stdout.contains("-from-"), "{stdout}");
    let config: toml::Table = stdout.parse().unwrap();
    assert_eq!(config["admin_token"].as_str(), Some("<set>"));
    assert_eq!(config["client_token"].as_str(), Some("<set>"));
    assert_eq!(config["cluster_secret"].as_str(), Some("<set>"));
}

/// An unknown key, a value of the wrong type, a duration that is not one, and a file that
/// is not there are errors that name the file and the key.
#[test]
fn a_bad_file_is_refused_naming_the_key_and_the_file() {
    let cwd = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(cwd.path().join(name), text).unwrap();
        name.to_owned()
    };
    let file = write("typo.toml", "listen = \"127.0.0.1:0\"\nlisten_on = \"x\"\n");
    let stderr = refused(cwd.path(), &["--config", &file]);
    assert!(
        stderr.contains("typo.toml: line 2: unknown key `listen_on`"),
        "{stderr}"
    );
    assert!(stderr.contains("`listen`"), "the keys are listed: {stderr}");

    let file = write("type.toml", "max_resident = \"many\"\n");
    let stderr = refused(cwd.path(), &["--config", &file, "--print-config"]);
    assert!(
        stderr.contains("type.toml: line 1: `max_resident`: invalid type: string \"many\""),
        "{stderr}"
    );

    let file = write("time.toml", "\n\nrequest_timeout = \"soon\"\n");
    let stderr = refused(cwd.path(), &["--config", &file]);
    assert!(
        stderr.contains("time.toml: line 3: `request_timeout`: \"soon\" is not a duration"),
        "{stderr}"
    );

    let stderr = refused(cwd.path(), &["--config", "missing.toml"]);
    assert!(
        stderr.contains("cannot read the configuration file missing.toml"),
        "{stderr}"
    );

    // The default file is read too, and refused the same way.
    write("perennial.toml", "[server]\nlisten = \"x\"\n");
    let stderr = refused(cwd.path(), &[]);
    assert!(
        stderr.contains("perennial.toml: line 1: unknown key `server`"),
        "{stderr}"
    );
}

/// A bad value in a variable is refused, naming the variable (clap names only the flag).
#[test]
fn a_bad_variable_is_refused_naming_it() {
    let cwd = tempfile::tempdir().unwrap();
    let out = serve(cwd.path(), &[("PERENNIAL_LISTEN", "nowhere")], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("'nowhere'"), "{stderr}");
    assert!(
        stderr.contains("the value comes from PERENNIAL_LISTEN"),
        "{stderr}"
    );
}

/// A node runs on what its file says: address, data directory (relative to the file) and
/// admin token.
#[test]
fn a_node_serves_as_its_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\ndata = \"state\"\nadmin_token = \"admin-token-0123456789\"\n",
    )
    .unwrap();
    let mut command = perennial();
    command
        .current_dir(dir.path())
        .args(["serve", "--config"])
        .arg(&file);
    let node = Node::spawn(command);
    assert!(dir.path().join("state/perennial.db").exists());
    let out = perennial()
        .args(["entities", "counter", "--json", "--node"])
        .arg(node.url())
        .env("PERENNIAL_ADMIN_TOKEN", "admin-token-0123456789")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--sqlite-readers` sets how many threads read the embedded store; a count out of range is
/// refused.
#[test]
fn sqlite_readers_sets_the_store_s_reading_threads() {
    let readers = |node: &Node| {
        std::fs::read_dir(format!("/proc/{}/task", node.child.id()))
            .unwrap()
            .filter(|task| {
                let comm = std::fs::read_to_string(task.as_ref().unwrap().path().join("comm"));
                // Thread names are cut to 15 bytes: "perennial-sqlite-reader-N".
                comm.is_ok_and(|c| c.trim_end() == "perennial-sqlit")
            })
            .count()
    };
    let count = |extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut command = perennial();
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--data")
            .arg(dir.path());
        let node = Node::spawn(command);
        let n = readers(&node);
        stop(node);
        n
    };
    assert_eq!(count(&["--sqlite-readers", "5"]) - count(&[]), 3);
    let cwd = tempfile::tempdir().unwrap();
    let stderr = refused(cwd.path(), &["--sqlite-readers", "0"]);
    assert!(stderr.contains("--sqlite-readers"), "{stderr}");
}

/// A PostgreSQL store's password never shows, in a URL or in key=value form.
#[test]
fn a_store_password_is_redacted() {
    let cwd = tempfile::tempdir().unwrap();
    for (given, shown) in [
        (
            "postgres://app:s3cret@db.internal:5432/perennial",
            "postgres://app:<set>@db.internal:5432/perennial",
        ),
        (
            "host=db.internal user=app password=s3cret dbname=perennial",
            "host=db.internal user=app password=<set> dbname=perennial",
        ),
        (
            "postgres://app@db.internal/perennial",
            "postgres://app@db.internal/perennial",
        ),
    ] {
        let config = print_config(cwd.path(), &[], &["--store", given]);
        assert_eq!(config["store"].as_str(), Some(shown));
    }
}
