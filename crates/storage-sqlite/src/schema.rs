//! The SQLite schema, its version, and the durability settings every connection checks.
//!
//! ```sql
//! -- The current state of every entity, as JSON text. Query this one.
//! CREATE VIEW entity_state AS ...;  -- same columns as `entities`
//!
//! -- One row per entity: its state as of the last fold. A rowid table, with its key in an
//! -- index of its own (stores made by earlier builds have it `WITHOUT ROWID`; see below).
//! CREATE TABLE entities (
//!     kind       TEXT    NOT NULL,  -- the kind's name, e.g. 'table'
//!     id         TEXT    NOT NULL,  -- the entity id
//!     shard      INTEGER NOT NULL,  -- shard_of(kind, id)
//!     version    INTEGER NOT NULL,  -- steps committed so far
//!     updated_at INTEGER NOT NULL,  -- milliseconds since the Unix epoch
//!     state      TEXT    NOT NULL,  -- the state, JSON
//!     schema     INTEGER NOT NULL DEFAULT 1,  -- since format 5: the state's schema version
//!     PRIMARY KEY (kind, id)
//! );
//! -- States committed since: one row per commit, its states as a JSON array of
//! -- {"kind", "id", "shard", "version", "schema", "state"} (the state as a JSON string;
//! -- "schema" only when it is not 1; since format 6, "state": null for an entity the commit
//! -- deleted, after its other states); folded into `entities` a slice at a time (in key
//! -- order) by later commits, then deleted.
//! CREATE TABLE state_log (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, states TEXT NOT NULL);
//! -- The log's states, one row each (`pos` orders the states of one commit).
//! CREATE VIEW logged_states AS ...;  -- seq, pos, kind, id, shard, version, updated_at, state,
//!                                    -- schema
//! -- One row per shard: the epoch that fences stale writers.
//! CREATE TABLE shards (shard INTEGER PRIMARY KEY, epoch INTEGER NOT NULL,
//!                      owner TEXT, claimed_at INTEGER);
//! -- Messages set aside after repeated failures.
//! CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
//!     id TEXT NOT NULL, message TEXT NOT NULL, error TEXT NOT NULL,
//!     attempts INTEGER NOT NULL, at INTEGER NOT NULL);
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
//! -- Since format 2: the journals of `Journal` kinds, one row per step. `entry` is a JSON
//! -- object: {"msg": the message, "seed": the step's random seed (hex) if it used one,
//! -- "init": {"at_us", "seed"} on a first step, "reply": a digest of the reply}.
//! -- For these kinds, `entities` holds the latest snapshot (if the state is serializable),
//! -- whose `version` is the step it covers.
//! CREATE TABLE journal (
//!     kind  TEXT    NOT NULL,
//!     id    TEXT    NOT NULL,
//!     step  INTEGER NOT NULL,  -- 1, 2, 3, ... per entity
//!     at    INTEGER NOT NULL,  -- microseconds since the Unix epoch: the step's ctx.now()
//!     entry TEXT    NOT NULL,
//!     PRIMARY KEY (kind, id, step)
//! ) WITHOUT ROWID;
//! -- Since format 3: timers, messages between entities (the outbox) and effects, from the
//! -- step that created them until the step that applies them (which deletes the row in its
//! -- own transaction, so each is applied exactly once).
//! CREATE TABLE pending (
//!     kind        TEXT    NOT NULL,  -- the owner: the entity whose step created the row
//!     id          TEXT    NOT NULL,
//!     seq         INTEGER NOT NULL,  -- unique per owner: (step << 20) + n
//!     due         INTEGER NOT NULL,  -- milliseconds since the Unix epoch
//!     class       INTEGER NOT NULL,  -- 0 timer, 1 message, 2 effect, 3 ask
//!     target_kind TEXT    NOT NULL,  -- who gets the message (the owner, for timers, effects)
//!     target_id   TEXT    NOT NULL,
//!     body        TEXT    NOT NULL,  -- the message (JSON), or the effect {"effect", "input"}
//!     PRIMARY KEY (kind, id, seq)
//! ) WITHOUT ROWID;
//! CREATE INDEX pending_by_due ON pending (due);
//! -- The first reply to each call made with an idempotency key, until it expires.
//! CREATE TABLE replies (
//!     kind TEXT NOT NULL, id TEXT NOT NULL, key TEXT NOT NULL,
//!     at   INTEGER NOT NULL,  -- when the call was applied, ms since the Unix epoch
//!     reply TEXT NOT NULL,    -- the reply's JSON, byte for byte
//!     PRIMARY KEY (kind, id, key)
//! ) WITHOUT ROWID;
//! CREATE INDEX replies_by_age ON replies (at);
//! -- Since format 4: the indexes made by `Catalog::create_index`, one per kind and path; index
//! -- `n` is `state_index_<n>` ON entities (json_extract(state, <path>), id) WHERE kind = <kind>.
//! CREATE TABLE state_indexes (n INTEGER PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL,
//!                             UNIQUE (kind, path));
//! -- Since format 4: entities paused by an operator (`at`: when, ms since the Unix epoch).
//! CREATE TABLE paused (kind TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL,
//!                      PRIMARY KEY (kind, id)) WITHOUT ROWID;
//! -- Since format 7: the change feeds of kinds that keep one, one row per step, numbered in
//! -- commit order (`state` NULL: the step deleted the entity); and per kind, the highest
//! -- number expiry deleted.
//! CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
//!     id TEXT NOT NULL, version INTEGER NOT NULL, at INTEGER NOT NULL, state TEXT);
//! CREATE INDEX changes_by_kind ON changes (kind, seq);
//! CREATE INDEX changes_by_age ON changes (kind, at);
//! CREATE TABLE changes_expired (kind TEXT PRIMARY KEY, through INTEGER NOT NULL) WITHOUT ROWID;
//! -- Since format 8: pending rows and kept replies in their first commits, in rowid order,
//! -- same columns as `pending` and `replies`; most are deleted here, the rest moved there
//! -- after a few commits (see the writer). `all_pending` shows every pending row.
//! CREATE TABLE recent_pending (...);  -- kind, id, seq, due, class, target_kind, target_id,
//!                                     -- body
//! CREATE TABLE recent_replies (...);  -- kind, id, key, at, reply
//! CREATE VIEW all_pending AS ...;     -- pending UNION ALL recent_pending
//! ```
//!
//! Why two tables: a commit that updated each entity's row in place would rewrite one
//! random page per entity, so a commit of a few hundred steps would write megabytes. The log
//! grows at its end, one row per commit (one insert, however many states), and the fold
//! rewrites neighbouring keys together. `entity_state` merges the two, so it always shows the
//! latest committed state; a cleanly stopped store has an empty log, and then `entities`
//! alone is exact.
//!
//! ```sh
//! sqlite3 data/perennial.db \
//!   "SELECT id, json_extract(state, '$.value') FROM entity_state WHERE kind = 'counter'"
//! sqlite3 data/perennial.db \
//!   "SELECT step, entry ->> '$.msg' FROM journal WHERE kind = 'table' AND id = 't1' ORDER BY step"
//! ```
//!
//! Why `entities` keeps its rows in a rowid table: a `WITHOUT ROWID` table keeps its rows in
//! its key's B-tree, where SQLite stores at most about a quarter of a page (1,002 bytes of a
//! 4 KiB page) of a row and the rest in an overflow page of its own. States of 1 KiB or more,
//! common for real entities, then took two pages each, a 4 KiB page for their last few
//! bytes: a store of a million 1 KiB states took 4.7 GB instead of 1.4 GB, and reading one
//! from the disk read two pages. A rowid table keeps a row of up to 4,061 bytes in its
//! page; the key's index is small and mostly cached. Either layout serves with the same
//! statements, so older stores keep theirs.
//!
//! `PRAGMA user_version` holds [`FORMAT_VERSION`]; a file from a newer version is refused.

