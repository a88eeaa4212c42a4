//! Cluster mode: several `perennial serve` processes on one PostgreSQL schema. A local
//! cluster runner (spawn, kill -9, SIGSTOP and SIGCONT, SIGTERM, restart) and the tests:
//! calls on any node reach the owner, kill -9 under load, a node stopped past its lease, a
//! graceful leave and join.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use perennial_checker::{Invocation, Op, Recorder, Type, check};
use perennial_storage_postgres::test_util::{self, Schema};
use perennial_types::{SHARDS, ShardId, shard_of};

use crate::node::{Http, Node, perennial, perennial_at};
use crate::probes::{ADMIN, CALL_TIMEOUT, Load};

pub(crate) const SECRET: &str = "test-cluster-secret";

/// N nodes named `n1`, `n2`, … on one schema of the machine's PostgreSQL.
pub(crate) struct LocalCluster {
    /// Node `n{i+1}` at index `i`; `None` once it was stopped or killed. Declared first, so
    /// the nodes are killed before the schema is dropped.
    nodes: Vec<Option<Node>>,
    url: String,
    /// The schema on the machine's server (dropped with the cluster); `None` on a server of
    /// the test's own, where the store's default schema is used.
    schema: Option<Schema>,
    lease: Duration,
    /// Variables every node is started with, beyond the cluster's own.
    env: Vec<(String, String)>,
    /// The binary of node `i`, where it is not this build's (see [`LocalCluster::set_binary`]).
    binaries: HashMap<usize, std::path::PathBuf>,
}

impl LocalCluster {
    /// Starts `n` nodes with leases of `lease`; `None` (after a loud skip) without PostgreSQL.
    pub(crate) async fn start(n: usize, lease: Duration) -> Option<LocalCluster> {
        Self::start_with(n, lease, &[]).await
    }

    /// [`start`](Self::start), every node with the variables `env` too.
    pub(crate) async fn start_with(
        n: usize,
        lease: Duration,
        env: &[(&str, &str)],
    ) -> Option<LocalCluster> {
        let schema = test_util::schema().await?;
        Some(Self::start_on(
            test_util::url(),
            Some(schema),
            n,
            lease,
            env,
        ))
    }

    /// `n` nodes on the store at `url` (in `schema`, or the store's default one), every node
    /// with the variables `env` too.
    pub(crate) fn start_on(
        url: String,
        schema: Option<Schema>,
        n: usize,
        lease: Duration,
        env: &[(&str, &str)],
    ) -> LocalCluster {
        let mut cluster = LocalCluster {
            url,
            schema,
            lease,
            nodes: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            binaries: HashMap::new(),
        };
        for i in 0..n {
            let node = cluster.spawn(i, None);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// The schema the nodes keep their tables in.
    fn schema_name(&self) -> &str {
        self.schema.as_ref().map_or("perennial", Schema::name)
    }

    /// Starts node `i`, its crash points armed with `failpoints`.
    fn spawn(&self, i: usize, failpoints: Option<&str>) -> Node {
        let mut command = match self.binaries.get(&i) {
            Some(binary) => perennial_at(binary),
            None => perennial(),
        };
        if let Some(failpoints) = failpoints {
            command.env("FAILPOINTS", failpoints);
        }
        command.args(["serve", "--listen", "127.0.0.1:0", "--store", &self.url]);
        command.args(["--store-schema", self.schema_name()]);
        command.args(["--node-id", &format!("n{}", i + 1)]);
        command.args(["--cluster-secret", SECRET]);
        command.args(["--lease", &format!("{}ms", self.lease.as_millis())]);
        command.env("PERENNIAL_ADMIN_TOKEN", ADMIN);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        Node::spawn(command)
    }

    /// Runs node `i` from `binary` when it next starts (`None`: this build).
    pub(crate) fn set_binary(&mut self, i: usize, binary: Option<std::path::PathBuf>) {
        match binary {
            Some(binary) => self.binaries.insert(i, binary),
            None => self.binaries.remove(&i),
        };
    }

    /// Starts node `i` again (or for the first time, past the last one).
    pub(crate) fn restart(&mut self, i: usize) {
        self.restart_armed(i, None);
    }

    /// Starts node `i` again, its crash points armed with `failpoints`.
    pub(crate) fn restart_armed(&mut self, i: usize, failpoints: Option<&str>) {
        let node = self.spawn(i, failpoints);
        if i >= self.nodes.len() {
            self.nodes.resize_with(i + 1, || None);
        }
        self.nodes[i] = Some(node);
    }

    pub(crate) fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("the node runs").addr
    }

    /// The addresses of the running nodes.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().flatten().map(|n| n.addr).collect()
    }

