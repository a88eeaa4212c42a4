//! The writer: the write connection, one transaction and one WAL fsync per batch.
//!
//! A commit appends each state to `state_log`, then, in the same transaction, folds a slice of
//! older pending states into `entities` (in key order, so the slice touches few pages) and
//! deletes the log rows no entity needs any more (a contiguous range at the log's start).
//! Pending rows and kept replies go to the recent tables first, and move to the keyed ones
//! only if they outlive a few commits. See [`crate::pending`], [`crate::recent`] and
//! [`crate::schema`].
//!
//! The writer has no thread of its own: it sits behind a mutex and commits on the caller's
//! thread (the runtime's committer), so nothing hands a batch from thread to thread. A small
//! maintenance thread folds and checkpoints when no commit has come for a while.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;
use perennial_storage::{Batch, CommitOutcome, Error};
use perennial_types::{EntityKey, Epoch, SHARDS, ShardId};
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use crate::errors::{from_sql, map_err, to_sql};
use crate::pending::{Pending, PendingState};
use crate::recent::{self, RECENT_COMMITS, Recent, RecentChanges};
use crate::rows::{Rows, int, text};

/// How many commits may pass between checkpoints.
const COMMITS_PER_CHECKPOINT: u32 = 256;
/// How long a commit may wait for the next checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How long the store must be quiet before the maintenance thread folds on its own.
const IDLE_FOLD_AFTER: Duration = Duration::from_millis(50);
/// How often the maintenance thread copies the WAL into the database in the background.
const BACKGROUND_CHECKPOINT_EVERY: Duration = Duration::from_millis(25);
/// How many pending states an idle fold (or a close) folds per transaction.
const IDLE_FOLD_SLICE: usize = 8192;
/// The fewest pending states a commit folds, so a trickle of commits still drains the log.
const MIN_FOLD_SLICE: usize = 16;
/// Beyond this many pending states, commits fold faster than they append.
const MAX_PENDING: usize = 100_000;
/// How long a clean close waits for reads under way to let go of the WAL before it leaves the
/// WAL for the next open to read back.
const CLOSE_CHECKPOINT_WITHIN: Duration = Duration::from_secs(2);

/// Appends one commit's states to the log, as one row.
const APPEND: &str = "INSERT INTO state_log (seq, at, states) VALUES (?1, ?2, ?3)";

/// Folds states into `entities`.
static FOLD: LazyLock<Rows> = LazyLock::new(|| {
    Rows::new(
        "INSERT INTO entities (kind, id, shard, version, updated_at, state, schema)",
        7,
        " ON CONFLICT (kind, id) DO UPDATE SET
            shard = excluded.shard,
            version = excluded.version,
            schema = excluded.schema,
            updated_at = excluded.updated_at,
            state = excluded.state",
    )
});

/// Appends journal entries.
static JOURNAL: LazyLock<Rows> =
    LazyLock::new(|| Rows::new("INSERT INTO journal (kind, id, step, at, entry)", 5, ""));

const TRIM_JOURNAL: &str = "DELETE FROM journal WHERE kind = ?1 AND id = ?2 AND step <= ?3";

const DELETE_DEAD_LETTER: &str = "DELETE FROM dead_letters WHERE seq = ?1";

const PAUSE: &str = "INSERT OR IGNORE INTO paused (kind, id, at) VALUES (?1, ?2, ?3)";
const RESUME: &str = "DELETE FROM paused WHERE kind = ?1 AND id = ?2";

