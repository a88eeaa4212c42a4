//! Perennial's embedded store: one SQLite file per data directory.
//!
//! The file is `DIR/perennial.db`, in WAL mode with `synchronous=FULL` (checked at open: a
//! store that would acknowledge writes it has not flushed refuses to start). Entity state is
//! JSON text, so `sqlite3 DIR/perennial.db "select json_extract(state, '$.value') from
//! entity_state"` reads any entity without Perennial's types. The schema, and why commits
//! append to a log that is folded into the `entities` table later, is in [`schema`].
//!
//! # Connections and threads
//! - The **writer** (the write connection, behind a mutex) commits one batch per transaction
//!   on the caller's thread, so a batch costs one WAL fsync however many entities it carries;
//!   the same transaction folds older states from the log into `entities`. It checkpoints the
//!   WAL itself every few hundred commits, so the WAL file is reused instead of growing.
//! - A few **reader** threads serve loads from their own read-only connections (WAL readers
//!   never wait for the writer), or from memory for states not folded yet.
//! - A **maintenance** thread folds and checkpoints when no commit has come for a while.
//!
//! [`backup`] copies a data directory's store beside a running node, consistent to one
//! commit, and [`restore`] makes a new data directory of a copy.
//!
//! [`Inspector`] reads a data directory without writing (for `perennial inspect`), beside a
//! running node or on a stopped one.
//!
//! ```
//! use perennial_storage::Store;
//! use perennial_storage_sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), perennial_storage::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(dir.path())?;
//! let key = perennial_types::EntityKey::new("counter", "c1".parse().unwrap());
//! assert_eq!(store.load(&key).await?, None);
//! # Ok(())
//! # }
//! ```

pub mod schema;

mod backup;
mod changes;
mod errors;
mod inspect;
mod pending;
mod query;
mod reader;
mod recent;
mod rows;
mod store;
mod writer;

pub use backup::{BackupReport, BackupSummary, backup, check_backup, restore};
pub use inspect::{Inspector, KindSummary, StoredState};
pub use perennial_storage::EntitySummary;
#[doc(hidden)]
pub use store::decode_log_row_for_fuzzing;
pub use store::{Options, SqliteStore};
