//! The `latency` workload: durable calls offered at a fixed rate (open loop), at half of the
//! highest rate the same setup sustains, in process and over HTTP.
//!
//! A closed-loop generator (each caller sends its next call when its last one returned)
//! stops sending while the system stalls, so its percentiles leave the stall out
//! (coordinated omission). Here call `i` is due at `start + i / rate`, whatever happened
//! before it, and its latency runs from when it was due, not from when it was sent: a stall
//! counts against every call it held up, and so does any lateness of the generator itself.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use perennial_core::Runtime;
use perennial_demo::Counter;
use perennial_storage::Store;
use perennial_storage_sqlite::SqliteStore;
use serde::Serialize;

use crate::load::{each, timed};
use crate::workloads::{add_one, handles, scratch};
use crate::{Options, Report};

/// The shortest time the pacer sleeps between two batches of calls. A call due meanwhile
/// goes at the next wake-up, and the wait counts in its latency (at most this much more).
const PACER_QUANTUM: Duration = Duration::from_micros(100);

/// One open-loop run: what was offered, and how long calls took from when each was due.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// `in_process` (the Rust API) or `http` (the gateway, over loopback).
    pub api: &'static str,
    /// Calls per second the same setup sustained closed loop, with every caller busy.
    pub max_calls_per_sec: f64,
    /// Calls per second offered: half of the maximum.
    pub rate: f64,
    /// Calls offered (and all answered).
    pub calls: usize,
    /// Median latency from when a call was due, in microseconds.
    pub p50_us: u64,
    /// 99th percentile, in microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, in microseconds.
    pub p999_us: u64,
    /// The slowest call, in microseconds.
    pub max_us: u64,
    /// Batches committed during the open-loop run.
    pub commits: u64,
    /// Of those, how many took more than 5 ms to be durable (the store's transaction, its
    /// fsync and the writer's chores): a call waiting behind one of them waits that long.
    pub commits_over_5_ms: u64,
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// Open-loop latency of durable calls to counters on SQLite, through the runtime and through
/// the gateway on a loopback port, the load generator on the same cores.
pub async fn latency(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "latency")?;
    let store = Arc::new(SqliteStore::open(&dir.path)?);
    let rt = Runtime::builder()
        .store(Arc::clone(&store) as Arc<dyn Store>)
        .register_snapshot::<Counter>()
        .start()
        .await?;
    let n = options.entities.max(1);
    let counters = handles(&rt, n);
    let warm = Arc::clone(&counters);
    each(n, options.callers, move |i| add_one(warm[i].clone())).await?;

    let calls = Arc::clone(&counters);
    let in_process = run("in_process", &rt, options, move |i| {
        add_one(calls[i % n].clone())
    })
    .await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(perennial_gateway::serve(
        listener,
        rt.clone(),
        perennial_gateway::Options::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(options.callers.max(64) * 2)
        .build(connector);
    // As many connections as the closed loop had callers: a call waits for one (that wait
    // counts in its latency), instead of opening connections without bound during a stall.
    let connections = Arc::new(tokio::sync::Semaphore::new(options.callers.max(1)));
    let over_http = run("http", &rt, options, move |i| {
        let (http, connections) = (http.clone(), Arc::clone(&connections));
        async move {
            let _connection = connections.acquire_owned().await?;
            post_add(http, addr, format!("c{}", i % n)).await
        }
    })
    .await;
    let _ = stop.send(());
    server.await??;
    rt.shutdown().await;
    store.close().await?;
    Ok(Report::Latency {
        entities: n,
        callers: options.callers,
        runs: vec![in_process, over_http?],
    })
}

/// Finds the closed-loop maximum of `call` with every caller busy (for half the workload's
/// time), then offers half of it open loop for the whole time.
async fn run<F, Fut>(
    api: &'static str,
    rt: &Runtime,
    options: &Options,
    call: F,
) -> anyhow::Result<LatencyRun>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let call = Arc::new(call);
    let closed = Arc::clone(&call);
    let max = timed(options.callers, options.duration / 2, move |_, pick| {
        closed(pick.below(usize::MAX >> 1))
    })
    .await?
    .per_sec();
    let rate = max / 2.0;
    let before = rt.stats().commit;
    let latency = open_loop(rate, options.duration, move |i| call(i)).await?;
    let after = rt.stats().commit;
    Ok(LatencyRun {
        api,
        max_calls_per_sec: max,
        rate,
        calls: usize::try_from(latency.len()).unwrap_or(usize::MAX),
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
        max_us: latency.max(),
        commits: after.commits - before.commits,
        commits_over_5_ms: slower_than(&after.durable_seconds, 0.005)
            - slower_than(&before.durable_seconds, 0.005),
    })
}

/// How many values of `histogram` fell in buckets above `bound` (one of its bounds).
fn slower_than(histogram: &perennial_core::Histogram, bound: f64) -> u64 {
    let above = histogram.bounds.iter().take_while(|&&b| b <= bound).count();
    histogram.counts.iter().skip(above).sum()
}