    pub(crate) fn kill9(&mut self, i: usize) {
        self.nodes[i].take().expect("the node runs").kill9();
    }

    /// Waits (at most `limit`) until node `i` exits on its own; whether it did.
    pub(crate) fn exited(&mut self, i: usize, limit: Duration) -> bool {
        let node = self.nodes[i].as_mut().expect("the node runs");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if node.child.try_wait().expect("the node is reaped").is_some() {
                self.nodes[i] = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM, and waits (at most 30 s) for the node to exit.
    pub(crate) fn stop(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("the node runs");
        kill(node.pid(), Signal::SIGTERM).expect("SIGTERM delivered");
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.child.try_wait().expect("the node is reaped").is_none() {
            assert!(Instant::now() < deadline, "n{} did not stop", i + 1);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn pause(&self, i: usize) {
        let node = self.nodes[i].as_ref().expect("the node runs");
        kill(node.pid(), Signal::SIGSTOP).expect("SIGSTOP delivered");
    }

    pub(crate) fn resume(&self, i: usize) {
        let node = self.nodes[i].as_ref().expect("the node runs");
        kill(node.pid(), Signal::SIGCONT).expect("SIGCONT delivered");
    }

    /// A value from node `i`'s `/metrics` (0 if absent).
    pub(crate) async fn metric(&self, http: &Http, i: usize, name: &str) -> f64 {
        let (status, text) = http
            .get_text(
                self.addr(i),
                "/metrics",
                &[("authorization", &format!("Bearer {ADMIN}"))],
            )
            .await
            .expect("the node answers");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|line| {
                let (metric, value) = line.split_once(' ')?;
                (metric == name).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Waits (at most 30 s) until every running node serves some shards and together they
    /// serve all of them.
    pub(crate) async fn settled(&self, http: &Http) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut served = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.is_some() {
                    served.push(self.metric(http, i, "perennial_served_shards").await);
                }
            }
            let total: f64 = served.iter().sum();
            if served.iter().all(|&s| s > 0.0) && total == f64::from(SHARDS) {
                return;
            }
            assert!(Instant::now() < deadline, "shards served: {served:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Probe paths (`probe/ID`), `per_node` of them on each running node's shards (so that
    /// every node's failure touches some).
    pub(crate) async fn probes(&self, per_node: usize) -> Vec<String> {
        let owners = self.owners().await;
        let nodes = self.nodes.iter().filter(|n| n.is_some()).count();
        let mut taken: HashMap<&str, usize> = HashMap::new();
        let mut probes = Vec::new();
        for n in 0.. {
            if probes.len() == per_node * nodes {
                break;
            }
            let id = format!("q{n}");
            let owner = owners[&shard_of("probe", &id)].as_str();
            let count = taken.entry(owner).or_default();
            if *count < per_node {
                *count += 1;
                probes.push(format!("probe/{id}"));
            }
        }
        probes
    }

    /// The cluster's store, as a node sees it.
    async fn store(&self) -> perennial_storage_postgres::PostgresStore {
        let mut options = perennial_storage_postgres::Options::default();
        options.schema = self.schema_name().to_owned();
        perennial_storage_postgres::PostgresStore::connect_with(&self.url, options)
            .await
            .expect("the store connects")
    }

    /// Asserts that no timer, message, ask or effect is left in storage.
    async fn assert_no_row_left(&self) {
        let left = perennial_storage::Store::due(&self.store().await, i64::MAX, 100)
            .await
            .expect("the rows are read");
        assert!(left.is_empty(), "rows left: {left:?}");
    }

    /// Who holds each leased shard, from the database.
    pub(crate) async fn owners(&self) -> HashMap<ShardId, String> {
        perennial_storage::Directory::owners(&self.store().await)
            .await
            .expect("owners")
            .into_iter()
            .collect()
    }
}

/// Calls sent to any node reach the one owner of each entity: counters called on every node
/// in turn count every call once, and each node serves about a third of the shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_every_node_reach_the_owner() {
    let Some(cluster) = LocalCluster::start(3, Duration::from_secs(2)).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    for round in 1..=3_i64 {
        for c in 0..30 {
            let addr = cluster.addr(usize::try_from((c + round) % 3).unwrap());
            let (status, body) = http
                .post(addr, &format!("/v1/counter/r{c}"), r#"{"add": 1}"#)
                .await
                .unwrap();
            assert_eq!(
                (status, body["value"].as_i64()),
                (200, Some(round)),
                "{body}"
            );
        }
    }
    let owners = cluster.owners().await;
    assert_eq!(owners.len(), SHARDS as usize, "every shard is leased");
    for node in ["n1", "n2", "n3"] {
        let held = owners.values().filter(|o| *o == node).count();
        assert!(held > 200, "{node} holds {held} shards");
    }
    // Each node shows the members and their shards to operators.
    let bearer = format!("Bearer {ADMIN}");
    let (status, view) = http
        .send(
            cluster.addr(1),
            "GET",
            "/v1/admin/cluster",
            &[("authorization", &bearer)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["node"], "n2");
    let members = view["members"].as_array().unwrap();
    let names: Vec<&str> = members.iter().filter_map(|m| m["node"].as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    let total: u64 = members.iter().filter_map(|m| m["shards"].as_u64()).sum();
    assert_eq!(total, u64::from(SHARDS));
    assert_eq!(view["served_shards"], members[1]["shards"]);
    let url = format!("http://{}", cluster.addr(2));
    let out = tokio::task::spawn_blocking(move || {
        perennial()
            .args(["cluster", "--node", &url, "--token", ADMIN])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("n3 (this node)") && table.contains("n1"),
        "{table}"
    );
    // Operators may ask any node to pause, resume or passivate an entity: the owner does it.
    let (p, p_owner) = (0..30)
        .map(|c| (c, &owners[&shard_of("counter", &format!("r{c}"))]))
        .find(|(_, owner)| *owner != "n1")
        .expect("a counter n1 does not own");
    let others: Vec<usize> = (0..3)
        .filter(|&i| format!("n{}", i + 1) != *p_owner)
        .collect();
    let admin = |i: usize, action: &'static str| {
        let (http, bearer) = (http.clone(), bearer.clone());
        let addr = cluster.addr(i);
        async move {
            let path = format!("/v1/admin/entities/counter/r{p}/{action}");
            http.send(addr, "POST", &path, &[("authorization", &bearer)], "")
                .await
                .unwrap()
        }
    };
    let (status, body) = admin(others[0], "pause").await;
    assert_eq!(
        (status, &body),
        (200, &serde_json::json!({"paused": true, "changed": true}))
    );
    let (status, body) = http
        .post(
            cluster.addr(others[1]),
            &format!("/v1/counter/r{p}"),
            r#"{"add": 1}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("paused"))
    );
    let (status, body) = admin(others[1], "resume").await;
    assert_eq!(
        (status, &body),
        (200, &serde_json::json!({"paused": false, "changed": true}))
    );
    crate::node::post_to(
        &http,
        cluster.addr(others[0]),
        &format!("/v1/counter/r{p}"),
        r#"{"add": 1}"#,
    )
    .await;
    // It is resident on its owner only: `not_resident` would mean another node answered.
    let (status, body) = admin(others[0], "passivate").await;
    let outcome = body["outcome"].as_str();
    assert!(
        status == 200 && matches!(outcome, Some("passivated" | "busy")),
        "{body}"
    );
    // A deletion asked of another node is carried out by the owner, and the next call,
    // through yet another node, starts the counter afresh.
    let path = format!("/v1/admin/entities/counter/r{p}");
    let (status, body) = http
        .send(
            cluster.addr(others[1]),
            "DELETE",
            &path,
            &[("authorization", &bearer)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], true);
    let (status, body) = http
        .send(
            cluster.addr(others[0]),
            "GET",
            &path,
            &[("authorization", &bearer)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 404, "deleted on its owner: {body}");
    let body = crate::node::post_to(
        &http,
        cluster.addr(others[1]),
        &format!("/v1/counter/r{p}"),
        r#"{"add": 1}"#,
    )
    .await;
    assert_eq!(body["value"], 1, "a new life");
    // A watch asked of another node is sent to the owner's.
    let (c, owner) = (0..30)
        .map(|c| (c, &owners[&shard_of("counter", &format!("r{c}"))]))
        .find(|(_, owner)| *owner != "n1")
        .expect("a counter n1 does not own");
    let (status, location) = http
        .location(cluster.addr(0), &format!("/v1/counter/r{c}/watch"))
        .await
        .unwrap();
    let owner_addr = cluster.addr(owner[1..].parse::<usize>().unwrap() - 1);
    assert_eq!(status, 307);
    assert_eq!(
        location.as_deref(),
        Some(format!("http://{owner_addr}/v1/counter/r{c}/watch").as_str())
    );
    // Errors are the owner's, whatever node took the call.
    let (status, body) = http
        .post(cluster.addr(0), "/v1/counter/r1", r#"{"add": "x"}"#)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_message"))
    );
    // The internal route wants the cluster secret.
    let (status, _) = http
        .send(cluster.addr(0), "POST", "/internal/v1/calls", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 401);
}

/// Who is calling crosses nodes: a call forwarded to the owner carries the caller its first
/// node verified, so the poker table refuses a player acting as another on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_forwarded_to_the_node_that_serves_the_entity() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("caller.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let key = key.to_str().unwrap();
    let env = [("PERENNIAL_CALLER_KEY", key)];
    let Some(cluster) = LocalCluster::start_with(2, Duration::from_secs(2), &env).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    let key = key.to_owned();
    let alice = tokio::task::spawn_blocking(move || {
        let out = perennial()
            .args([
                "caller-token",
                "--key",
                &key,
                "--subject",
                "alice",
                "--ttl",
                "10m",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .await
    .unwrap();
    let bearer = format!("Bearer {alice}");
    let as_alice = [("authorization", bearer.as_str())];
    let join = |player: &str| format!(r#"{{"join": {{"player": "{player}", "chips": 100}}}}"#);
    for t in 0..8 {
        let path = format!("/v1/table/t{t}");
        // Both nodes take each table's calls: one of them forwards them.
        let (first, second) = (cluster.addr(t % 2), cluster.addr((t + 1) % 2));
        let (status, body) = http.post(first, &path, &join("alice")).await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
        for addr in [first, second] {
            let (status, body) = http
                .send(addr, "POST", &path, &as_alice, &join("bob"))
                .await
                .unwrap();
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (403, Some("not_you"))
            );
        }
        let (status, body) = http
            .send(second, "POST", &path, &as_alice, &join("alice"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let (status, view) = http
            .send(first, "POST", &path, &as_alice, r#""view""#)
            .await
            .unwrap();
        assert_eq!(
            (status, view["seats"][0]["player"].as_str()),
            (200, Some("alice"))
        );
    }
}

/// Transfers between counters that live on different nodes: the message row of the sender's
/// node is carried to the target's node and applied there once; no row is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_between_entities_on_different_nodes_arrive_once() {
    let Some(cluster) = LocalCluster::start(3, Duration::from_secs(2)).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    let n = 12_i64;
    for c in 0..n {
        let addr = cluster.addr(usize::try_from(c % 3).unwrap());
        crate::node::post_to(&http, addr, &format!("/v1/counter/t{c}"), r#"{"add": 100}"#).await;
    }
    let owners = cluster.owners().await;
    let node_of = |c: i64| owners[&shard_of("counter", &format!("t{c}"))].clone();
    assert!(
        (0..n).any(|c| node_of(c) != node_of((c + 1) % n)),
        "some transfer crosses nodes"
    );
    for c in 0..n {
        let body = format!(
            r#"{{"transfer": {{"to": "t{}", "amount": {}}}}}"#,
            (c + 1) % n,
            c + 1
        );
        let addr = cluster.addr(usize::try_from((c + 1) % 3).unwrap());
        crate::node::post_to(&http, addr, &format!("/v1/counter/t{c}"), &body).await;
    }
    // Counter c gave c + 1 and received c (from c - 1; t0 received n from t(n-1)).
    let expected = |c: i64| 100 - (c + 1) + if c == 0 { n } else { c };
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in 0..n {
        loop {
            let value = http.counter(cluster.addr(0), &format!("t{c}")).await;
            if value == expected(c) {
                break;
            }
            // Receipts only add, so a value over the expected one means one arrived twice.
            assert!(
                value < expected(c),
                "t{c} = {value}: a transfer arrived twice"
            );
            assert!(
                Instant::now() < deadline,
                "t{c} = {value}, expected {}",
                expected(c)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster.assert_no_row_left().await;
}

/// Carts check out against inventories spread over three nodes, and one node is killed
/// (kill -9) while the asks are on their way: its shards move, every ask is applied once by
/// its inventory and answered once to its cart, and no row is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_across_nodes_are_answered_once_across_a_kill_9() {
    let lease = Duration::from_secs(2);
    let Some(mut cluster) = LocalCluster::start(3, lease).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    let (carts, skus) = (24_usize, 6_usize);
    for s in 0..skus {
        let addr = cluster.addr(s % 3);
        let path = format!("/v1/inventory/s{s}");
        crate::node::post_to(&http, addr, &path, r#"{"restock": 100}"#).await;
    }
    for c in 0..carts {
        let addr = cluster.addr(c % 3);
        for s in [c % skus, (c + 1) % skus] {
            let line = format!(r#"{{"add": {{"sku": "s{s}", "qty": 1, "cents": 100}}}}"#);
            crate::node::post_to(&http, addr, &format!("/v1/cart/c{c}"), &line).await;
        }
    }
    let owners = cluster.owners().await;
    assert!(
        (0..carts).any(|c| owners[&shard_of("cart", &format!("c{c}"))]
            != owners[&shard_of("inventory", &format!("s{}", c % skus))]),
        "some ask crosses nodes"
    );
    for c in 0..carts {
        let addr = cluster.addr(c % 3);
        crate::node::post_to(&http, addr, &format!("/v1/cart/c{c}"), r#""checkout""#).await;
    }
    cluster.kill9(1);
    let deadline = Instant::now() + lease + Duration::from_secs(30);
    let addr = cluster.addr(0);
    for c in 0..carts {
        loop {
            let (status, cart) = http
                .post(addr, &format!("/v1/cart/c{c}"), r#""view""#)
                .await
                .unwrap();
            if status == 200 && cart["cart"]["checkout"]["status"] == "reserved" {
                break;
            }
            assert!(Instant::now() < deadline, "c{c}: {status} {cart}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for s in 0..skus {
        let stock =
            crate::node::post_to(&http, addr, &format!("/v1/inventory/s{s}"), r#""view""#).await;
        let reserved = stock["reserved"].as_object().unwrap();
        assert_eq!(reserved.len(), carts * 2 / skus, "s{s}: {stock}");
        assert!(
            reserved.values().all(|n| n == 1),
            "s{s}: reserved once per cart: {stock}"
        );
        assert_eq!(stock["available"], 100 - carts * 2 / skus, "s{s}: {stock}");
    }
    cluster.assert_no_row_left().await;
}

/// kill -9 of a node under load: its leases expire, the others take its shards, the clients'
/// calls (sent again with their idempotency keys) all succeed, and the checker finds nothing
/// lost, doubled, reordered or split. Prints how long the killed node's probes were
/// unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_under_load_loses_nothing() {
    let lease = Duration::from_secs(2);
    let Some(mut cluster) = LocalCluster::start(3, lease).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    let probes = cluster.probes(4).await;
    let clients = 24;
    let load = Load::start(&http, cluster.addrs(), clients, probes.clone(), true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The clients whose probe n2 serves.
    let owners = cluster.owners().await;
    let victims: Vec<usize> = (0..clients)
        .filter(|c| {
            let id = probes[c % probes.len()].trim_start_matches("probe/");
            owners[&shard_of("probe", id)] == "n2"
        })
        .collect();
    cluster.kill9(1);
    load.mark();
    load.set_live(cluster.addrs());
    tokio::time::sleep(lease + Duration::from_secs(4)).await;
    let outcome = load.finish(&http, &cluster.addrs(), "kill_9").await;
    let worst = victims
        .iter()
        .map(|&c| {
            outcome.firsts[c].unwrap_or_else(|| panic!("client {c} never answered after the kill"))
        })
        .max()
        .unwrap_or_default();
    println!(
        "kill -9 of n2 (lease {lease:?}): {}; {} calls sent again; the probes of n2 all \
         answered again after {worst:?}",
        outcome.report, outcome.retries
    );
    assert!(!victims.is_empty());
    assert!(
        outcome.acked.iter().all(|&a| a > 0),
        "every client made progress: {:?}",
        outcome.acked
    );
}

/// A node that crashes right after renewing its leases (crash point `cluster.renewed`):
/// the others wait for the leases to expire, take its shards, and the checker finds nothing
/// lost, doubled, reordered or split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_crashes_right_after_renewing_its_leases_loses_nothing() {
    let lease = Duration::from_secs(2);
    let Some(mut cluster) = LocalCluster::start(2, lease).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    let probes = cluster.probes(6).await;
    // n2 again, armed to crash after its sixth renewal (ticks are a fifth of the lease).
    cluster.kill9(1);
    cluster.restart_armed(1, Some("cluster.renewed=5*off->return"));
    cluster.settled(&http).await;
    let load = Load::start(&http, cluster.addrs(), 16, probes, true);
    assert!(
        cluster.exited(1, Duration::from_secs(30)),
        "n2 never crashed at cluster.renewed"
    );
    load.mark();
    load.set_live(cluster.addrs());
    tokio::time::sleep(lease + Duration::from_secs(2)).await;
    cluster.restart(1);
    cluster.settled(&http).await;
    load.set_live(cluster.addrs());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let outcome = load
        .finish(&http, &cluster.addrs(), "cluster_renewed")
        .await;
    println!(
        "crash of n2 right after a lease renewal (lease {lease:?}): {}; {} calls sent again",
        outcome.report, outcome.retries
    );
    assert!(outcome.retries > 0, "the crash hit no call in flight");
}

/// A node stopped (SIGSTOP) past its lease: the others take its shards; when it resumes, the
/// steps it had computed are refused by the fence (counted: the test fails if none were
/// attempted), it stops serving, and it rejoins. The checker finds nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_past_its_lease_finds_its_writes_refused_and_rejoins() {
    let lease = Duration::from_millis(1500);
    let Some(mut cluster) = LocalCluster::start(2, lease).await else {
        return;
    };
    // n1's commits each wait 200 ms before their transaction, so that when n1 stops, a batch
    // of many entities' steps is on its way to storage: n1 writes it when it resumes.
    cluster.kill9(0);
    cluster.restart_armed(0, Some("commit.before=sleep(200)"));
    let http = Http::new();
    cluster.settled(&http).await;
    // Many short lists and many clients, all calling n1. Each probe has two clients: one
    // gives up on n1 after 5 s and sends its call again to n2, which writes newer states
    // while n1 is stopped; the other waits for n1.
    let probes = cluster.probes(12).await;
    let mut timeouts = vec![CALL_TIMEOUT; probes.len()];
    timeouts.extend(vec![Duration::from_secs(30); probes.len()]);
    let load = Load::start_with(&http, vec![cluster.addr(0)], timeouts, probes, true);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.pause(0);
    load.set_live(vec![cluster.addr(1)]);
    // n1's lease expires and n2 takes its shards (its stuck transaction, if any, is ended by
    // the server after 2 s); the stop outlasts the impatient clients' timeout.
    tokio::time::sleep(lease + Duration::from_secs(5)).await;
    cluster.resume(0);
    load.set_live(cluster.addrs());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = cluster
        .metric(&http, 0, "perennial_fenced_writes_total")
        .await;
    // n1 rejoins: n2 hands its shards back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.metric(&http, 0, "perennial_served_shards").await == 0.0 {
        assert!(Instant::now() < deadline, "n1 never served shards again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.settled(&http).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = load.finish(&http, &cluster.addrs(), "sigstop").await;
    println!(
        "SIGSTOP of n1 past its lease: {refused} writes refused after SIGCONT; {}; {} calls \
         sent again",
        outcome.report, outcome.retries
    );
    assert!(
        refused > 0.0,
        "n1 attempted no write after it lost its shards"
    );
}

/// The history of issue 19, made deterministic: n1 holds probes in memory and is stopped
/// (SIGSTOP) past its lease; n2 takes its shards and acknowledges appends; n2 is killed and
/// its leases expire; n1 resumes and, in its first tick, takes the shards back under newer
/// epochs, without ever having seen them lost. A read through n1 must hold n2's appends
/// (the checker's `stale`), never answer from the states n1 kept in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_takes_its_shards_back_after_a_stop_reads_what_others_wrote() {
    let lease = Duration::from_millis(1500);
    let Some(mut cluster) = LocalCluster::start(2, lease).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    let owners = cluster.owners().await;
    let probes: Vec<String> = cluster
        .probes(8)
        .await
        .into_iter()
        .filter(|p| owners[&shard_of("probe", p.trim_start_matches("probe/"))] == "n1")
        .collect();
    assert_eq!(probes.len(), 8);
    let history = Recorder::new();
    let call = |addr: SocketAddr, probe: &str, token: Option<String>| {
        let (history, http) = (&history, &http);
        let probe = probe.to_owned();
        async move {
            let f = if token.is_some() {
                Op::Append
            } else {
                Op::Read
            };
            let body = match &token {
                Some(token) => format!(r#"{{"append": "{token}"}}"#),
                None => r#""read""#.to_owned(),
            };
            let invoked = history.invoke(Invocation {
                process: 0,
                f,
                entity: probe.clone(),
                token: token.clone(),
                to: None,
                ms: None,
                key: token.clone(),
            });
            let path = format!("/v1/{probe}");
            match http
                .post_with_key(addr, &path, token.as_deref(), &body)
                .await
            {
                Ok((200, list)) => {
                    let list: Vec<String> = serde_json::from_value(list).expect("a list");
                    history.complete(invoked, Type::Ok, Some(list));
                }
                outcome => {
                    history.complete(invoked, Type::Info, None);
                    panic!("{probe}: {outcome:?}");
                }
            }
        }
    };
    for probe in &probes {
        call(cluster.addr(0), probe, Some(format!("{probe}-a"))).await;
    }
    cluster.pause(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served(&http, cluster.addr(1)).await < f64::from(SHARDS) {
        assert!(Instant::now() < deadline, "n2 never took n1's shards");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for probe in &probes {
        call(cluster.addr(1), probe, Some(format!("{probe}-b"))).await;
    }
    cluster.kill9(1);
    // n2's leases expire; n1, still stopped, has not seen any of this.
    tokio::time::sleep(lease + Duration::from_millis(700)).await;
    cluster.resume(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served(&http, cluster.addr(0)).await < f64::from(SHARDS) {
        assert!(Instant::now() < deadline, "n1 never took the shards back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for probe in &probes {
        call(cluster.addr(0), probe, None).await;
    }
    // The final lists, from storage.
    let (status, body) = http
        .send(
            cluster.addr(0),
            "POST",
            "/v1/admin/kinds/probe/passivate",
            &[("authorization", &format!("Bearer {ADMIN}"))],
            "",
        )
        .await
        .expect("n1 answers");
    assert_eq!(status, 200, "{body}");
    let mut finals = BTreeMap::new();
    for probe in &probes {
        let (status, list) = http
            .post(cluster.addr(0), &format!("/v1/{probe}"), r#""read""#)
            .await
            .expect("n1 answers");
        assert_eq!(status, 200, "{list}");
        let list: Vec<String> = serde_json::from_value(list).expect("a list");
        assert_eq!(list, [format!("{probe}-a"), format!("{probe}-b")]);
        finals.insert(probe.clone(), list);
    }
    let report = check(&history.events(), &finals);
    println!("n1 took its shards back after SIGSTOP, n2 killed: {report}");
    assert!(report.is_valid(), "{report}");
    assert_eq!(report.reads, probes.len());
}

/// The node's `perennial_served_shards`, or 0 if it does not answer.
async fn served(http: &Http, addr: SocketAddr) -> f64 {
    crate::probes::metric(http, addr, "perennial_served_shards")
        .await
        .unwrap_or(0.0)
}

/// A node leaves gracefully (SIGTERM) and another joins, under load: no call fails (they
/// are sent without retries, to a node that stays), the shards move by handoff, and the
/// checker finds nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_and_join_fail_no_call() {
    let Some(mut cluster) = LocalCluster::start(3, Duration::from_secs(2)).await else {
        return;
    };
    let http = Http::new();
    cluster.settled(&http).await;
    let probes = cluster.probes(3).await;
    let load = Load::start(&http, vec![cluster.addr(0)], 16, probes, false);
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.stop(2);
    cluster.settled(&http).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(3);
    cluster.settled(&http).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let outcome = load.finish(&http, &cluster.addrs(), "leave_and_join").await;
    assert_eq!(outcome.retries, 0, "a call failed");
    let owners = cluster.owners().await;
    assert!(owners.values().all(|o| o != "n3"), "n3 left");
    assert!(owners.values().any(|o| o == "n4"), "n4 joined");
    println!(
        "graceful leave of n3 and join of n4: {}; none failed",
        outcome.report
    );
}
