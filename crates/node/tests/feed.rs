//! A kind's change feed followed over HTTP while nodes die: a follower that reconnects from
//! the last cursor it got (as an `EventSource` does with `Last-Event-ID`) gets every
//! committed change once, each entity's in order, across kill -9 of the node it follows, on
//! one node (SQLite) and in a cluster (PostgreSQL).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use parking_lot::Mutex;

use crate::cluster::LocalCluster;
use crate::node::{Http, Node};

/// What a follower has received: (cursor, cart, version, lines in the state after).
type Received = Arc<Mutex<Vec<(u64, String, u64, usize)>>>;

/// Follows `/v1/cart/changes` on whichever of `addrs` answers, from the last cursor received,
/// until `stop` is set; reconnects when the stream breaks.
async fn follow(
    http: Http,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    got: Received,
    stop: Arc<Mutex<bool>>,
) {
    let mut text = String::new();
    'connect: while !*stop.lock() {
        let cursor = got.lock().last().map_or(0, |c| c.0);
        let candidates = addrs.lock().clone();
        for addr in candidates {
            let Ok(mut body) = http
                .stream(addr, &format!("/v1/cart/changes?after={cursor}"))
                .await
            else {
                continue;
            };
            text.clear();
            loop {
                if *stop.lock() {
                    return;
                }
                let frame =
                    match tokio::time::timeout(Duration::from_millis(300), body.frame()).await {
                        Err(_) => continue,
                        Ok(Some(Ok(frame))) => frame,
                        Ok(_) => continue 'connect,
                    };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                text.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = text.find("\n\n") {
                    let event: String = text.drain(..end + 2).collect();
                    let field = |name: &str| {
                        event
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(str::to_owned)
                    };
                    let (Some(id), Some(data)) = (field("id: "), field("data: ")) else {
                        continue;
                    };
                    let change: serde_json::Value = serde_json::from_str(&data).unwrap();
                    let lines = change["state"]["lines"].as_array().map_or(0, Vec::len);
                    got.lock().push((
                        id.parse().unwrap(),
                        change["id"].as_str().unwrap().to_owned(),
                        change["version"].as_u64().unwrap(),
                        lines,
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a follower on `addrs` (see [`follow`]); returns what it receives, the switch that
/// stops it, and its task.
fn start_following(
    http: &Http,
    addrs: &Arc<Mutex<Vec<SocketAddr>>>,
) -> (Received, Arc<Mutex<bool>>, tokio::task::JoinHandle<()>) {
    let (got, stop): (Received, _) = (Arc::default(), Arc::new(Mutex::new(false)));
    let task = tokio::spawn(follow(
        http.clone(),
        Arc::clone(addrs),
        Arc::clone(&got),
        Arc::clone(&stop),
    ));
    (got, stop, task)
}

/// Adds line `sku` to cart `cart` through `addrs` (trying each), with an idempotency key, until
/// one answers 200 (at most 20 s); whether it was acknowledged.
async fn add(http: &Http, addrs: &[SocketAddr], cart: &str, sku: &str) -> bool {
    let body = format!(r#"{{"add": {{"sku": "{sku}", "qty": 1, "cents": 100}}}}"#);
    let key = format!("{cart}-{sku}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for addr in addrs {
            if let Ok((200, _)) = http
                .post_with_key(*addr, &format!("/v1/cart/{cart}"), Some(&key), &body)
                .await
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Checks what the follower got: cursors increase, each cart's versions are 1, 2, … once
/// each, every acknowledged line is there (each add is a new line, so a state's line count
/// is its version), and nothing was applied twice.
fn check(got: &[(u64, String, u64, usize)], acked: &BTreeMap<String, u64>) {
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "cursors increase: {got:?}"
    );
    for (cart, acked) in acked {
        let versions: Vec<(u64, usize)> = got
            .iter()
            .filter(|(_, c, _, _)| c == cart)
            .map(|(_, _, v, lines)| (*v, *lines))
            .collect();
        let expected: Vec<(u64, usize)> = (1..=versions.len() as u64)
            .map(|v| (v, usize::try_from(v).unwrap()))
            .collect();
        assert_eq!(versions, expected, "{cart}: every step once, in order");
        assert!(
            versions.len() as u64 >= *acked,
            "{cart}: {acked} acknowledged, {} in the feed",
            versions.len()
        );
    }
}

/// Waits until the follower has `at_least` changes (at most 30 s).
async fn caught_up(got: &Received, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().len() < at_least {
        assert!(
            Instant::now() < deadline,
            "the follower has {} of {at_least}",
            got.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_misses_no_change_across_kill_9_of_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    let addrs = Arc::new(Mutex::new(vec![node.addr]));
    let (got, stop, follower) = start_following(&http, &addrs);
    let mut acked = BTreeMap::new();
    for round in 0..6 {
        for c in 0..4 {
            let cart = format!("k{c}");
            assert!(add(&http, &[node.addr], &cart, &format!("s{round}")).await);
            *acked.entry(cart).or_insert(0) += 1;
        }
    }
    caught_up(&got, 24).await;
    node.kill9();
    let node = Node::start(dir.path());
    *addrs.lock() = vec![node.addr];
    for round in 6..10 {
        for c in 0..4 {
            let cart = format!("k{c}");
            assert!(add(&http, &[node.addr], &cart, &format!("s{round}")).await);
            *acked.entry(cart).or_insert(0) += 1;
        }
    }
    caught_up(&got, 40).await;
    *stop.lock() = true;
    follower.await.unwrap();
    check(&got.lock(), &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_misses_no_change_across_a_node_failover() {
    let Some(mut cluster) = LocalCluster::start(3, Duration::from_secs(2)).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    // The follower starts on n2, which dies; then it follows n1 or n3.
    let addrs = Arc::new(Mutex::new(vec![
        cluster.addr(1),
        cluster.addr(0),
        cluster.addr(2),
    ]));
    let (got, stop, follower) = start_following(&http, &addrs);
    let writers = [cluster.addr(0), cluster.addr(2)];
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..8 {
        if round == 4 {
            cluster.kill9(1);
        }
        let adds: Vec<_> = (0..9)
            .map(|c| {
                let http = http.clone();
                tokio::spawn(async move {
                    let cart = format!("k{c}");
                    let ok = add(&http, &writers, &cart, &format!("s{round}")).await;
                    (cart, ok)
                })
            })
            .collect();
        for add in adds {
            let (cart, ok) = add.await.unwrap();
            assert!(ok, "{cart} was not acknowledged within 20 s");
            *acked.entry(cart).or_insert(0) += 1;
        }
    }
    caught_up(&got, 72).await;
    *stop.lock() = true;
    follower.await.unwrap();
    let got = got.lock();
    check(&got, &acked);
    eprintln!("{} changes followed across the failover", got.len());
}
