//! A rolling upgrade, proven with two builds: three nodes of the previous release (the
//! commit in `.ci/previous-release`, built by `.ci/run`) serve a cluster on one PostgreSQL
//! schema under load; each is stopped (SIGTERM) and replaced by this build's, one at a time,
//! so that for a while both builds serve side by side and call each other; the history
//! checker finds nothing lost, applied twice, reordered or stale, and the new nodes show
//! which build each member runs.
//!
//! The previous release's binary is `PERENNIAL_PREVIOUS_BINARY`; without it the test says so
//! and passes, except in CI (`CI=true`), where it fails.

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::LocalCluster;
use crate::node::Http;
use crate::probes::{ADMIN, Load};

fn previous_release() -> Option<PathBuf> {
    match std::env::var_os("PERENNIAL_PREVIOUS_BINARY") {
        Some(binary) => {
            let binary = PathBuf::from(binary);
            assert!(binary.is_file(), "{} is not a file", binary.display());
            Some(binary)
        }
        None => {
            let why = "PERENNIAL_PREVIOUS_BINARY (a `perennial` built from the commit in \
                       .ci/previous-release) is not set";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}; .ci/run builds it"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_replaced_one_by_one_by_a_new_build_lose_nothing() {
    let Some(previous) = previous_release() else {
        return;
    };
    let Some(mut cluster) = LocalCluster::start(0, Duration::from_secs(2)).await else {
        return;
    };
    for i in 0..3 {
        cluster.set_binary(i, Some(previous.clone()));
        cluster.restart(i);
    }
    let http = Http::new();
    cluster.settled(&http).await;
    let probes = cluster.probes(3).await;
    let load = Load::start(&http, cluster.addrs(), 16, probes, true);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 0..3 {
        cluster.stop(i);
        load.set_live(cluster.addrs());
        cluster.set_binary(i, None);
        cluster.restart(i);
        cluster.settled(&http).await;
        load.set_live(cluster.addrs());
        // Both builds serve side by side (until the last one is replaced), calls cross
        // between them, and the new nodes show each member's build.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let builds = builds(&http, &cluster, i).await;
        let new = builds.iter().filter(|b| !b.is_empty()).count();
        assert_eq!(new, i + 1, "the members' builds: {builds:?}");
        assert!(
            builds.iter().all(|b| b.is_empty() || b.starts_with("0.")),
            "{builds:?}"
        );
    }
    let outcome = load
        .finish(&http, &cluster.addrs(), "rolling_upgrade")
        .await;
    println!(
        "three nodes of the previous release replaced one by one: {}; {} calls sent again; \
         errors {:?}",
        outcome.report, outcome.retries, outcome.errors
    );
    assert!(
        outcome.acked.iter().all(|&a| a > 0),
        "every client made progress: {:?}",
        outcome.acked
    );
}

/// The build of each member, as node `i` (of this build) shows them, in name order; empty for
/// the previous release's nodes, which do not say.
async fn builds(http: &Http, cluster: &LocalCluster, i: usize) -> Vec<String> {
    let bearer = format!("Bearer {ADMIN}");
    let (status, view) = http
        .send(
            cluster.addr(i),
            "GET",
            "/v1/admin/cluster",
            &[("authorization", &bearer)],
            "",
        )
        .await
        .expect("the node answers");
    assert_eq!(status, 200, "{view}");
    view["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["build"].as_str().unwrap_or_default().to_owned())
        .collect()
}
