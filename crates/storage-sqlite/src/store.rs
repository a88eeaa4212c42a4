//! [`SqliteStore`]: opening a data directory and routing calls to the store's threads.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use perennial_storage::{
    Batch, Catalog, CommitOutcome, EntityState, EntitySummary, Error, Filter, JournalEntry, Page,
    Pending as PendingRow, Record, Result, Store, StoredDeadLetter, StoredReply,
};
use perennial_types::{EntityId, EntityKey, Epoch, ShardId};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::errors::map_err;
use crate::pending::{Pending, PendingState};
use crate::query;
use crate::reader::{self, ReadCmd};
use crate::recent::Recent;
use crate::schema;
use crate::writer::{self, LoggedState, Writer};

/// The name of the database file inside the data directory.
pub(crate) const DB_FILE: &str = "perennial.db";
/// The name of the lock file that keeps a second process out of the data directory.
const LOCK_FILE: &str = "perennial.lock";

/// Tuning for a [`SqliteStore`]. The defaults suit a node with a few GiB of memory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// How many threads serve loads, each with its own read-only connection.
    pub readers: usize,
    /// SQLite's page cache per connection, in MiB. The hot entities should fit.
    pub cache_mib: u32,
    /// How much of the file SQLite may memory-map for reads, in MiB.
    pub mmap_mib: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            readers: 2,
            cache_mib: 64,
            mmap_mib: 256,
        }
    }
}

/// Perennial's embedded [`Store`] on SQLite. See the [crate documentation](crate).
///
/// Cloning is cheap; clones share the same threads and file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// The write connection. Commits lock it on the caller's thread.
    writer: Arc<Mutex<Writer>>,
    readers: Sender<ReadCmd>,
    /// The maintenance thread: dropping the sender stops it. Stopped and joined before the
    /// directory lock is released, so it never writes beside a store opened after this one.
    maintenance: Mutex<Option<(Sender<()>, std::thread::JoinHandle<()>)>>,
    closed: AtomicBool,
    /// The exclusive lock on the data directory, held until the store is closed or dropped.
    lock: Mutex<Option<File>>,
}

impl Shared {
    /// Stops the maintenance thread and waits until it has.
    fn stop_maintenance(&self) {
        if let Some((stop, thread)) = self.maintenance.lock().take() {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("the maintenance thread panicked");
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Before the fields are dropped, and with them the directory lock.
        self.stop_maintenance();
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the store in the data directory `dir`, with default [`Options`].
    ///
    /// Fails with [`Error::Locked`] if another process has the directory open, with
    /// [`Error::NotDurable`] if SQLite will not commit durably, and with [`Error::TooNew`] if a
    /// newer Perennial wrote the data.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, Options::default())
    }

    /// Opens (or creates) the store in `dir` with the given options.
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Io(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let lock = lock_dir(dir)?;
        let path = dir.join(DB_FILE);

        let mut conn = Connection::open(&path).map_err(map_err)?;
        tune(&conn, &options)?;
        schema::set_durable(&conn)?;
        // The writer checkpoints on its own schedule; see `Writer::maybe_checkpoint`.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(map_err)?;
        // After a burst, a reset WAL is cut back to this size.
        conn.pragma_update(None, "journal_size_limit", 64 << 20)
            .map_err(map_err)?;
        schema::migrate(&mut conn)?;

        let mut read_conns = Vec::with_capacity(options.readers.max(1));
        for _ in 0..options.readers.max(1) {
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(map_err)?;
            tune(&conn, &options)?;
            read_conns.push(conn);
        }

        let pending = Arc::new(Mutex::new(load_log(&conn)?));
        let recent = Arc::new(Mutex::new(Recent::load(&conn)?));
        let writer = Arc::new(Mutex::new(Writer::new(
            conn,
            Arc::clone(&pending),
            Arc::clone(&recent),
        )?));
        let checkpointer = Connection::open(&path).map_err(map_err)?;
        tune(&checkpointer, &options)?;
        schema::set_durable(&checkpointer)?;
        let maintenance = writer::spawn_maintenance(Arc::clone(&writer), checkpointer)?;
        let readers = reader::spawn(read_conns, pending, recent)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                writer,
                readers,
                maintenance: Mutex::new(Some(maintenance)),
                closed: AtomicBool::new(false),
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// The path of the SQLite database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The writer connection's `(journal_mode, synchronous)` settings, as SQLite reports them.
    ///
    /// For tests and diagnostics: a durable store reports `("wal", 2)`.
    pub async fn durability_settings(&self) -> Result<(String, i64)> {
        self.with_writer(|w| w.settings()).await
    }

    /// Runs `f` on the writer on a thread that may block, off the async runtime.
    async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.check_open()?;
        let writer = Arc::clone(&self.shared.writer);
        tokio::task::spawn_blocking(move || f(&mut writer.lock()))
            .await
            .map_err(|e| Error::Backend(format!("the writer task failed: {e}")))?
    }

    async fn read<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> ReadCmd,
    ) -> Result<T> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .readers
            .send(make(tx))
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }
}

