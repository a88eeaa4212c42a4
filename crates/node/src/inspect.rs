//! `perennial inspect`: kinds, entities, states and histories of a data directory, as tables
//! or JSON. Listing, stored states and histories need no types (they are JSON); replaying a
//! `Journal` entity to its latest or a past step uses the demo kinds' code, on a read-only
//! runtime, and needs the node stopped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use perennial_core::{HistoryEntry, Runtime};
use perennial_storage::{Error as StoreError, Store};

use perennial_storage_sqlite::{Inspector, SqliteStore};
use serde_json::{Value, json};

use crate::output::{self, table, time_ms, time_us};
use crate::progress::Delayed;

/// What to show, and of which data directory: `perennial inspect`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Query {
    /// The data directory.
    #[arg(long, default_value = "./perennial-data")]
    pub(crate) data: PathBuf,
    /// A kind: list its entities.
    pub(crate) kind: Option<String>,
    /// An entity of that kind: show its state.
    pub(crate) id: Option<String>,
    /// Show the entity's history (its journal) instead of its state.
    #[arg(long, requires = "id", conflicts_with = "at")]
    pub(crate) history: bool,
    /// Show the entity's state as of this step, by replay.
    #[arg(long, requires = "id")]
    pub(crate) at: Option<u64>,
    /// With `--history`: start after this step.
    #[arg(long, default_value_t = 0)]
    pub(crate) after: u64,
    /// The most rows shown.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run(q: Query) -> anyhow::Result<()> {
    let data = q.data.as_path();
    // Counting or listing a large kind, or a long replay, can take a while: say so if it does.
    let spinner = Delayed::new(
        format!("reading {}", data.display()),
        Duration::from_millis(300),
        !q.json,
    );
    let inspector = Inspector::open(data)
        .with_context(|| format!("cannot read the data directory {}", data.display()))?;
    let out = match (&q.kind, &q.id) {
        (None, _) => kinds(&inspector, q.json)?,
        (Some(kind), None) => entities(&inspector, kind, &q)?,
        (Some(kind), Some(id)) if q.history => history(&inspector, kind, id, &q)?,
        (Some(kind), Some(id)) => state(data, &inspector, kind, id, &q).await?,
    };
    drop(spinner);
    output::answer(&out);
    Ok(())
}

fn kinds(inspector: &Inspector, as_json: bool) -> anyhow::Result<String> {
    let kinds = inspector.kinds()?;
    if as_json {
        return Ok(serde_json::to_string_pretty(&kinds)?);
    }
    let rows = kinds
        .iter()
        .map(|k| {
            vec![
                k.kind.clone(),
                k.entities.to_string(),
                k.journal_entries.to_string(),
            ]
        })
        .collect();
    Ok(table(&["KIND", "ENTITIES", "JOURNAL ENTRIES"], rows))
}

fn entities(inspector: &Inspector, kind: &str, q: &Query) -> anyhow::Result<String> {
    let entities = inspector.entities(kind, None, q.limit)?;
    if q.json {
        return Ok(serde_json::to_string_pretty(&entities)?);
    }
    let rows = entities
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                e.state_version.to_string(),
                e.last_step.to_string(),
                time_ms(e.updated_at_ms),
            ]
        })
        .collect();
    Ok(table(&["ID", "STATE AT", "LAST STEP", "UPDATED"], rows))
}

fn history(inspector: &Inspector, kind: &str, id: &str, q: &Query) -> anyhow::Result<String> {
    let entries = inspector.history(kind, id, q.after, q.limit)?;
    let history = entries
        .iter()
        .map(|e| {
            HistoryEntry::from_journal(e)
                .with_context(|| format!("journal entry {} of {kind}/{id} is unreadable", e.step))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if q.json {
        return Ok(serde_json::to_string_pretty(&history)?);
    }
    let rows = history
        .iter()
        .map(|h| {
            let random = if h.recorded.get("seed").is_some() {
                "yes"
            } else {
                ""
            };
            vec![
                h.step.to_string(),
                time_us(h.at_us),
                h.message.to_string(),
                random.to_owned(),
            ]
        })
        .collect();
    Ok(table(&["STEP", "AT", "MESSAGE", "RANDOM"], rows))
}

async fn state(
    data: &Path,
    inspector: &Inspector,
    kind: &str,
    id: &str,
    q: &Query,
) -> anyhow::Result<String> {
    let stored = inspector.state(kind, id)?;
    let last_step = inspector
        .history(
            kind,
            id,
            stored.as_ref().map_or(0, |s| s.version),
            usize::MAX,
        )?
        .last()
        .map(|e| e.step);
    // The stored state is exact when no journal step follows it and no past step is asked.
    let exact = q.at.is_none() && last_step.is_none();
    let (state, step, note) = if exact {
        let Some(s) = stored else {
            bail!("{kind}/{id} has no stored state and no journal");
        };
        (s.state, s.version, None)
    } else {
        match replay(data, kind, id, q.at).await {
            Ok(state) => (state, q.at.or(last_step).unwrap_or(0), None),
            Err(Replay::Locked) if q.at.is_none() => {
                let Some(s) = stored else {
                    bail!(
                        "{kind}/{id} has only a journal, and the node is running: stop it to \
                         replay the journal here"
                    );
                };
                let note = format!(
                    "this is the snapshot at step {}; steps {}..={} are in the journal \
                     (`--history`), and replaying them needs the node stopped",
                    s.version,
                    s.version + 1,
                    last_step.unwrap_or(s.version)
                );
                (s.state, s.version, Some(note))
            }
            Err(Replay::Locked) => {
                bail!("the node is running: stop it to replay {kind}/{id} to a past step")
            }
            Err(Replay::Failed(e)) => return Err(e),
        }
    };
    let state: Value = serde_json::from_str(&state)
        .with_context(|| format!("the state of {kind}/{id} is not JSON"))?;
    if q.json {
        return Ok(serde_json::to_string_pretty(
            &json!({"kind": kind, "id": id, "step": step, "state": state, "note": note}),
        )?);
    }
    let mut out = format!(
        "{kind}/{id} at step {step}\n{}",
        serde_json::to_string_pretty(&state)?
    );
    if let Some(note) = note {
        out.push_str("\n\nnote: ");
        out.push_str(&note);
    }
    Ok(out)
}

enum Replay {
    /// Another process (a running node) holds the directory.
    Locked,
    Failed(anyhow::Error),
}

/// Replays an entity to step `at` (its latest, if `None`) with the demo kinds' code, on a
/// runtime that claims nothing and writes nothing.
async fn replay(data: &Path, kind: &str, id: &str, at: Option<u64>) -> Result<String, Replay> {
    let store = match SqliteStore::open(data) {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) => return Err(Replay::Locked),
        Err(e) => return Err(Replay::Failed(e.into())),
    };
    let result = async {
        let rt = perennial_demo::register(Runtime::builder().store(store.clone()))
            .start_read_only()
            .await?;
        if rt.persistence(kind).is_none() {
            bail!(
                "this binary does not know kind {kind:?}, so it cannot replay its journal; \
                 its stored state and history need no code (drop `--at`, or add `--history`)"
            );
        }
        let state = match at {
            Some(step) => rt.admin().state_at(kind, id, step).await,
            None => rt.admin().durable_state(kind, id).await,
        };
        rt.shutdown().await;
        Ok(state?)
    }
    .await;
    let closed = store.close().await;
    let state = result.map_err(Replay::Failed)?;
    closed.map_err(|e| Replay::Failed(e.into()))?;
    Ok(state)
}