const INSERT_DEAD_LETTER: &str = "
INSERT INTO dead_letters (kind, id, message, error, attempts, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Starts the maintenance thread for `writer`. The thread stops when the returned sender is
/// dropped; join it before another store may open the directory.
///
/// Every [`BACKGROUND_CHECKPOINT_EVERY`], it also copies the WAL into the database file on its
/// own connection (`checkpointer`). A passive checkpoint runs beside the writer without
/// blocking it, so when the writer checkpoints itself (see [`Writer::maybe_checkpoint`])
/// little is left to copy and its pause is short.
pub(crate) fn spawn_maintenance(
    writer: Arc<Mutex<Writer>>,
    checkpointer: Connection,
) -> Result<(Sender<()>, thread::JoinHandle<()>), Error> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let thread = thread::Builder::new()
        .name("perennial-sqlite-maintenance".into())
        .spawn(move || {
            let mut last_idle_check = Instant::now();
            let mut failing = Failing::default();
            while let Err(RecvTimeoutError::Timeout) =
                stopped.recv_timeout(BACKGROUND_CHECKPOINT_EVERY)
            {
                failing.report(
                    "background checkpoint",
                    checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE)"),
                );
                if last_idle_check.elapsed() >= IDLE_FOLD_AFTER {
                    last_idle_check = Instant::now();
                    // A busy writer needs no help: commits fold and checkpoint as they go.
                    if let Some(mut writer) = writer.try_lock() {
                        writer.idle();
                    }
                }
            }
        })
        .map_err(|e| Error::Io(format!("cannot start the maintenance thread: {e}")))?;
    Ok((stop, thread))
}

/// The write connection and what the writer tracks between transactions.
pub(crate) struct Writer {
    conn: Connection,
    /// States in the log but not yet in `entities`; shared with the readers.
    pending: Arc<Mutex<Pending>>,
    /// Where the recent pending rows and kept replies are; shared with the readers.
    recent: Arc<Mutex<Recent>>,
    /// The next recent rowid as each of the last [`RECENT_COMMITS`] commits began.
    marks: VecDeque<i64>,
    /// Commits since the last checkpoint.
    commits_since_checkpoint: u32,
    last_checkpoint: Instant,
    /// Every `state_log` row below this one is known deleted.
    deleted_below: i64,
    /// The sequence number the next appended state gets. Never reused, even when the log is
    /// empty, so sequence numbers order every state ever appended.
    next_seq: i64,
    /// When the last commit finished: the maintenance thread waits for a quiet moment.
    last_commit: Instant,
    /// The shards' epochs, read again only when they may have changed.
    epochs: Epochs,
    /// Set by [`close`](Writer::close); later calls fail with [`Error::Closed`].
    closed: bool,
    /// Whether the writer's own checkpoints and idle folds are failing, for the log.
    failing: Failing,
}

/// Whether a periodic chore is failing: logs when it starts failing and when it works again,
/// not every time it is retried (a full disk fails it every few milliseconds).
#[derive(Default)]
struct Failing(bool);

impl Failing {
    fn report<T, E: std::fmt::Display>(&mut self, chore: &str, result: Result<T, E>) {
        match result {
            Err(error) if !self.0 => {
                tracing::warn!(%error, "{chore} failed; retrying until it works");
                self.0 = true;
            }
            Ok(_) if self.0 => {
                tracing::info!("{chore} works again");
                self.0 = false;
            }
            _ => {}
        }
    }
}

/// What a transaction folded and appended, to publish once it committed.
#[derive(Default)]
struct Changes {
    /// The next sequence number once this transaction committed.
    next_seq: Option<i64>,
    appended: Vec<(EntityKey, PendingState)>,
    folded: Vec<(EntityKey, PendingState)>,
    /// Entities deleted by this transaction: forgotten after the appended and the folded.
    deleted: Vec<EntityKey>,
    deleted_below: Option<i64>,
}

