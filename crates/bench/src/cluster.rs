//! The `cluster` workload: durable calls through 1 and 3 nodes that share PostgreSQL, over
//! HTTP, against the database approach on the same server in the same run; then the time a
//! killed node's entities take to answer again.
//!
//! The nodes are real processes (the binary running the bench, as `perennial serve`), so
//! that kill -9 is real. Everything shares the machine: the nodes, PostgreSQL and the load
//! generator compete for the same cores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use perennial_storage::Store;
use perennial_storage_postgres::PostgresStore;
use perennial_types::{SHARDS, shard_of};
use serde::Serialize;

use crate::load::timed;
use crate::node::{self, Http, Node, add};
use crate::postgres::{database_approach, server_url};
use crate::{Options, Report};

/// The lease the nodes run with: a killed node's shards are taken this long after its last
/// renewal.
const LEASE: Duration = Duration::from_secs(2);
/// kill -9 trials for the failover time.
const TRIALS: usize = 3;

/// Calls through one size of cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRun {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Durable calls per second, over HTTP, spread over every node.
    pub calls_per_sec: f64,
    /// Median latency of a call, in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: u64,
    /// `calls_per_sec` over the database approach's.
    pub ratio: f64,
}

/// Nodes of one cluster, killed when dropped.
struct Nodes {
    binary: PathBuf,
    children: Vec<Option<Node>>,
    addrs: Vec<SocketAddr>,
    url: String,
    schema: String,
}

impl Nodes {
    fn start(binary: &Path, url: &str, schema: &str, n: usize) -> anyhow::Result<Nodes> {
        let mut nodes = Nodes {
            binary: binary.to_path_buf(),
            children: Vec::new(),
            addrs: Vec::new(),
            url: url.to_owned(),
            schema: schema.to_owned(),
        };
        for i in 0..n {
            let node = nodes.spawn(i)?;
            nodes.addrs.push(node.addr);
            nodes.children.push(Some(node));
        }
        Ok(nodes)
    }

    fn spawn(&self, i: usize) -> anyhow::Result<Node> {
        Node::start(
            &self.binary,
            &[
                "--store",
                &self.url,
                "--store-schema",
                &self.schema,
                "--node-id",
                &format!("n{}", i + 1),
                "--cluster-secret",
                "bench-cluster-secret",
                "--lease",
                &format!("{}ms", LEASE.as_millis()),
            ],
        )
    }

    fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        match self.children[i].take() {
            Some(node) => node.kill9(),
            None => Ok(()),
        }
    }

    fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.spawn(i)?;
        self.addrs[i] = node.addr;
        self.children[i] = Some(node);
        Ok(())
    }

    fn live(&self) -> Vec<SocketAddr> {
        self.children
            .iter()
            .zip(&self.addrs)
            .filter(|(c, _)| c.is_some())
            .map(|(_, a)| *a)
            .collect()
    }

    /// Waits until the live nodes serve every shard between them, each some.
    async fn settled(&self, http: &Http) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut served = Vec::new();
            for addr in self.live() {
                served.push(served_shards(http, addr).await.unwrap_or(0));
            }
            if served.iter().all(|&s| s > 0) && served.iter().sum::<u64>() == u64::from(SHARDS) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "shards served: {served:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn served_shards(http: &Http, addr: SocketAddr) -> anyhow::Result<u64> {
    let request =
        hyper::Request::get(format!("http://{addr}/metrics")).body(Full::new(Bytes::new()))?;
    let body = http.request(request).await?.into_body().collect().await?;
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("perennial_served_shards "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Durable calls through 1 and 3 nodes, the database approach, and failover times.
pub async fn cluster(options: &Options) -> anyhow::Result<Report> {
    let binary = options
        .node_binary
        .as_deref()
        .context("the cluster workload runs nodes: it needs the perennial binary")?;
    let url = server_url(options);
    let http = node::http(options.callers);
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let mut runs = Vec::new();
    let mut failover_ms = Vec::new();
    let baseline_schema = format!("perennial_bench_db_{}", std::process::id());
    let baseline = async {
        let direct = database_approach(&url, &baseline_schema, options).await?;
        let service = database_service(&url, &baseline_schema).await?;
        let served = calls(&http, &[service], options).await?;
        anyhow::Ok((direct, served))
    }
    .await;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{baseline_schema}\" CASCADE"
        ))
        .await?;
    let (direct, baseline) = baseline?;
    for n in [1, 3] {
        let schema = format!("perennial_bench_cluster_{}_{n}", std::process::id());
        let result = async {
            let mut nodes = Nodes::start(binary, &url, &schema, n)?;
            nodes.settled(&http).await?;
            let measured = calls(&http, &nodes.live(), options).await?;
            runs.push(ClusterRun {
                nodes: n,
                calls_per_sec: measured.per_sec(),
                p50_us: measured.p50_us(),
                p99_us: measured.p99_us(),
                ratio: measured.per_sec() / baseline.per_sec(),
            });
            if n == 3 {
                for _ in 0..TRIALS {
                    failover_ms.push(failover(&http, &mut nodes).await?);
                }
            }
            anyhow::Ok(())
        }
        .await;
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await?;
        result?;
    }
    Ok(Report::Cluster {
        entities: options.entities,
        callers: options.callers,
        runs,
        baseline_calls_per_sec: baseline.per_sec(),
        baseline_p50_us: baseline.p50_us(),
        baseline_p99_us: baseline.p99_us(),
        direct_calls_per_sec: direct.per_sec(),
        lease_ms: u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX),
        failover_ms,
    })
}

