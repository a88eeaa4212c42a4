//! The `postgres` workload: durable calls through the runtime on the PostgreSQL store, and
//! the database approach on the same server in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use perennial_storage_postgres::PostgresStore;

use crate::load::timed;
use crate::workloads::durable_calls;
use crate::{Options, Report};

/// Connections the database approach spreads its transactions over.
const BASELINE_CONNECTIONS: usize = 16;

/// Durable `add` calls through the runtime on PostgreSQL (in a schema of its own, dropped
/// afterwards), then the same calls as one PostgreSQL transaction each, on
/// 16 connections (PostgreSQL groups the flushes of concurrent commits
/// itself, so this is the baseline's good case).
pub async fn postgres(options: &Options) -> anyhow::Result<Report> {
    let url = server_url(options);
    let schema = format!("perennial_bench_{}", std::process::id());
    let mut store_options = perennial_storage_postgres::Options::default();
    store_options.schema = schema.clone();
    let store = PostgresStore::connect_with(&url, store_options).await?;
    let run = durable_calls(Arc::new(store), options).await;
    let baseline = database_approach(&url, &schema, options).await;
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await?;
    Ok(run?.report("postgres", options, &baseline?))
}

/// The server the PostgreSQL workloads use.
pub(crate) fn server_url(options: &Options) -> String {
    options
        .postgres
        .clone()
        .unwrap_or_else(|| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned())
}

/// `n` connections to the server at `url` whose tables are those of `schema` (created).
pub(crate) async fn connections_in(
    url: &str,
    schema: &str,
    n: usize,
) -> anyhow::Result<Vec<tokio_postgres::Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\""
            ))
            .await?;
        clients.push(client);
    }
    Ok(clients)
}

/// The database approach: one PostgreSQL transaction per call, in `schema` (created).
pub(crate) async fn database_approach(
    url: &str,
    schema: &str,
    options: &Options,
) -> anyhow::Result<crate::load::Measured> {
    let clients = connections_in(url, schema, BASELINE_CONNECTIONS).await?;
    clients[0]
        .batch_execute(
            "CREATE TABLE counters (id text PRIMARY KEY, state jsonb NOT NULL);
             INSERT INTO counters SELECT 'c' || i, '{\"value\": 1}' FROM generate_series(0, 9999) AS i",
        )
        .await?;
    let clients = Arc::new(clients);
    let next = Arc::new(AtomicUsize::new(0));
    let n = options.entities.min(10_000);
    timed(options.callers, options.duration, move |_, pick| {
        let clients = Arc::clone(&clients);
        let client = next.fetch_add(1, Ordering::Relaxed) % clients.len();
        let id = format!("c{}", pick.below(n));
        async move {
            // One statement, one transaction: read, add one, write back, commit (flushed).
            clients[client]
                .execute(
                    "UPDATE counters SET state = jsonb_build_object('value', (state->>'value')::bigint + 1)
                      WHERE id = $1",
                    &[&id],
                )
                .await?;
            Ok(())
        }
    })
    .await
}
