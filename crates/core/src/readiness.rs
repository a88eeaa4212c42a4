//! [`Readiness`]: whether a node can serve calls now, for a load balancer or an orchestrator
//! (the gateway's `GET /readyz`), apart from whether it is alive at all.

use std::time::Duration;

use crate::Admin;

/// Whether a runtime can serve calls now: see [`Admin::readiness`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Readiness {
    /// Whether it can: it is not closing, it serves at least one shard, and its store
    /// answered a read in time.
    pub ready: bool,
    /// How many shards it serves now (all of them on a node alone; its leased ones in a
    /// cluster).
    pub shards: usize,
    /// Why it cannot, in words; `None` when it can.
    pub reason: Option<String>,
}

impl Admin {
    /// Whether this runtime can serve calls now: it is not closing (a node draining for a
    /// restart is not ready), it serves at least one shard (a cluster node that has not
    /// leased any yet is not), and its store answers a read within `within`. For readiness
    /// probes: a node that is not ready is alive, but should be sent no calls.
    ///
    /// ```
    /// # async fn example(rt: perennial_core::Runtime) {
    /// let readiness = rt.admin().readiness(std::time::Duration::from_secs(2)).await;
    /// if !readiness.ready {
    ///     eprintln!("not ready: {}", readiness.reason.unwrap_or_default());
    /// }
    /// # }
    /// ```
    pub async fn readiness(&self, within: Duration) -> Readiness {
        let engine = &self.rt.shared.engine;
        let shards = engine.shards.served().len();
        let not = |reason: String| Readiness {
            ready: false,
            shards,
            reason: Some(reason),
        };
        if engine.is_closing() {
            return not("the node is shutting down".into());
        }
        if shards == 0 {
            return not("the node serves no shard yet".into());
        }
        match tokio::time::timeout(within, engine.store.paused()).await {
            Err(_) => not(format!(
                "the store did not answer a read within {} ms",
                within.as_millis()
            )),
            Ok(Err(e)) => not(format!("the store cannot be read: {e}")),
            Ok(Ok(_)) => Readiness {
                ready: true,
                shards,
                reason: None,
            },
        }
    }
}
