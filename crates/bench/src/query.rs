//! The `query` workload: finding entities by their state among a million stored ones, with
//! and without an index by the compared path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use perennial_storage::{Batch, Filter, Page, Path, StateWrite, Store};
use perennial_types::{EntityId, EntityKey, SHARDS, ShardId, shard_of};

use crate::workloads::scratch;
use crate::{Options, Report};

/// Entities stored.
const ENTITIES: usize = 1_000_000;
/// States per commit while storing them.
const BATCH: usize = 10_000;
/// Distinct owners: each owns `ENTITIES / OWNERS` entities.
const OWNERS: usize = 100_000;
/// Indexed queries timed.
const INDEXED_QUERIES: usize = 200;
/// Unindexed queries timed (each reads every state).
const SCANS: usize = 3;

/// Stores a million entities of kind `cart` with states `{"owner": "user-N", "items": […],
/// "total": N}`, then times `owner = 'user-N'` without an index (the baseline), builds an
/// index by `owner`, and times the same filter with it.
pub async fn query(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "query")?;
    let store = perennial_storage_sqlite::SqliteStore::open(&dir.path)?;
    let started = Instant::now();
    store_carts(&store, ENTITIES, |n| {
        format!(
            r#"{{"owner":"user-{}","items":[{{"sku":"sku-{}","qty":1}}],"total":{}}}"#,
            n % OWNERS,
            n % 977,
            n % 10_000
        )
    })
    .await?;
    // A clean close folds every state into the table, as on a node that ran a while.
    store.close().await?;
    let stored_secs = started.elapsed().as_secs_f64();
    let store = perennial_storage_sqlite::SqliteStore::open(&dir.path)?;

    let filter = |n: usize| Filter::parse(&format!("owner = 'user-{}'", n * 7919 % OWNERS));
    let mut scans = Vec::with_capacity(SCANS);
    for n in 0..SCANS {
        scans.push(timed(&store, &filter(n)?, ENTITIES / OWNERS).await?);
    }
    let started = Instant::now();
    store
        .catalog()
        .create_index("cart", &Path::parse("owner")?)
        .await?;
    let index_secs = started.elapsed().as_secs_f64();
    let mut indexed = Vec::with_capacity(INDEXED_QUERIES);
    for n in 0..INDEXED_QUERIES {
        indexed.push(timed(&store, &filter(n)?, ENTITIES / OWNERS).await?);
    }
    store.close().await?;
    let scan_us = median(&mut scans);
    let indexed_us = median(&mut indexed);
    Ok(Report::Query {
        entities: ENTITIES,
        matches: ENTITIES / OWNERS,
        stored_secs,
        index_secs,
        scan_p50_us: scan_us,
        indexed_p50_us: indexed_us,
        indexed_max_us: indexed.iter().copied().max().unwrap_or(0),
        speedup: scan_us as f64 / indexed_us.max(1) as f64,
    })
}

/// Commits `n` entities of kind `cart` (`cart-0000000`, …) with the states `state_of` makes
/// and schema version 1, in batches of 10,000, on a store that claims every shard.
pub(crate) async fn store_carts(
    store: &perennial_storage_sqlite::SqliteStore,
    n: usize,
    state_of: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    store_states(store, "cart", 0..n, |n| format!("cart-{n:07}"), state_of).await
}

/// Commits the entities `numbers` of `kind`, named by `id_of`, with the states `state_of`
/// makes and schema version 1, in batches of 10,000, on a store that claims every shard.
pub(crate) async fn store_states(
    store: &perennial_storage_sqlite::SqliteStore,
    kind: &'static str,
    numbers: std::ops::Range<usize>,
    id_of: impl Fn(usize) -> String,
    state_of: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let shards: Vec<ShardId> = (0..SHARDS).map(ShardId).collect();
    let epoch = store.claim("bench", &shards).await?;
    for chunk in numbers.collect::<Vec<_>>().chunks(BATCH) {
        let states = chunk
            .iter()
            .map(|&n| {
                let id = id_of(n);
                Ok(StateWrite {
                    shard: shard_of(kind, &id),
                    key: EntityKey::new(kind, EntityId::new(&id)?),
                    epoch,
                    state: Arc::from(state_of(n)),
                    version: 1,
                    schema: 1,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            store.commit(Batch {
                states,
                ..Batch::default()
            })
        })
        .await??;
    }
    Ok(())
}

/// Runs one query and checks it found what it should; returns its time in microseconds.
async fn timed(
    store: &perennial_storage_sqlite::SqliteStore,
    filter: &Filter,
    expected: usize,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let found = store
        .catalog()
        .query("cart", filter, Page::first(1000))
        .await?;
    let took = started.elapsed();
    anyhow::ensure!(
        found.len() == expected,
        "{filter:?} found {} entities, not {expected}",
        found.len()
    );
    Ok(micros(took))
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or(0)
}
