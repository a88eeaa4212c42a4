//! The writer thread (one transaction and one WAL fsync per batch) and the checkpointer.

use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use perennial_storage::{Batch, CommitOutcome, Error};
use perennial_types::{Epoch, SHARDS, ShardId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::errors::{from_sql, map_err, to_sql};

/// A request to the writer thread. Each carries the channel its answer goes back on.
#[derive(Debug)]
pub(crate) enum WriteCmd {
    Commit {
        batch: Batch,
        reply: oneshot::Sender<Result<CommitOutcome, Error>>,
    },
    Claim {
        owner: String,
        shards: Vec<ShardId>,
        reply: oneshot::Sender<Result<Epoch, Error>>,
    },
    Settings {
        reply: oneshot::Sender<Result<(String, i64), Error>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// How many commits pass between nudges to the checkpointer.
const COMMITS_PER_NUDGE: u32 = 64;

const UPSERT: &str = "
INSERT INTO entities (kind, id, shard, version, updated_at, state)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (kind, id) DO UPDATE SET
    shard = excluded.shard,
    version = excluded.version,
    updated_at = excluded.updated_at,
    state = excluded.state";

const INSERT_DEAD_LETTER: &str = "
INSERT INTO dead_letters (kind, id, message, error, attempts, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Starts the writer and checkpointer threads; returns the writer's request channel.
pub(crate) fn spawn(
    conn: Connection,
    checkpoint_conn: Connection,
    interval: Duration,
) -> Result<Sender<WriteCmd>, Error> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (nudge_tx, nudge_rx) = crossbeam_channel::bounded(1);
    thread::Builder::new()
        .name("perennial-sqlite-checkpoint".into())
        .spawn(move || checkpointer(&checkpoint_conn, &nudge_rx, interval))
        .map_err(|e| Error::Io(format!("cannot start the checkpoint thread: {e}")))?;
    thread::Builder::new()
        .name("perennial-sqlite-writer".into())
        .spawn(move || {
            let mut writer = Writer {
                conn,
                nudge: nudge_tx,
                since_nudge: 0,
            };
            writer.run(&rx);
        })
        .map_err(|e| Error::Io(format!("cannot start the writer thread: {e}")))?;
    Ok(tx)
}

struct Writer {
    conn: Connection,
    /// Wakes the checkpointer after a run of commits; a full channel means it is awake already.
    nudge: Sender<()>,
    since_nudge: u32,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<WriteCmd>) {
        while let Ok(cmd) = rx.recv() {
            match cmd {
                WriteCmd::Commit { batch, reply } => {
                    let result = self.commit(&batch);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "commit failed");
                    }
                    let _ = reply.send(result);
                    self.since_nudge += 1;
                    if self.since_nudge >= COMMITS_PER_NUDGE {
                        self.since_nudge = 0;
                        if let Err(TrySendError::Disconnected(())) = self.nudge.try_send(()) {
                            tracing::warn!("the checkpoint thread stopped");
                        }
                    }
                }
                WriteCmd::Claim {
                    owner,
                    shards,
                    reply,
                } => {
                    let _ = reply.send(self.claim(&owner, &shards));
                }
                WriteCmd::Settings { reply } => {
                    let _ = reply.send(self.settings());
                }
                WriteCmd::Close { reply } => {
                    let result = self
                        .conn
                        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                        .map_err(map_err);
                    let _ = reply.send(result);
                    return;
                }
            }
        }
    }

    /// Writes one batch in one immediate transaction, refusing writes with a stale epoch.
    fn commit(&mut self, batch: &Batch) -> Result<CommitOutcome, Error> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let mut fence = Fence::default();
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(map_err)?;
            for w in &batch.states {
                if fence.allows(&tx, w.shard, w.epoch)? {
                    upsert
                        .execute(params![
                            &*w.key.kind,
                            w.key.id.as_str(),
                            w.shard.0,
                            to_sql(w.version),
                            now,
                            &*w.state
                        ])
                        .map_err(map_err)?;
                }
            }
            let mut insert = tx.prepare_cached(INSERT_DEAD_LETTER).map_err(map_err)?;
            for d in &batch.dead_letters {
                if fence.allows(&tx, d.shard, d.epoch)? {
                    let l = &d.letter;
                    insert
                        .execute(params![
                            &*l.key.kind,
                            l.key.id.as_str(),
                            l.message,
                            l.error,
                            l.attempts,
                            l.at_ms
                        ])
                        .map_err(map_err)?;
                }
            }
        }
        tx.commit().map_err(map_err)?;
        let mut fenced = fence.fenced;
        fenced.sort();
        Ok(CommitOutcome { fenced })
    }

    /// Gives `shards` one new epoch above all of theirs.
    fn claim(&mut self, owner: &str, shards: &[ShardId]) -> Result<Epoch, Error> {
        if let Some(bad) = shards.iter().find(|s| s.0 >= SHARDS) {
            return Err(Error::Backend(format!("{bad} does not exist")));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let mut next = 0u64;
        {
            let mut get = tx
                .prepare_cached("SELECT epoch FROM shards WHERE shard = ?1")
                .map_err(map_err)?;
            for shard in shards {
                let epoch: i64 = get.query_row([shard.0], |r| r.get(0)).map_err(map_err)?;
                next = next.max(from_sql(epoch, "shard epoch")?);
            }
        }
        next += 1;
        {
            let mut set = tx
                .prepare_cached(
                    "UPDATE shards SET epoch = ?2, owner = ?3, claimed_at = ?4 WHERE shard = ?1",
                )
                .map_err(map_err)?;
            let now = now_ms();
            for shard in shards {
                set.execute(params![shard.0, to_sql(next), owner, now])
                    .map_err(map_err)?;
            }
        }
        tx.commit().map_err(map_err)?;
        Ok(Epoch(next))
    }

    fn settings(&self) -> Result<(String, i64), Error> {
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(map_err)?;
        let sync: i64 = self
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(map_err)?;
        Ok((mode, sync))
    }
}

