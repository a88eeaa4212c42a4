//! The PostgreSQL schema, its versions, and the durability settings checked at connect.
//!
//! Every table lives in the store's schema (`Options::schema`, default `perennial`), so
//! several stores (and tests) share one database without meeting.
//!
//! ```sql
//! -- The current state of every entity. Query it with psql:
//! --   SELECT id, state->'pot' FROM perennial.entities WHERE kind = 'table';
//! CREATE TABLE entities (
//!     kind text, id text,
//!     shard      integer NOT NULL,   -- shard_of(kind, id)
//!     version    bigint  NOT NULL,   -- steps committed so far (Journal kinds: the snapshot's step)
//!     updated_at bigint  NOT NULL,   -- milliseconds since the Unix epoch
//!     state      jsonb   NOT NULL,
//!     PRIMARY KEY (kind, id));
//! CREATE VIEW entity_state AS SELECT kind, id, shard, version, updated_at, state FROM entities;
//! -- One row per shard: the epoch that fences stale writers (and, in a cluster, its lease).
//! CREATE TABLE shards (shard integer PRIMARY KEY, epoch bigint NOT NULL, owner text,
//!                      claimed_at bigint);
//! CREATE TABLE dead_letters (seq bigserial PRIMARY KEY, kind text, id text, message text,
//!                            error text, attempts integer, at bigint);
//! CREATE TABLE journal (kind text, id text, step bigint, at bigint, entry text,
//!                       PRIMARY KEY (kind, id, step));
//! CREATE TABLE pending (kind text, id text, seq bigint, due bigint, class smallint,
//!                       target_kind text, target_id text, body text, PRIMARY KEY (kind, id, seq));
//! CREATE TABLE replies (kind text, id text, key text, at bigint, reply text,
//!                       PRIMARY KEY (kind, id, key));
//! CREATE TABLE paused (kind text, id text, at bigint, PRIMARY KEY (kind, id));
//! CREATE TABLE state_indexes (n serial PRIMARY KEY, kind text, path text, UNIQUE (kind, path));
//! CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);  -- 'format', 'shards'
//! -- Since format 2: the cluster. A shard's lease is its row in `shards`: `owner` holds it
//! -- until `expires_at` (ms, by the database's clock; NULL: never leased), and a new owner
//! -- gets a new epoch. Nodes heartbeat into `members`.
//! ALTER TABLE shards ADD COLUMN expires_at bigint;
//! CREATE TABLE members (node text PRIMARY KEY, address text NOT NULL, joined_at bigint NOT NULL,
//!                       heartbeat_at bigint NOT NULL);
//! -- Since format 3: each state's schema version (the kind's migrations); 1 before.
//! ALTER TABLE entities ADD COLUMN schema integer NOT NULL DEFAULT 1;
//! CREATE OR REPLACE VIEW entity_state AS
//!     SELECT kind, id, shard, version, updated_at, state, schema FROM entities;
//! -- Since format 4: the change feeds, one row per step of a kind that keeps one, numbered
//! -- in commit order across nodes (state NULL: deleted); per kind, how far expiry went.
//! CREATE TABLE changes (seq bigint PRIMARY KEY, kind text, id text, version bigint,
//!                       at bigint, state text);
//! CREATE INDEX changes_by_kind ON changes (kind, seq);
//! CREATE INDEX changes_by_age ON changes (kind, at);
//! CREATE SEQUENCE changes_seq;
//! CREATE TABLE changes_expired (kind text PRIMARY KEY, through bigint NOT NULL);
//! -- Added in any format, which older builds ignore (so a rolling upgrade can run both):
//! ALTER TABLE members ADD COLUMN IF NOT EXISTS build text NOT NULL DEFAULT '';
//! ```
//!
//! Unlike SQLite, PostgreSQL updates rows in place cheaply enough for one upsert statement per
//! batch, so there is no log to fold: `entities` is always exact.

use perennial_storage::Error;
use perennial_types::SHARDS;

use crate::errors::map_err;

/// The newest format this build reads and writes (`meta.format`).
pub const FORMAT_VERSION: u32 = 4;