use perennial_storage::Error;
use perennial_types::SHARDS;
use rusqlite::Connection;

use crate::errors::map_err;

/// The newest on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 8;

const CREATE_V1: &str = "
CREATE TABLE entities (
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    shard      INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE state_log (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    states     TEXT    NOT NULL
);
CREATE VIEW logged_states AS
    SELECT l.seq AS seq, CAST(j.key AS INTEGER) AS pos,
           j.value ->> '$.kind' AS kind, j.value ->> '$.id' AS id,
           j.value ->> '$.shard' AS shard, j.value ->> '$.version' AS version,
           l.at AS updated_at, j.value ->> '$.state' AS state
      FROM state_log AS l, json_each(l.states) AS j;
CREATE VIEW entity_state AS
    SELECT kind, id, shard, version, updated_at, state FROM (
        SELECT *, row_number() OVER (PARTITION BY kind, id ORDER BY seq DESC, pos DESC) AS latest
          FROM logged_states)
     WHERE latest = 1
    UNION ALL
    SELECT kind, id, shard, version, updated_at, state FROM entities
     WHERE (kind, id) NOT IN (SELECT kind, id FROM logged_states);
CREATE TABLE shards (
    shard      INTEGER PRIMARY KEY,
    epoch      INTEGER NOT NULL,
    owner      TEXT,
    claimed_at INTEGER
);
CREATE TABLE dead_letters (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind     TEXT    NOT NULL,
    id       TEXT    NOT NULL,
    message  TEXT    NOT NULL,
    error    TEXT    NOT NULL,
    attempts INTEGER NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX dead_letters_by_kind ON dead_letters (kind, seq);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
";

/// From format 1 to 2: journals.
const UPGRADE_TO_V2: &str = "
CREATE TABLE journal (
    kind  TEXT    NOT NULL,
    id    TEXT    NOT NULL,
    step  INTEGER NOT NULL,
    at    INTEGER NOT NULL,
    entry TEXT    NOT NULL,
    PRIMARY KEY (kind, id, step)
) WITHOUT ROWID;
";

/// From format 2 to 3: pending timers, messages and effects; replies for idempotency keys.
const UPGRADE_TO_V3: &str = "
CREATE TABLE pending (
    kind        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    due         INTEGER NOT NULL,
    class       INTEGER NOT NULL,
    target_kind TEXT    NOT NULL,
    target_id   TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    PRIMARY KEY (kind, id, seq)
) WITHOUT ROWID;
CREATE INDEX pending_by_due ON pending (due);
CREATE TABLE replies (
    kind  TEXT    NOT NULL,
    id    TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    at    INTEGER NOT NULL,
    reply TEXT    NOT NULL,
    PRIMARY KEY (kind, id, key)
) WITHOUT ROWID;
CREATE INDEX replies_by_age ON replies (at);
";

/// From format 3 to 4: indexes of entity state by a path (see `query.rs`); paused entities.
const UPGRADE_TO_V4: &str = "
CREATE TABLE state_indexes (
    n    INTEGER PRIMARY KEY,
    kind TEXT    NOT NULL,
    path TEXT    NOT NULL,
    UNIQUE (kind, path)
);
CREATE TABLE paused (
    kind TEXT    NOT NULL,
    id   TEXT    NOT NULL,
    at   INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
";

/// From format 4 to 5: each state's schema version (the kind's migrations, see
/// `perennial_core::Process::MIGRATIONS`); states stored before are at version 1.
const UPGRADE_TO_V5: &str = "
ALTER TABLE entities ADD COLUMN schema INTEGER NOT NULL DEFAULT 1;
DROP VIEW entity_state;
DROP VIEW logged_states;
CREATE VIEW logged_states AS
    SELECT l.seq AS seq, CAST(j.key AS INTEGER) AS pos,
           j.value ->> '$.kind' AS kind, j.value ->> '$.id' AS id,
           j.value ->> '$.shard' AS shard, j.value ->> '$.version' AS version,
           l.at AS updated_at, j.value ->> '$.state' AS state,
           coalesce(j.value ->> '$.schema', 1) AS schema
      FROM state_log AS l, json_each(l.states) AS j;
CREATE VIEW entity_state AS
    SELECT kind, id, shard, version, updated_at, state, schema FROM (
        SELECT *, row_number() OVER (PARTITION BY kind, id ORDER BY seq DESC, pos DESC) AS latest
          FROM logged_states)
     WHERE latest = 1
    UNION ALL
    SELECT kind, id, shard, version, updated_at, state, schema FROM entities
     WHERE (kind, id) NOT IN (SELECT kind, id FROM logged_states);
";

/// From format 5 to 6: the log may say an entity was deleted (`"state": null`, see
/// [`perennial_storage::EntityDelete`]); `entity_state` no longer shows it. A build of
/// format 5 would read such a log as corrupt, and refuses the file by its version first.
const UPGRADE_TO_V6: &str = "
DROP VIEW entity_state;
CREATE VIEW entity_state AS
    SELECT kind, id, shard, version, updated_at, state, schema FROM (
        SELECT *, row_number() OVER (PARTITION BY kind, id ORDER BY seq DESC, pos DESC) AS latest
          FROM logged_states)
     WHERE latest = 1 AND state IS NOT NULL
    UNION ALL
    SELECT kind, id, shard, version, updated_at, state, schema FROM entities
     WHERE (kind, id) NOT IN (SELECT kind, id FROM logged_states);
";

/// From format 6 to 7: the change feeds of the kinds that keep one. `AUTOINCREMENT`, so a
/// number is never given twice, even after expiry deleted the last rows: a reader's cursor
/// stays valid.
const UPGRADE_TO_V7: &str = "
CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    version INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    state   TEXT
);
CREATE INDEX changes_by_kind ON changes (kind, seq);
CREATE INDEX changes_by_age ON changes (kind, at);
CREATE TABLE changes_expired (kind TEXT PRIMARY KEY, through INTEGER NOT NULL) WITHOUT ROWID;
";

/// From format 7 to 8: pending rows and kept replies in their first commits (see
/// [`crate::recent`]), in rowid tables without an index, and every pending row in one view.
const UPGRADE_TO_V8: &str = "
CREATE TABLE recent_pending (
    kind        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    due         INTEGER NOT NULL,
    class       INTEGER NOT NULL,
    target_kind TEXT    NOT NULL,
    target_id   TEXT    NOT NULL,
    body        TEXT    NOT NULL
);
CREATE TABLE recent_replies (
    kind  TEXT    NOT NULL,
    id    TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    at    INTEGER NOT NULL,
    reply TEXT    NOT NULL
);
CREATE VIEW all_pending AS
    SELECT kind, id, seq, due, class, target_kind, target_id, body FROM pending
    UNION ALL
    SELECT kind, id, seq, due, class, target_kind, target_id, body FROM recent_pending;
";

/// The upgrades from format 1, in order: the first makes format 2.
const UPGRADES: [&str; 7] = [
    UPGRADE_TO_V2,
    UPGRADE_TO_V3,
    UPGRADE_TO_V4,
    UPGRADE_TO_V5,
    UPGRADE_TO_V6,
    UPGRADE_TO_V7,
    UPGRADE_TO_V8,
];

/// Sets the durability pragmas on a connection and checks that SQLite took them.
///
/// WAL with `synchronous=FULL` fsyncs the WAL at every commit. `NORMAL` would fsync only at
/// checkpoints, which acknowledges commits that a power loss can take back.
pub(crate) fn set_durable(conn: &Connection) -> Result<(), Error> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(map_err)?;
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(map_err)?;
    check_durable(conn, &mode)
}

/// Checks that a connection commits durably; see [`set_durable`].
pub(crate) fn check_durable(conn: &Connection, journal_mode: &str) -> Result<(), Error> {
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NotDurable {
            setting: "PRAGMA journal_mode",
            actual: journal_mode.to_owned(),
            expected: "wal",
        });
    }
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(map_err)?;
    if sync < 2 {
        return Err(Error::NotDurable {
            setting: "PRAGMA synchronous",
            actual: sync.to_string(),
            expected: "2 (FULL) or 3 (EXTRA)",
        });
    }
    Ok(())
}