/// Takes the exclusive lock on the data directory, or says who holds it.
fn lock_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(Error::Io(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// The states of `state_log` row `seq`, whose `states` column is `text`.
fn decode_log_row(seq: i64, text: &str) -> Result<Vec<(EntityKey, LoggedState<String>)>> {
    let states: Vec<LoggedState<String>> = serde_json::from_str(text)
        .map_err(|e| Error::Corrupt(format!("state_log row {seq} does not decode: {e}")))?;
    states
        .into_iter()
        .map(|logged| {
            let id = EntityId::new(&logged.id).map_err(|e| {
                Error::Corrupt(format!("state_log row {seq} has an invalid id: {e}"))
            })?;
            Ok((EntityKey::new(logged.kind.clone(), id), logged))
        })
        .collect()
}

/// Decodes a `state_log` row's `states` as a store opening the file does: how many states it
/// holds, or the error that would refuse the file. For the fuzz targets (`perennial-fuzz`).
#[doc(hidden)]
pub fn decode_log_row_for_fuzzing(text: &str) -> Result<usize> {
    decode_log_row(0, text).map(|states| states.len())
}

/// Reads the states the log holds beyond `entities` (after a crash, or any stop without
/// [`Store::close`]), so they are served and folded like any other pending state.
fn load_log(conn: &Connection) -> Result<Pending> {
    let mut pending = Pending::default();
    let mut stmt = conn
        .prepare("SELECT seq, at, states FROM state_log ORDER BY seq")
        .map_err(map_err)?;
    let mut rows = stmt.query([]).map_err(map_err)?;
    while let Some(row) = rows.next().map_err(map_err)? {
        let seq: i64 = row.get(0).map_err(map_err)?;
        let at: i64 = row.get(1).map_err(map_err)?;
        let states: String = row.get(2).map_err(map_err)?;
        for (key, logged) in decode_log_row(seq, &states)? {
            let Some(state) = logged.state else {
                // Deleted: the rows before held states it no longer has.
                pending.remove(&key);
                continue;
            };
            let state = PendingState {
                seq,
                shard: ShardId(logged.shard),
                version: logged.version,
                schema: logged.schema,
                updated_at: at,
                state: Arc::from(state),
            };
            pending.insert(key, state);
        }
    }
    Ok(pending)
}

/// Sets the per-connection tuning: page cache, memory map, busy timeout.
fn tune(conn: &Connection, options: &Options) -> Result<()> {
    let cache_kib = i64::from(options.cache_mib) * 1024;
    conn.pragma_update(None, "cache_size", -cache_kib)
        .map_err(map_err)?;
    conn.pragma_update(None, "mmap_size", i64::from(options.mmap_mib) << 20)
        .map_err(map_err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(map_err)?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn claim(&self, owner: &str, shards: &[ShardId]) -> Result<Epoch> {
        let owner = owner.to_owned();
        let shards = shards.to_vec();
        self.with_writer(move |w| w.claim(&owner, &shards)).await
    }

    async fn load(&self, key: &EntityKey) -> Result<Option<Record>> {
        let key = key.clone();
        self.read(|reply| ReadCmd::Load { key, reply }).await
    }

    async fn journal(&self, key: &EntityKey, after: u64, max: usize) -> Result<Vec<JournalEntry>> {
        let key = key.clone();
        self.read(|reply| ReadCmd::Journal {
            key,
            after,
            limit: max,
            reply,
        })
        .await
    }

    fn commit(&self, batch: Batch) -> Result<CommitOutcome> {
        self.check_open()?;
        self.shared.writer.lock().commit(&batch)
    }

    async fn due(&self, before_ms: i64, limit: usize) -> Result<Vec<PendingRow>> {
        self.read(|reply| ReadCmd::Due {
            before_ms,
            limit,
            reply,
        })
        .await
    }

    async fn reply(&self, key: &EntityKey, idempotency_key: &str) -> Result<Option<StoredReply>> {
        let key = key.clone();
        let idempotency_key = idempotency_key.to_owned();
        self.read(|reply| ReadCmd::Reply {
            key,
            idempotency_key,
            reply,
        })
        .await
    }

    async fn paused(&self) -> Result<Vec<EntityKey>> {
        self.read(|reply| ReadCmd::Paused { reply }).await
    }

    async fn last_row(&self, key: &EntityKey) -> Result<Option<u64>> {
        let key = key.clone();
        self.read(|reply| ReadCmd::LastRow { key, reply }).await
    }

    /// Folds the log, truncates the WAL, stops the threads and releases the data directory.
    async fn close(&self) -> Result<()> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Err(Error::Closed);
        }
        // Reads are refused and the maintenance thread stopped first, so that the last
        // checkpoint has the WAL to itself.
        let shared = Arc::clone(&self.shared);
        let result = tokio::task::spawn_blocking(move || {
            shared.stop_maintenance();
            shared.writer.lock().close()
        })
        .await
        .map_err(|e| Error::Backend(format!("closing the store failed: {e}")))?;
        // Dropping the file releases the lock: another store may open the directory now.
        self.shared.lock.lock().take();
        result
    }

    fn catalog(&self) -> &dyn Catalog {
        self
    }
}

#[async_trait::async_trait]
impl Catalog for SqliteStore {
    async fn count(&self, kind: &str) -> Result<u64> {
        let kind = kind.to_owned();
        self.read(|reply| ReadCmd::Count { kind, reply }).await
    }

    async fn pending_of(&self, owner: &EntityKey, limit: usize) -> Result<Vec<PendingRow>> {
        let owner = owner.clone();
        self.read(|reply| ReadCmd::PendingOf {
            owner,
            limit,
            reply,
        })
        .await
    }

    async fn dead_letters(&self, kind: Option<&str>) -> Result<Vec<StoredDeadLetter>> {
        let kind = kind.map(str::to_owned);
        self.read(|reply| ReadCmd::DeadLetters { kind, reply })
            .await
    }

    async fn entities(&self, kind: &str, page: Page<'_>) -> Result<Vec<EntitySummary>> {
        let Page { after, limit } = page;
        let (kind, after) = (kind.to_owned(), after.map(str::to_owned));
        self.read(|reply| ReadCmd::Entities {
            kind,
            after,
            limit,
            reply,
        })
        .await
    }

    async fn query(&self, kind: &str, filter: &Filter, page: Page<'_>) -> Result<Vec<EntityState>> {
        let Page { after, limit } = page;
        let (kind, filter, after) = (kind.to_owned(), filter.clone(), after.map(str::to_owned));
        self.read(|reply| ReadCmd::Query {
            kind,
            filter,
            after,
            limit,
            reply,
        })
        .await
    }

    async fn create_index(&self, kind: &str, path: &perennial_storage::Path) -> Result<()> {
        let (kind, path) = (kind.to_owned(), path.clone());
        self.with_writer(move |w| query::create_index(w.conn_mut(), &kind, &path))
            .await
    }

    async fn drop_index(&self, kind: &str, path: &perennial_storage::Path) -> Result<bool> {
        let (kind, path) = (kind.to_owned(), path.clone());
        self.with_writer(move |w| query::drop_index(w.conn_mut(), &kind, &path))
            .await
    }

    async fn indexes(&self, kind: &str) -> Result<Vec<perennial_storage::Path>> {
        let kind = kind.to_owned();
        self.read(|reply| ReadCmd::Indexes { kind, reply }).await
    }

    async fn changes(
        &self,
        kind: &str,
        after: u64,
        limit: usize,
    ) -> Result<perennial_storage::ChangePage> {
        let kind = kind.to_owned();
        self.read(|reply| ReadCmd::Changes {
            kind,
            after,
            limit,
            reply,
        })
        .await
    }
}