/// The fence check of one batch: each shard's epoch is read once, inside the transaction.
struct Fence {
    /// The current epoch of each shard the batch touched so far.
    epochs: Vec<Option<u64>>,
    fenced: Vec<ShardId>,
}

impl Default for Fence {
    fn default() -> Self {
        Self {
            epochs: vec![None; SHARDS as usize],
            fenced: Vec::new(),
        }
    }
}

impl Fence {
    fn allows(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        shard: ShardId,
        epoch: Epoch,
    ) -> Result<bool, Error> {
        let Some(slot) = self.epochs.get_mut(shard.0 as usize) else {
            return Err(Error::Backend(format!("{shard} does not exist")));
        };
        let current = match *slot {
            Some(current) => current,
            None => {
                let current: i64 = tx
                    .prepare_cached("SELECT epoch FROM shards WHERE shard = ?1")
                    .map_err(map_err)?
                    .query_row([shard.0], |r| r.get(0))
                    .optional()
                    .map_err(map_err)?
                    .unwrap_or(0);
                let current = from_sql(current, "shard epoch")?;
                *slot = Some(current);
                current
            }
        };
        let ok = current != 0 && current == epoch.0;
        if !ok && !self.fenced.contains(&shard) {
            self.fenced.push(shard);
        }
        Ok(ok)
    }
}

/// Copies the WAL into the database in the background, so the writer never checkpoints.
///
/// A passive checkpoint runs beside the writer without blocking it. Once a checkpoint has
/// copied every frame, the writer's next transaction starts the WAL over from its beginning,
/// reusing the file's space.
fn checkpointer(conn: &Connection, nudges: &Receiver<()>, interval: Duration) {
    loop {
        match nudges.recv_timeout(interval) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::warn!(error = %e, "background checkpoint failed; will retry");
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