/// The file's format version (0 for an empty file); a file from a newer version is refused
/// with [`Error::TooNew`].
pub(crate) fn format_of(conn: &Connection) -> Result<u32, Error> {
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(map_err)?;
    if version > FORMAT_VERSION {
        return Err(Error::TooNew {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(version)
}

/// Creates the schema in an empty file, or upgrades an older one, step by step, each step in
/// its own transaction; then checks the format.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let version = format_of(conn)?;
    if version == 0 {
        let tx = conn.transaction().map_err(map_err)?;
        tx.execute_batch(CREATE_V1).map_err(map_err)?;
        {
            let mut insert = tx
                .prepare("INSERT INTO shards (shard, epoch) VALUES (?1, 0)")
                .map_err(map_err)?;
            for shard in 0..SHARDS {
                insert.execute([shard]).map_err(map_err)?;
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('shards', ?1)",
            [SHARDS.to_string()],
        )
        .map_err(map_err)?;
        tx.pragma_update(None, "user_version", 1).map_err(map_err)?;
        tx.commit().map_err(map_err)?;
    }
    for (to, upgrade) in (2..).zip(UPGRADES) {
        if version < to {
            let tx = conn.transaction().map_err(map_err)?;
            tx.execute_batch(upgrade).map_err(map_err)?;
            tx.pragma_update(None, "user_version", to)
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
        }
    }
    let shards: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'shards'", [], |r| {
            r.get(0)
        })
        .map_err(map_err)?;
    if shards != SHARDS.to_string() {
        return Err(Error::Corrupt(format!(
            "the data has {shards} shards, this build uses {SHARDS}"
        )));
    }
    Ok(())
}
