//! `perennial bench` workloads that run the binary itself as nodes and kill them, run small.

/// The large workload, with a few thousand entities: it restarts nodes killed with SIGKILL
/// under load and times each from its process' start to its first answered call.
#[test]
fn the_large_workload_times_restarts_after_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let output = crate::node::perennial()
        .args(["bench", "--json", "--only", "large", "--seconds", "1"])
        .args(["--callers", "8", "--large-entities", "2000", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line in {stdout}"));
    let crash = &report["after_kill_9"];
    let restart = crash["restart_to_first_call_ms"].as_f64().unwrap();
    assert!(restart > 0.0, "{report}");
    assert!(
        crash["restart_max_ms"].as_f64().unwrap() >= restart,
        "{report}"
    );
    assert!(
        crash["min_calls_before_kill"].as_u64().unwrap() > 0,
        "{report}"
    );
}