/// Offers `call(i)` at `rate` per second for `duration`, call `i` due at `start + i / rate`,
/// and returns each call's latency from when it was due, in microseconds. Fails if a call
/// failed.
///
/// The runtime's timers round every wake-up to a millisecond, far coarser than the gaps
/// between calls, so a thread of its own paces the calls: it sleeps until the next call is
/// due, or for [`PACER_QUANTUM`] if that is sooner (the kernel wakes it a few tens of
/// microseconds late), and hands the runtime every call due by then in one task. Each call
/// records its own latency as it ends.
pub(crate) async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    call: F,
) -> anyhow::Result<Histogram<u64>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    anyhow::ensure!(
        rate.is_finite() && rate >= 1.0,
        "cannot offer {rate} calls/s"
    );
    let total = (rate * duration.as_secs_f64()).ceil() as usize;
    anyhow::ensure!(total > 0, "no call to offer in {duration:?}");
    let gap = Duration::from_secs_f64(1.0 / rate);
    let outcome = Arc::new(Outcome {
        latency: Mutex::new(crate::load::histogram()?),
        failed: Mutex::new(None),
        remaining: AtomicUsize::new(total),
        finished: tokio::sync::Notify::new(),
    });
    let all_done = outcome.finished.notified();
    let call = Arc::new(call);
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(10);
    let recorder = Arc::clone(&outcome);
    let pacer = std::thread::Builder::new()
        .name("perennial-bench-pacer".into())
        .spawn(move || {
            let mut next = 0;
            let mut woke = Instant::now();
            while next < total {
                // At most one wake-up per `PACER_QUANTUM`: waking for every call would take
                // the pacer a fifth of a core from the runtime it measures.
                let due = (start + gap.mul_f64(next as f64)).max(woke + PACER_QUANTUM);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                woke = Instant::now();
                // Every call due by now, in one task: one wake-up of the runtime per batch,
                // not per call. Each call is then a task of its own, spawned from inside.
                let now = Instant::now();
                let mut batch = Vec::new();
                while next < total {
                    let due = start + gap.mul_f64(next as f64);
                    if due > now {
                        break;
                    }
                    batch.push((next, due));
                    next += 1;
                }
                let (call, recorder) = (Arc::clone(&call), Arc::clone(&recorder));
                runtime.spawn(async move {
                    for (i, due) in batch {
                        let (call, recorder) = (call(i), Arc::clone(&recorder));
                        tokio::spawn(async move {
                            let result = call.await;
                            recorder.record(due, result);
                        });
                    }
                });
            }
        })?;
    all_done.await;
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let failed = outcome.failed.lock().take();
    match failed {
        Some(e) => Err(e.context("a call offered open loop failed")),
        None => Ok(outcome.latency.lock().clone()),
    }
}

/// What the calls of one open-loop run recorded as each ended.
struct Outcome {
    latency: Mutex<Histogram<u64>>,
    failed: Mutex<Option<anyhow::Error>>,
    /// Calls not ended yet.
    remaining: AtomicUsize,
    /// Notified when the last call ends.
    finished: tokio::sync::Notify,
}

impl Outcome {
    fn record(&self, due: Instant, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.latency.lock().saturating_record(us.max(1));
            }
            Err(e) => {
                self.failed.lock().get_or_insert(e);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finished.notify_one();
        }
    }
}

/// Adds one to counter `id` through the gateway at `addr`.
///
/// The client sets `TCP_NODELAY`, as browsers and curl do: without it, a request whose head
/// and body leave in two segments waits for the server's delayed acknowledgement (40 ms).
async fn post_add(http: Http, addr: SocketAddr, id: String) -> anyhow::Result<()> {
    let request = hyper::Request::post(format!("http://{addr}/v1/counter/{id}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"add": 1}"#)))?;
    let response = http.request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    anyhow::ensure!(status.is_success(), "the gateway answered {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stall holds up every call due during it, and the latencies say so: calls are not
    /// held back until the stall ends (as a closed loop's would be).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stall_counts_against_every_call_due_during_it() {
        let stalled_until = Instant::now() + Duration::from_millis(300);
        let latency = open_loop(1_000.0, Duration::from_millis(400), move |_| async move {
            tokio::time::sleep_until(stalled_until.into()).await;
            anyhow::Ok(())
        })
        .await
        .unwrap();
        assert_eq!(latency.len(), 400, "every call is offered and answered");
        // About 290 calls fall due during the stall; the median waits about 150 ms.
        let p50 = latency.value_at_quantile(0.5);
        assert!(p50 >= 50_000, "median {p50} µs: the stall was left out");
        assert!(
            latency.max() >= 250_000,
            "the first call waited the stall out"
        );
    }

    /// The whole workload, small: both APIs run, every offered call is answered, and the
    /// percentiles come in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_workload_runs_in_process_and_over_http() {
        let options = Options {
            duration: Duration::from_millis(400),
            entities: 50,
            callers: 8,
            ..Options::default()
        };
        let Report::Latency { runs, .. } = latency(&options).await.unwrap() else {
            panic!("not a latency report");
        };
        let apis: Vec<&str> = runs.iter().map(|r| r.api).collect();
        assert_eq!(apis, ["in_process", "http"]);
        for r in &runs {
            assert!((r.rate - r.max_calls_per_sec / 2.0).abs() < 1e-6, "{r:?}");
            let offered = (r.rate * 0.4).ceil() as usize;
            assert_eq!(r.calls, offered, "every offered call answered: {r:?}");
            assert!(
                r.p50_us <= r.p99_us && r.p99_us <= r.p999_us && r.p999_us <= r.max_us,
                "{r:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_call_fails_the_run() {
        let outcome = open_loop(1_000.0, Duration::from_millis(20), |i| async move {
            anyhow::ensure!(i != 7, "call 7 fails");
            Ok(())
        })
        .await;
        assert!(outcome.is_err());
    }
}