/// `options.callers` callers adding to `options.entities` counters, each caller to one of
/// `addrs` in turn; the counters are made first.
async fn calls(
    http: &Http,
    addrs: &[SocketAddr],
    options: &Options,
) -> anyhow::Result<crate::load::Measured> {
    let addrs = Arc::new(addrs.to_vec());
    let entities = options.entities;
    crate::load::each(entities, options.callers, {
        let (http, addrs) = (http.clone(), Arc::clone(&addrs));
        move |i| {
            let (http, addr) = (http.clone(), addrs[i % addrs.len()]);
            async move {
                anyhow::ensure!(add(&http, addr, &format!("c{i}")).await?, "a call failed");
                Ok(())
            }
        }
    })
    .await?;
    let http = http.clone();
    timed(options.callers, options.duration, move |caller, pick| {
        let addr = addrs[caller % addrs.len()];
        let id = format!("c{}", pick.below(entities));
        let http = http.clone();
        async move {
            anyhow::ensure!(add(&http, addr, &id).await?, "a call failed");
            Ok(())
        }
    })
    .await
}

/// Kills node 2 with SIGKILL and measures how long until every one of 32 counters it served
/// answers again through node 1; then restarts it. In milliseconds.
async fn failover(http: &Http, nodes: &mut Nodes) -> anyhow::Result<u64> {
    let mut store_options = perennial_storage_postgres::Options::default();
    store_options.schema = nodes.schema.clone();
    let store = PostgresStore::connect_with(&nodes.url, store_options).await?;
    let owners: std::collections::HashMap<_, _> = perennial_storage::Directory::owners(&store)
        .await?
        .into_iter()
        .collect();
    let probes: Vec<String> = (0..)
        .map(|i| format!("probe{i}"))
        .filter(|id| owners.get(&shard_of("counter", id)).map(String::as_str) == Some("n2"))
        .take(32)
        .collect();
    for id in &probes {
        anyhow::ensure!(add(http, nodes.addrs[1], id).await?, "a probe failed");
    }
    let survivor = nodes.addrs[0];
    nodes.kill9(1)?;
    let killed = Instant::now();
    let mut waiting = probes;
    while !waiting.is_empty() {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "no failover in 60 s"
        );
        let mut still = Vec::new();
        for id in waiting {
            let call = tokio::time::timeout(Duration::from_millis(500), add(http, survivor, &id));
            if !matches!(call.await, Ok(Ok(true))) {
                still.push(id);
            }
        }
        waiting = still;
    }
    let took = u64::try_from(killed.elapsed().as_millis()).unwrap_or(u64::MAX);
    store.close().await?;
    nodes.restart(1)?;
    nodes.settled(http).await?;
    Ok(took)
}

/// The database approach as a service: an HTTP server (in this process) whose handler runs
/// each call as one PostgreSQL transaction on a pool of 16 connections, on the table
/// [`database_approach`] made. Returns its address.
async fn database_service(url: &str, schema: &str) -> anyhow::Result<SocketAddr> {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;

    let mut clients = Vec::new();
    for _ in 0..16 {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await?;
        clients.push(client);
    }
    let clients = Arc::new((clients, std::sync::atomic::AtomicUsize::new(0)));
    type Pool = Arc<(Vec<tokio_postgres::Client>, std::sync::atomic::AtomicUsize)>;
    async fn add(
        State(pool): State<Pool>,
        Path(id): Path<String>,
        body: Bytes,
    ) -> Result<String, StatusCode> {
        let message: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
        let amount = message["add"].as_i64().ok_or(StatusCode::BAD_REQUEST)?;
        let n = pool.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % pool.0.len();
        // One statement, one transaction: read, add, write back, commit (flushed).
        let row = pool.0[n]
            .query_one(
                "INSERT INTO counters (id, state) VALUES ($1, jsonb_build_object('value', $2::bigint))
                 ON CONFLICT (id) DO UPDATE
                   SET state = jsonb_build_object('value', (counters.state->>'value')::bigint + $2)
                 RETURNING state::text",
                &[&id, &amount],
            )
            .await
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
        Ok(row.get(0))
    }
    let app = axum::Router::new()
        .route("/v1/counter/{id}", axum::routing::post(add))
        .with_state(clients);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