impl Writer {
    /// A writer on `conn`, whose unfolded states are `pending` and recent rows `recent`.
    pub(crate) fn new(
        conn: Connection,
        pending: Arc<Mutex<Pending>>,
        recent: Arc<Mutex<Recent>>,
    ) -> Result<Self, Error> {
        let next_seq: i64 = conn
            .query_row("SELECT coalesce(max(seq), 0) + 1 FROM state_log", [], |r| {
                r.get(0)
            })
            .map_err(map_err)?;
        Ok(Self {
            conn,
            pending,
            recent,
            marks: VecDeque::with_capacity(RECENT_COMMITS + 1),
            commits_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            deleted_below: 0,
            next_seq,
            last_commit: Instant::now(),
            epochs: Epochs::default(),
            closed: false,
            failing: Failing::default(),
        })
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Folds a slice and checkpoints if the store has been quiet for a while.
    fn idle(&mut self) {
        if self.closed || self.last_commit.elapsed() < IDLE_FOLD_AFTER {
            return;
        }
        if self.pending.lock().len() > 0 || self.recent.lock().len() > 0 {
            let folded = self.fold_only(IDLE_FOLD_SLICE);
            if folded.is_ok() {
                self.commits_since_checkpoint += 1;
            }
            self.failing.report("idle fold", folded);
        }
        self.maybe_checkpoint();
    }

    /// Checkpoints the WAL every few hundred commits.
    ///
    /// The writer checkpoints itself, between commits: no frame is appended meanwhile, so the
    /// checkpoint completes, and the next transaction starts the WAL over from its beginning,
    /// overwriting the file instead of growing it (an overwrite flushes cheaper than an append
    /// that changes the file's size). A checkpointer beside a busy writer never catches up on
    /// its own, and the WAL then grows without bound; but it does copy most frames in the
    /// background (see [`spawn_maintenance`]), so this checkpoint only copies the last few.
    fn maybe_checkpoint(&mut self) {
        let due = self.commits_since_checkpoint >= COMMITS_PER_CHECKPOINT
            || (self.commits_since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY);
        if !due {
            return;
        }
        let checkpointed = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
        self.failing.report("checkpoint", checkpointed);
        self.commits_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
    }

    /// Writes one batch in one immediate transaction, refusing writes with a stale epoch.
    pub(crate) fn commit(&mut self, batch: &Batch) -> Result<CommitOutcome, Error> {
        self.check_open()?;
        // A failure is the caller's to report (the runtime's committer logs it).
        let result = self.write_batch(batch);
        self.last_commit = Instant::now();
        self.commits_since_checkpoint += 1;
        self.maybe_checkpoint();
        result
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<CommitOutcome, Error> {
        let now = now_ms();
        let marked = self.mark_commit();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let mut fence = Fence {
            epochs: self.epochs.current(&tx)?,
            fenced: Vec::new(),
        };
        let mut changes = Changes::default();
        // One log row for the whole commit: one insert, however many states.
        let seq = self.next_seq;
        let mut logged = Vec::with_capacity(batch.states.len());
        for w in &batch.states {
            if !fence.allows(w.shard, w.epoch)? {
                continue;
            }
            logged.push(LoggedState::<&str> {
                kind: &w.key.kind,
                id: w.key.id.as_str(),
                shard: w.shard.0,
                version: w.version,
                schema: w.schema,
                state: Some(&w.state),
            });
            changes.appended.push((
                w.key.clone(),
                PendingState {
                    seq,
                    shard: w.shard,
                    version: w.version,
                    schema: w.schema,
                    updated_at: now,
                    state: Arc::clone(&w.state),
                },
            ));
        }
        // Deletes come after the states in the log row, as they come after every other write:
        // a store opening the file replays them in that order.
        for d in &batch.deletes {
            if !fence.allows(d.shard, d.epoch)? {
                continue;
            }
            logged.push(LoggedState::<&str> {
                kind: &d.key.kind,
                id: d.key.id.as_str(),
                shard: d.shard.0,
                version: 0,
                schema: 1,
                state: None,
            });
            changes.deleted.push(d.key.clone());
        }
        if !logged.is_empty() {
            let states = serde_json::to_string(&logged)
                .map_err(|e| Error::Backend(format!("cannot encode the log row: {e}")))?;
            tx.prepare_cached(APPEND)
                .map_err(map_err)?
                .execute(params![seq, now, states])
                .map_err(map_err)?;
            changes.next_seq = Some(seq + 1);
        }
        drop(logged);
        {
            let mut insert = tx.prepare_cached(INSERT_DEAD_LETTER).map_err(map_err)?;
            for d in &batch.dead_letters {
                if fence.allows(d.shard, d.epoch)? {
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
        if !batch.letters_done.is_empty() {
            let mut delete = tx.prepare_cached(DELETE_DEAD_LETTER).map_err(map_err)?;
            for d in &batch.letters_done {
                if fence.allows(d.shard, d.epoch)? {
                    delete.execute([to_sql(d.seq)]).map_err(map_err)?;
                }
            }
        }
        for p in &batch.pauses {
            if fence.allows(p.shard, p.epoch)? {
                let (kind, id) = (&*p.key.kind, p.key.id.as_str());
                if p.paused {
                    tx.prepare_cached(PAUSE)
                        .map_err(map_err)?
                        .execute(params![kind, id, now])
                } else {
                    tx.prepare_cached(RESUME)
                        .map_err(map_err)?
                        .execute(params![kind, id])
                }
                .map_err(map_err)?;
            }
        }
        let mut entries = Vec::with_capacity(batch.journal.len() * 5);
        for j in &batch.journal {
            if fence.allows(j.shard, j.epoch)? {
                entries.extend([
                    text(&j.key.kind),
                    text(j.key.id.as_str()),
                    int(to_sql(j.entry.step)),
                    int(j.entry.at_us),
                    text(&j.entry.entry),
                ]);
            }
        }
        JOURNAL.run(&tx, &entries)?;
        drop(entries);
        if !batch.trims.is_empty() {
            perennial_faults::failpoint!("sqlite.trim");
            let mut trim = tx.prepare_cached(TRIM_JOURNAL).map_err(map_err)?;
            for t in &batch.trims {
                if fence.allows(t.shard, t.epoch)? {
                    trim.execute(params![&*t.key.kind, t.key.id.as_str(), to_sql(t.through)])
                        .map_err(map_err)?;
                }
            }
        }
        let mut recent = recent::write(&tx, batch, &mut fence, &self.recent)?;
        let below = self.recent.lock().move_below(marked);
        recent::move_older(&tx, below, &mut recent)?;
        let budget = fold_budget(changes.appended.len(), self.pending.lock().len());
        fold_into(&tx, &self.pending, self.deleted_below, budget, &mut changes)?;
        // After the fold and the move, which may have just written an older state of a
        // deleted entity, or moved its rows.
        delete_entities(&tx, &changes.deleted, &self.recent, &mut recent)?;
        perennial_faults::failpoint!("sqlite.written");
        tx.commit().map_err(map_err)?;
        let mut fenced = fence.fenced;
        self.publish(changes);
        self.recent.lock().publish(recent);
        fenced.sort();
        Ok(CommitOutcome { fenced })
    }

    /// Makes a committed transaction's changes visible to the readers and the next fold.
    fn publish(&mut self, changes: Changes) {
        let mut pending = self.pending.lock();
        for (key, state) in changes.appended {
            pending.insert(key, state);
        }
        for (key, state) in &changes.folded {
            pending.folded(key, state.seq);
        }
        for key in &changes.deleted {
            pending.remove(key);
        }
        if let Some(below) = changes.deleted_below {
            self.deleted_below = below.min(self.next_seq);
        }
        if let Some(next) = changes.next_seq {
            self.next_seq = next;
        }
    }

    /// Notes the next recent rowid as a commit begins; returns the one noted
    /// [`RECENT_COMMITS`] commits ago: rows and replies below it are old enough to move.
    fn mark_commit(&mut self) -> Option<i64> {
        self.marks.push_back(self.recent.lock().next_id());
        if self.marks.len() > RECENT_COMMITS {
            self.marks.pop_front();
        }
        (self.marks.len() == RECENT_COMMITS)
            .then(|| self.marks.front().copied())
            .flatten()
    }

    /// Folds up to `budget` pending states and moves every recent row and reply, in a
    /// transaction of their own.
    fn fold_only(&mut self, budget: usize) -> Result<(), Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let mut changes = Changes::default();
        fold_into(&tx, &self.pending, self.deleted_below, budget, &mut changes)?;
        let mut recent = RecentChanges::default();
        let below = self.recent.lock().move_below(Some(i64::MAX));
        recent::move_older(&tx, below, &mut recent)?;
        tx.commit().map_err(map_err)?;
        self.publish(changes);
        self.recent.lock().publish(recent);
        Ok(())
    }

    /// Folds everything, empties the log and truncates the WAL: a closed store's `entities`
    /// table is exact. Later calls fail with [`Error::Closed`].
    pub(crate) fn close(&mut self) -> Result<(), Error> {
        self.check_open()?;
        self.closed = true;
        while self.pending.lock().len() > 0 {
            self.fold_only(IDLE_FOLD_SLICE)?;
        }
        self.fold_only(0)?;
        // A read that began before the close may still hold the WAL: the checkpoint waits
        // for it (SQLite's busy handler), then says whether it was still busy and left the
        // log whole, for the next open to read back.
        self.conn
            .busy_timeout(CLOSE_CHECKPOINT_WITHIN)
            .map_err(map_err)?;
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(map_err)?;
        if busy != 0 {
            tracing::warn!(
                "the WAL could not be emptied on close, reads held it: the next open reads it back"
            );
        }
        Ok(())
    }

    /// Gives `shards` one new epoch above all of theirs.
    pub(crate) fn claim(&mut self, owner: &str, shards: &[ShardId]) -> Result<Epoch, Error> {
        self.check_open()?;
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
        // This connection's own commits do not change `data_version`.
        self.epochs.clear();
        Ok(Epoch(next))
    }

    /// The write connection, for schema changes such as indexes (never inside a commit).
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The write connection's `(journal_mode, synchronous)`.
    pub(crate) fn settings(&self) -> Result<(String, i64), Error> {
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

/// How many pending states a commit that appended `appended` folds, with `pending` pending.
///
/// Folding a quarter as many states as were appended lets most of the hot entities stay
/// pending, so the slice a commit folds (in key order) lands on few, neighbouring pages, and
/// an entity written several times between two folds is folded once. Folding as many as were
/// appended would fold each state right after its commit, on pages as scattered as its keys,
/// and the log would save nothing. Past [`MAX_PENDING`], commits fold twice what they append,
/// so memory and the log stay bounded.
fn fold_budget(appended: usize, pending: usize) -> usize {
    if pending > MAX_PENDING {
        appended * 2 + MIN_FOLD_SLICE
    } else {
        appended / 4 + MIN_FOLD_SLICE
    }
}

/// Folds a slice of pending states into `entities` and deletes the log rows no longer needed,
/// inside `tx`. The pending set itself changes only once the transaction committed
/// ([`Writer::publish`]).
fn fold_into(
    tx: &Transaction<'_>,
    pending: &Mutex<Pending>,
    deleted_below: i64,
    budget: usize,
    changes: &mut Changes,
) -> Result<(), Error> {
    let rewritten: HashSet<&EntityKey> = changes.appended.iter().map(|(k, _)| k).collect();
    // The watermark is taken before this transaction's own changes: it may keep a few rows
    // this transaction makes obsolete, which the next one deletes.
    let (slice, watermark) = {
        let mut pending = pending.lock();
        let watermark = pending.low_watermark();
        (pending.next_slice(budget, &rewritten), watermark)
    };
    let first_new = changes.appended.first().map(|(_, s)| s.seq);
    let watermark = match (watermark, first_new) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let values: Vec<ToSqlOutput<'_>> = slice
        .iter()
        .flat_map(|(key, s)| state_columns(key, s))
        .collect();
    FOLD.run(tx, &values)?;
    drop(values);
    match watermark {
        Some(below) if below > deleted_below => {
            tx.prepare_cached("DELETE FROM state_log WHERE seq < ?1")
                .map_err(map_err)?
                .execute([below])
                .map_err(map_err)?;
            changes.deleted_below = Some(below);
        }
        Some(_) => {}
        None => {
            // Nothing pending at all: the whole log is folded.
            tx.execute("DELETE FROM state_log", []).map_err(map_err)?;
            changes.deleted_below = Some(i64::MAX);
        }
    }
    changes.folded = slice;
    Ok(())
}

/// One state in a `state_log` row's JSON array.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct LoggedState<S> {
    pub(crate) kind: S,
    pub(crate) id: S,
    pub(crate) shard: u32,
    pub(crate) version: u64,
    /// The state's schema version; absent (as in format 4) means 1.
    #[serde(default = "schema_one", skip_serializing_if = "is_schema_one")]
    pub(crate) schema: u32,
    /// The state's JSON, as a JSON string: it comes back byte for byte. `null` (since
    /// format 6): the entity was deleted.
    pub(crate) state: Option<S>,
}

fn schema_one() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_schema_one(schema: &u32) -> bool {
    *schema == 1
}

/// Deletes what `keys` had stored: state, journal, and the rows each addressed to itself
/// (timers, effects, messages to itself; the messages to others are theirs now).
fn delete_entities(
    tx: &Transaction<'_>,
    keys: &[EntityKey],
    recent: &Mutex<Recent>,
    changes: &mut RecentChanges,
) -> Result<(), Error> {
    if keys.is_empty() {
        return Ok(());
    }
    perennial_faults::failpoint!("sqlite.delete");
    recent::delete_owned(tx, keys, recent, changes)?;
    for sql in [
        "DELETE FROM entities WHERE kind = ?1 AND id = ?2",
        "DELETE FROM journal WHERE kind = ?1 AND id = ?2",
        "DELETE FROM pending WHERE kind = ?1 AND id = ?2 \
         AND (class = 3 OR (target_kind = ?1 AND target_id = ?2))",
    ] {
        let mut delete = tx.prepare_cached(sql).map_err(map_err)?;
        for key in keys {
            delete
                .execute(params![&*key.kind, key.id.as_str()])
                .map_err(map_err)?;
        }
    }
    Ok(())
}

/// The columns of `entities` for one state, in their order: kind, id, shard, version,
/// updated_at, state, schema.
fn state_columns<'a>(key: &'a EntityKey, s: &'a PendingState) -> [ToSqlOutput<'a>; 7] {
    [
        text(&key.kind),
        text(key.id.as_str()),
        int(i64::from(s.shard.0)),
        int(to_sql(s.version)),
        int(s.updated_at),
        text(&s.state),
        int(i64::from(s.schema)),
    ]
}

/// The shards' epochs as this writer last read them, inside a transaction.
///
/// Epochs change only when shards are claimed. A claim by this writer clears the cache; a
/// change by any other connection (another process, an operator's `sqlite3`) changes
/// `PRAGMA data_version`, which every commit reads inside its transaction. So each fence check
/// still sees the epochs as of its own transaction, without reading 1024 rows each time.
#[derive(Default)]
struct Epochs {
    /// `(data_version, epoch of each shard)` when last read.
    cached: Option<(i64, Vec<u64>)>,
}

impl Epochs {
    /// The current epochs, read in `tx`.
    fn current(&mut self, tx: &Transaction<'_>) -> Result<&[u64], Error> {
        let version: i64 = tx
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(map_err)?;
        if self.cached.as_ref().is_none_or(|(v, _)| *v != version) {
            let mut epochs = vec![0; SHARDS as usize];
            let mut stmt = tx
                .prepare_cached("SELECT shard, epoch FROM shards")
                .map_err(map_err)?;
            let mut rows = stmt.query([]).map_err(map_err)?;
            while let Some(row) = rows.next().map_err(map_err)? {
                let shard: u32 = row.get(0).map_err(map_err)?;
                let epoch = from_sql(row.get(1).map_err(map_err)?, "shard epoch")?;
                if let Some(slot) = epochs.get_mut(shard as usize) {
                    *slot = epoch;
                }
            }
            self.cached = Some((version, epochs));
        }
        Ok(self.cached.as_ref().map_or(&[], |(_, e)| e.as_slice()))
    }

    /// Forgets the epochs: this writer just changed them.
    fn clear(&mut self) {
        self.cached = None;
    }
}

/// The fence check of one batch, against the epochs of its own transaction.
pub(crate) struct Fence<'a> {
    epochs: &'a [u64],
    fenced: Vec<ShardId>,
}

impl Fence<'_> {
    /// Whether a write naming `epoch` for `shard` may land: only if that is the shard's
    /// current epoch, and the shard has been claimed (epoch 0 never is).
    pub(crate) fn allows(&mut self, shard: ShardId, epoch: Epoch) -> Result<bool, Error> {
        let Some(&current) = self.epochs.get(shard.0 as usize) else {
            return Err(Error::Backend(format!("{shard} does not exist")));
        };
        let ok = (current != 0 && current == epoch.0)
            || perennial_faults::sabotaged(perennial_faults::Sabotage::NoFence);
        if !ok && !self.fenced.contains(&shard) {
            self.fenced.push(shard);
        }
        Ok(ok)
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
