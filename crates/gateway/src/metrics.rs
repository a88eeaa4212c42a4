//! `GET /metrics`: the node's metrics in the Prometheus text format.
//!
//! Recorded here: `perennial_calls` (a histogram of call latency in seconds, by kind and
//! outcome: `ok` or the error's code; calls to unknown kinds count under kind `unknown`).
//! Read from the runtime at each scrape ([`Runtime::stats`]): per kind, activations,
//! passivations, restarts (handler panics), dead letters and resident entities; for the
//! node, resident entities and bytes, calls in flight (accepted, queued or running, not yet
//! answered), paused entities, commits, steps committed, the steps per commit and the time a
//! commit takes to be durable (histograms), pending timers, messages and effects held in
//! memory and fired.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use perennial_core::{Plumbing, Runtime};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::AppState;

/// Call latency buckets, in seconds: 100 µs to 10 s.
const CALL_BOUNDS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    kind: String,
    outcome: String,
}

/// The gateway's metrics: its own recordings, and the runtime's counters read at each scrape.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Histogram>,
}

impl Metrics {
    pub(crate) fn shared(rt: Runtime) -> Arc<Self> {
        let mut registry = Registry::with_prefix("perennial");
        let calls =
            Family::<CallLabels, Histogram>::new_with_constructor(|| Histogram::new(CALL_BOUNDS));
        registry.register(
            "call_seconds",
            "Calls by kind and outcome, and how long they took",
            calls.clone(),
        );
        registry.register_collector(Box::new(RuntimeCollector { rt }));
        Arc::new(Self { registry, calls })
    }

    /// Records a call to `kind` that ended with `outcome` (`ok` or an error code).
    pub(crate) fn call(&self, kind: &str, outcome: &str, took: Duration) {
        let labels = CallLabels {
            kind: kind.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.calls
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Metrics in the Prometheus text format
#[utoipa::path(get, path = "/metrics", tag = "node",
    responses((status = 200, description = "OpenMetrics text",
        content_type = "application/openmetrics-text", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Reads one counter of a kind's stats.
type KindCounter = fn(&perennial_core::KindStats) -> u64;

/// The runtime's counters, read at each scrape.
#[derive(Debug)]
struct RuntimeCollector {
    rt: Runtime,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = self.rt.stats();
        let per_kind: [(&str, &str, KindCounter); 5] = [
            (
                "activations",
                "Entities activated (loaded or created)",
                |k| k.activations,
            ),
            ("passivations", "Entities passivated", |k| k.passivations),
            (
                "restarts",
                "Handler panics, each restarting its entity from its last state",
                |k| k.restarts,
            ),
            ("dead_letters", "Messages set aside as dead letters", |k| {
                k.dead_letters
            }),
            (
                "listener_dropped",
                "Committed changes a listener lost because its queue was full",
                |k| k.listener_dropped,
            ),
        ];
        for (name, help, value) in per_kind {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for k in &stats.kinds {
                let labels = KindLabel {
                    kind: k.kind.clone(),
                };
                ConstCounter::new(value(k)).encode(family.encode_family(&labels)?)?;
            }
        }
        let per_kind_gauges: [(&str, &str, KindCounter); 2] = [
            (
                "resident_entities",
                "Entities in memory now, by kind",
                |k| k.resident,
            ),
            (
                "listener_queued",
                "Committed changes waiting in listeners' queues now (their lag), by kind",
                |k| k.listener_queued,
            ),
        ];
        for (name, help, value) in per_kind_gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for k in &stats.kinds {
                let labels = KindLabel {
                    kind: k.kind.clone(),
                };
                let value = i64::try_from(value(k)).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, i64); 6] = [
            (
                "served_shards",
                "Shards this node serves now (all of them, outside a cluster)",
                Plumbing::of(&self.rt).served_shards().len() as i64,
            ),
            (
                "resident_bytes",
                "Bytes of resident entity state",
                stats.resident_bytes as i64,
            ),
            (
                "calls_in_flight",
                "Calls accepted and not yet answered (queued in mailboxes or running)",
                stats.inflight as i64,
            ),
            (
                "paused_entities",
                "Entities paused by an operator",
                self.rt.admin().paused().len() as i64,
            ),
            (
                "quarantined_entities",
                "Entities whose stored bytes cannot be read back, refused until released",
                stats.quarantined as i64,
            ),
            (
                "pending_in_memory",
                "Timers, messages and effects due soon, held in memory (the outbox backlog)",
                stats.pending_in_memory as i64,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        let counters: [(&str, &str, u64); 6] = [
            (
                "commits",
                "Batches committed (one fsync each)",
                stats.commit.commits,
            ),
            ("committed_steps", "Steps made durable", stats.commit.steps),
            (
                "fenced_writes",
                "Entities whose writes were refused because another node owns their shard now",
                stats.commit.fenced,
            ),
            (
                "pending_fired",
                "Timers, messages and effects applied, refused or dead-lettered",
                stats.pending_fired,
            ),
            (
                "effect_attempts_failed",
                "Effects' attempts that failed (an error, a panic or a timeout), retried or not",
                stats.effect_attempts_failed,
            ),
            (
                "effects_failed",
                "Effects that failed for good: their entity was sent the failure",
                stats.effects_failed,
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        for (name, help, h) in [
            (
                "commit_steps",
                "Steps per committed batch",
                &stats.commit.batch_steps,
            ),
            (
                "commit_durable_seconds",
                "How long a commit took to be durable (transaction and fsync)",
                &stats.commit.durable_seconds,
            ),
        ] {
            let mut buckets: Vec<(f64, u64)> = h
                .bounds
                .iter()
                .copied()
                .zip(h.counts.iter().copied())
                .collect();
            buckets.push((f64::MAX, h.counts.last().copied().unwrap_or(0)));
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum, h.count, &buckets, None,
            )?;
        }
        Ok(())
    }
}