/// Format 1, created in one transaction.
const CREATE_V1: &str = "
CREATE TABLE entities (
    kind       text    NOT NULL,
    id         text    NOT NULL,
    shard      integer NOT NULL,
    version    bigint  NOT NULL,
    updated_at bigint  NOT NULL,
    state      jsonb   NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE VIEW entity_state AS SELECT kind, id, shard, version, updated_at, state FROM entities;
CREATE TABLE shards (
    shard      integer PRIMARY KEY,
    epoch      bigint  NOT NULL,
    owner      text,
    claimed_at bigint
);
CREATE TABLE dead_letters (
    seq      bigserial PRIMARY KEY,
    kind     text    NOT NULL,
    id       text    NOT NULL,
    message  text    NOT NULL,
    error    text    NOT NULL,
    attempts integer NOT NULL,
    at       bigint  NOT NULL
);
CREATE INDEX dead_letters_by_kind ON dead_letters (kind, seq);
CREATE TABLE journal (
    kind  text   NOT NULL,
    id    text   NOT NULL,
    step  bigint NOT NULL,
    at    bigint NOT NULL,
    entry text   NOT NULL,
    PRIMARY KEY (kind, id, step)
);
CREATE TABLE pending (
    kind        text     NOT NULL,
    id          text     NOT NULL,
    seq         bigint   NOT NULL,
    due         bigint   NOT NULL,
    class       smallint NOT NULL,
    target_kind text     NOT NULL,
    target_id   text     NOT NULL,
    body        text     NOT NULL,
    PRIMARY KEY (kind, id, seq)
);
CREATE INDEX pending_by_due ON pending (due);
CREATE TABLE replies (
    kind  text   NOT NULL,
    id    text   NOT NULL,
    key   text   NOT NULL,
    at    bigint NOT NULL,
    reply text   NOT NULL,
    PRIMARY KEY (kind, id, key)
);
CREATE INDEX replies_by_age ON replies (at);
CREATE TABLE paused (
    kind text   NOT NULL,
    id   text   NOT NULL,
    at   bigint NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE state_indexes (
    n    serial PRIMARY KEY,
    kind text   NOT NULL,
    path text   NOT NULL,
    UNIQUE (kind, path)
);
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
";

/// Columns added without a new format (older builds neither read nor write them): each
/// member's build (its heartbeats say it; an older build leaves it empty).
const ADDITIVE: &str =
    "ALTER TABLE members ADD COLUMN IF NOT EXISTS build text NOT NULL DEFAULT ''";

/// From format 1 to 2: shard leases and membership (see the module docs).
const UPGRADE_TO_V2: &str = "
ALTER TABLE shards ADD COLUMN expires_at bigint;
CREATE TABLE members (
    node         text   PRIMARY KEY,
    address      text   NOT NULL,
    joined_at    bigint NOT NULL,
    heartbeat_at bigint NOT NULL
);
";

/// From format 2 to 3: each state's schema version.
const UPGRADE_TO_V3: &str = "
ALTER TABLE entities ADD COLUMN schema integer NOT NULL DEFAULT 1;
CREATE OR REPLACE VIEW entity_state AS
    SELECT kind, id, shard, version, updated_at, state, schema FROM entities;
";

/// From format 3 to 4: the change feeds of the kinds that keep one (see `writer.rs` for how
/// their numbers follow commit order across nodes).
const UPGRADE_TO_V4: &str = "
CREATE TABLE changes (
    seq     bigint PRIMARY KEY,
    kind    text   NOT NULL,
    id      text   NOT NULL,
    version bigint NOT NULL,
    at      bigint NOT NULL,
    state   text
);
CREATE INDEX changes_by_kind ON changes (kind, seq);
CREATE INDEX changes_by_age ON changes (kind, at);
CREATE SEQUENCE changes_seq;
CREATE TABLE changes_expired (kind text PRIMARY KEY, through bigint NOT NULL);
";

/// The database's clock, in milliseconds since the Unix epoch: leases and heartbeats are
/// judged by it, never by a node's clock.
pub(crate) const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Checks that the server commits durably: `fsync` on, and `synchronous_commit` not `off`.
pub(crate) async fn check_durable(client: &tokio_postgres::Client) -> Result<(), Error> {
    for (setting, bad, expected) in [
        ("fsync", "off", "on"),
        (
            "synchronous_commit",
            "off",
            "on, local, remote_write or remote_apply",
        ),
    ] {
        let actual: String = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .map_err(map_err)?
            .get(0);
        if actual.eq_ignore_ascii_case(bad) {
            return Err(Error::NotDurable {
                setting,
                actual,
                expected,
            });
        }
    }
    Ok(())
}

/// Creates the schema and its tables, or checks an existing one's format. Several nodes may
/// start at once: an advisory lock makes one of them create it while the others wait.
pub(crate) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<(), Error> {
    let tx = client.transaction().await.map_err(map_err)?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])
        .await
        .map_err(map_err)?;
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
        .await
        .map_err(map_err)?;
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                             WHERE table_schema = $1 AND table_name = 'meta')",
            &[&schema],
        )
        .await
        .map_err(map_err)?
        .get(0);
    if !exists {
        tx.batch_execute(CREATE_V1).await.map_err(map_err)?;
        tx.execute(
            "INSERT INTO shards (shard, epoch) SELECT s, 0 FROM generate_series(0, $1 - 1) AS s",
            &[&i32::try_from(SHARDS).unwrap_or(i32::MAX)],
        )
        .await
        .map_err(map_err)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('format', '1'), ('shards', $1)",
            &[&SHARDS.to_string()],
        )
        .await
        .map_err(map_err)?;
    }
    let format = meta(&tx, "format").await?;
    let format: u32 = format
        .parse()
        .map_err(|_| Error::Corrupt(format!("meta.format is {format:?}, not a number")))?;
    if format > FORMAT_VERSION {
        return Err(Error::TooNew {
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    // Upgrades, each step in order, in this transaction.
    if format < 2 {
        tx.batch_execute(UPGRADE_TO_V2).await.map_err(map_err)?;
    }
    if format < 3 {
        tx.batch_execute(UPGRADE_TO_V3).await.map_err(map_err)?;
    }
    if format < 4 {
        tx.batch_execute(UPGRADE_TO_V4).await.map_err(map_err)?;
    }
    if format < FORMAT_VERSION {
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'format'",
            &[&FORMAT_VERSION.to_string()],
        )
        .await
        .map_err(map_err)?;
    }
    // Additions older builds ignore, so made without a new format: a build that does not
    // know them still opens the tables, as in a rolling upgrade, where both run at once.
    tx.batch_execute(ADDITIVE).await.map_err(map_err)?;
    let shards = meta(&tx, "shards").await?;
    if shards != SHARDS.to_string() {
        return Err(Error::Corrupt(format!(
            "the data has {shards} shards, this build uses {SHARDS}"
        )));
    }
    tx.commit().await.map_err(map_err)
}

/// The value of `key` in `meta`.
async fn meta(tx: &tokio_postgres::Transaction<'_>, key: &str) -> Result<String, Error> {
    let row = tx
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
        .await
        .map_err(map_err)?;
    row.map(|r| r.get(0))
        .ok_or_else(|| Error::Corrupt(format!("the meta table has no {key:?}")))
}

/// `name` as an SQL identifier, quoted.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
