//! Perennial's store on PostgreSQL, for nodes that share one database (cluster mode).
//!
//! State is `jsonb`, so `psql` reads and queries it (`SELECT id, state->'pot' FROM
//! perennial.entities WHERE kind = 'table'`); the tables are described in [`schema`]. The
//! store creates its schema (default `perennial`) and tables on first connect, and refuses a
//! server that would acknowledge commits it has not flushed (`fsync` or `synchronous_commit`
//! off).
//!
//! # Connections
//! - The **writer** connection commits one batch per transaction (group commit: each kind of
//!   row is one statement over arrays), and claims shards. Every write is fenced under a lock
//!   on its shard's row; see the `writer` module.
//! - A few **reader** connections serve loads and listings; `tokio-postgres` pipelines the
//!   queries of many tasks on each.
//!
//! The [`cluster`] module keeps membership and shard leases in the same database.
//!
//! # TLS
//! The address asks for it as libpq's does: `sslmode=verify-full` with `sslrootcert=FILE`
//! (the authorities to trust, PEM; `system` for the operating system's) checks the server's
//! certificate and host name; `verify-ca` the certificate only; `require` encrypts without
//! checking; `prefer` (the default) encrypts when the server offers TLS; `disable` never does.
//! `sslcert` and `sslkey` give a client certificate. Files are read at each connection, so a
//! renewed certificate is used from the next connection on. Several hosts
//! (`host=a,b target_session_attrs=read-write`) are tried in turn.
//!
//! [`Store::commit`] blocks its thread while the transaction runs on the async runtime the
//! store was connected on; the runtime's committer thread is where it is meant to run.
//!
//! ```no_run
//! use perennial_storage_postgres::PostgresStore;
//!
//! # async fn example() -> Result<(), perennial_storage::Error> {
//! let store = PostgresStore::connect("host=127.0.0.1 user=postgres dbname=test").await?;
//! # Ok(())
//! # }
//! ```

pub mod cluster;
pub mod schema;

mod errors;
mod query;
#[cfg(feature = "test-util")]
pub mod test_server;
#[cfg(feature = "test-util")]
pub mod test_util;
mod tls;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use perennial_storage::{
    Batch, Catalog, ChangePage, CommitOutcome, DeadLetter, EntityState, EntitySummary, Error,
    Filter, JournalEntry, Page, Path, Pending, PendingClass, Record, Result, Store, StoredChange,
    StoredDeadLetter, StoredReply,
};
use perennial_types::{EntityId, EntityKey, Epoch, ShardId};
use tokio_postgres::{Client, NoTls};

use crate::errors::{from_sql, map_err, to_sql};
pub use perennial_storage::{Directory, Lease, Member};

/// Tuning for a [`PostgresStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The schema that holds the store's tables (created if missing). Default: `perennial`.
    pub schema: String,
    /// How many connections serve reads. Default: 2.
    pub readers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            schema: "perennial".to_owned(),
            readers: 2,
        }
    }
}

/// Perennial's [`Store`] on PostgreSQL. See the [crate documentation](crate).
///
/// Cloning is cheap; clones share the connections.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    schema: String,
    /// Where to connect again when a connection is lost.
    config: tokio_postgres::Config,
    /// How, as to TLS (its files are read again at each connection).
    tls: tls::Tls,
    writer: tokio::sync::Mutex<writer::Writer>,
    /// Replaced by a new connection when one is found closed.
    readers: Vec<parking_lot::Mutex<Arc<Client>>>,
    next_reader: AtomicUsize,
    /// The runtime the connections run on: `commit` blocks on it.
    runtime: tokio::runtime::Handle,
    closed: AtomicBool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host/db` or `host=… user=…
    /// dbname=…`) with default [`Options`]; creates the schema and tables if missing.
    ///
    /// Fails with [`Error::NotDurable`] if the server does not flush commits, with
    /// [`Error::TooNew`] if a newer Perennial made the tables, and with [`Error::Io`] if the
    /// server cannot be reached. Must be called inside a Tokio runtime, which then runs the
    /// connections.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Options::default()).await
    }

    /// Connects with the given options.
    pub async fn connect_with(url: &str, options: Options) -> Result<Self> {
        let (config, tls) = tls::parse(url)?;
        let mut writer = open_primary(&config, &tls, &options.schema).await?;
        schema::check_durable(&writer).await?;
        schema::migrate(&mut writer, &options.schema).await?;
        let mut readers = Vec::with_capacity(options.readers.max(1));
        for _ in 0..options.readers.max(1) {
            readers.push(parking_lot::Mutex::new(Arc::new(
                open(&config, &tls, &options.schema).await?,
            )));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                tls,
                schema: options.schema,
                writer: tokio::sync::Mutex::new(writer::Writer::new(writer)),
                readers,
                next_reader: AtomicUsize::new(0),
                runtime: tokio::runtime::Handle::current(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The schema that holds the store's tables.
    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// A read connection, in turn; one found closed (the server restarted, or ended the
    /// session) is replaced by a new one.
    async fn reader(&self) -> Result<Arc<Client>> {
        self.check_open()?;
        let readers = &self.shared.readers;
        let n = self.shared.next_reader.fetch_add(1, Ordering::Relaxed);
        let slot = &readers[n % readers.len()];
        let client = Arc::clone(&slot.lock());
        if !client.is_closed() {
            return Ok(client);
        }
        let fresh =
            Arc::new(open(&self.shared.config, &self.shared.tls, &self.shared.schema).await?);
        tracing::warn!("a PostgreSQL read connection was lost; connected again");
        *slot.lock() = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// The write connection, locked; connected again first if it was lost. The statements
    /// it had prepared are prepared again on the new connection.
    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, writer::Writer>> {
        self.check_open()?;
        let mut writer = self.shared.writer.lock().await;
        if writer.client.is_closed() || writer.stale {
            let client = open(&self.shared.config, &self.shared.tls, &self.shared.schema).await?;
            tracing::warn!(
                read_only = writer.stale,
                "the PostgreSQL write connection was lost, or its server is read-only; \
                 connected again"
            );
            *writer = writer::Writer::new(client);
        }
        Ok(writer)
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }
}

/// Opens one connection (with TLS as the address asks), runs it on the current runtime, and
/// points it at `schema`.
async fn open(config: &tokio_postgres::Config, tls: &tls::Tls, schema: &str) -> Result<Client> {
    let failed = |e: tokio_postgres::Error| {
        Error::Io(format!(
            "cannot connect to PostgreSQL: {}{}",
            errors::with_detail(&e),
            tls.hint()
        ))
    };
    let client = if tls.mode == tls::SslMode::Disable {
        let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
        tokio::spawn(run(connection));
        client
    } else {
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls.client_config()?);
        let (client, connection) = config.connect(connector).await.map_err(failed)?;
        tokio::spawn(run(connection));
        client
    };
    client
        .batch_execute(&format!(
            // A transaction left open by a stalled node (SIGSTOP) would hold its shard
            // rows locked, so no other node could take them: the server ends it instead.
            "SET search_path TO {}; SET idle_in_transaction_session_timeout = '2s';
             SET application_name = 'perennial/{}'",
            schema::ident(schema),
            schema.replace('\'', "''")
        ))
        .await
        .map_err(map_err)?;
    Ok(client)
}

/// Opens the write connection on a primary: on a standby (read-only, in recovery), says so
/// and waits, connecting again every second, until the server is promoted or the address
/// leads to a primary (`target_session_attrs=read-write` with several hosts).
async fn open_primary(
    config: &tokio_postgres::Config,
    tls: &tls::Tls,
    schema: &str,
) -> Result<Client> {
    let mut waited = 0u64;
    loop {
        let client = open(config, tls, schema).await?;
        if !in_recovery(&client).await? {
            if waited > 0 {
                tracing::info!(waited_s = waited, "the PostgreSQL server is a primary now");
            }
            return Ok(client);
        }
        if waited.is_multiple_of(10) {
            tracing::warn!(
                waited_s = waited,
                "the PostgreSQL server is a standby (read-only, in recovery): waiting until it \
                 is promoted; an address with several hosts and \
                 target_session_attrs=read-write finds the primary by itself"
            );
        }
        drop(client);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        waited += 1;
    }
}

/// Whether the server is a standby.
async fn in_recovery(client: &Client) -> Result<bool> {
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(map_err)?;
    Ok(row.get(0))
}

/// Drives a connection until it ends.
async fn run<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::error!(error = %e, "a PostgreSQL connection failed");
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn entity_key(kind: String, id: &str, what: &str) -> Result<EntityKey> {
    let id =
        EntityId::new(id).map_err(|e| Error::Corrupt(format!("{what} has an invalid id: {e}")))?;
    Ok(EntityKey::new(kind, id))
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn claim(&self, owner: &str, shards: &[ShardId]) -> Result<Epoch> {
        self.check_open()?;
        let mut writer = self.writer().await?;
        writer::claim(&mut writer.client, owner, shards).await
    }

    async fn load(&self, key: &EntityKey) -> Result<Option<Record>> {
        let row = self
            .reader()
            .await?
            .query_opt(
                "SELECT state::text, version, schema FROM entities WHERE kind = $1 AND id = $2",
                &[&&*key.kind, &key.id.as_str()],
            )
            .await
            .map_err(map_err)?;
        row.map(|r| {
            Ok(Record {
                state: r.get(0),
                version: from_sql(r.get(1), "entity version")?,
                schema: schema_from_sql(r.get(2), key)?,
            })
        })
        .transpose()
    }

    async fn journal(&self, key: &EntityKey, after: u64, max: usize) -> Result<Vec<JournalEntry>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT step, at, entry FROM journal
                  WHERE kind = $1 AND id = $2 AND step > $3 ORDER BY step LIMIT $4",
                &[&&*key.kind, &key.id.as_str(), &to_sql(after), &limit],
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(JournalEntry {
                    step: from_sql(r.get(0), "journal step")?,
                    at_us: r.get(1),
                    entry: Arc::from(r.get::<_, String>(2)),
                })
            })
            .collect()
    }

    fn commit(&self, batch: Batch) -> Result<CommitOutcome> {
        self.check_open()?;
        let run = || {
            self.shared.runtime.block_on(async {
                let mut writer = self.writer().await?;
                let result = writer::commit(&mut writer, &batch).await;
                if matches!(&result, Err(Error::Io(m)) if m.starts_with(errors::READ_ONLY)) {
                    writer.stale = true;
                }
                result
            })
        };
        // On a worker thread of a multi-threaded runtime (a test calling `commit` from a
        // task), tell the runtime this thread blocks; elsewhere (the committer thread, a
        // blocking task) block on the runtime directly.
        match tokio::runtime::Handle::try_current() {
            Ok(current)
                if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }

    async fn due(&self, before_ms: i64, limit: usize) -> Result<Vec<Pending>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT kind, id, seq, due, class, target_kind, target_id, body FROM pending
                  WHERE due <= $1 ORDER BY due LIMIT $2",
                &[&before_ms, &limit],
            )
            .await
            .map_err(map_err)?;
        pending_rows(&rows)
    }

    async fn reply(&self, key: &EntityKey, idempotency_key: &str) -> Result<Option<StoredReply>> {
        let row = self
            .reader()
            .await?
            .query_opt(
                "SELECT reply, at FROM replies WHERE kind = $1 AND id = $2 AND key = $3",
                &[&&*key.kind, &key.id.as_str(), &idempotency_key],
            )
            .await
            .map_err(map_err)?;
        Ok(row.map(|r| StoredReply {
            reply: r.get(0),
            at_ms: r.get(1),
        }))
    }

    async fn last_row(&self, key: &EntityKey) -> Result<Option<u64>> {
        let row = self
            .reader()
            .await?
            .query_one(
                "SELECT max(seq) FROM pending WHERE kind = $1 AND id = $2",
                &[&&*key.kind, &key.id.as_str()],
            )
            .await
            .map_err(map_err)?;
        let seq: Option<i64> = row.get(0);
        seq.map(|s| from_sql(s, "a pending row's number"))
            .transpose()
    }

    async fn paused(&self) -> Result<Vec<EntityKey>> {
        let rows = self
            .reader()
            .await?
            .query("SELECT kind, id FROM paused ORDER BY kind, id", &[])
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| entity_key(r.get(0), r.get(1), "a paused entity"))
            .collect()
    }

    async fn close(&self) -> Result<()> {
        // Waits for a commit in progress; later calls fail.
        let _writer = self.writer().await?;
        self.shared.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn catalog(&self) -> &dyn Catalog {
        self
    }
}

#[async_trait::async_trait]
impl Catalog for PostgresStore {
    async fn count(&self, kind: &str) -> Result<u64> {
        let row = self
            .reader()
            .await?
            .query_one(
                "SELECT count(*) FROM (SELECT id FROM entities WHERE kind = $1
                                       UNION SELECT id FROM journal WHERE kind = $1) AS ids",
                &[&kind],
            )
            .await
            .map_err(map_err)?;
        from_sql(row.get(0), "entity count")
    }

    async fn pending_of(&self, owner: &EntityKey, limit: usize) -> Result<Vec<Pending>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT kind, id, seq, due, class, target_kind, target_id, body FROM pending
                  WHERE kind = $1 AND id = $2 ORDER BY seq LIMIT $3",
                &[&&*owner.kind, &owner.id.as_str(), &limit],
            )
            .await
            .map_err(map_err)?;
        pending_rows(&rows)
    }

    async fn dead_letters(&self, kind: Option<&str>) -> Result<Vec<StoredDeadLetter>> {
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT seq, kind, id, message, error, attempts, at FROM dead_letters
                  WHERE $1::text IS NULL OR kind = $1 ORDER BY seq",
                &[&kind],
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let seq = from_sql(r.get(0), "dead letter number")?;
                let attempts: i32 = r.get(5);
                Ok(StoredDeadLetter {
                    seq,
                    letter: DeadLetter {
                        key: entity_key(r.get(1), r.get(2), &format!("dead letter {seq}"))?,
                        message: r.get(3),
                        error: r.get(4),
                        attempts: u32::try_from(attempts).unwrap_or(0),
                        at_ms: r.get(6),
                    },
                })
            })
            .collect()
    }

    async fn entities(&self, kind: &str, page: Page<'_>) -> Result<Vec<EntitySummary>> {
        let Page { after, limit } = page;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .reader()
            .await?
            .query(
                "WITH ids AS (
                     SELECT id FROM entities WHERE kind = $1 AND id > $2
                     UNION SELECT DISTINCT id FROM journal WHERE kind = $1 AND id > $2
                     ORDER BY id LIMIT $3)
                 SELECT ids.id, coalesce(s.version, 0), coalesce(s.updated_at, 0),
                        coalesce(j.step, 0), coalesce(j.at, 0), coalesce(s.schema, 1)
                   FROM ids
                   LEFT JOIN entities AS s ON s.kind = $1 AND s.id = ids.id
                   LEFT JOIN LATERAL (SELECT step, at FROM journal
                                       WHERE kind = $1 AND id = ids.id
                                       ORDER BY step DESC LIMIT 1) AS j ON true
                  ORDER BY ids.id",
                &[&kind, &after.unwrap_or(""), &limit],
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let updated_ms: i64 = r.get(2);
                let last_step_us: i64 = r.get(4);
                let id: String = r.get(0);
                let schema = schema_from_sql(r.get(5), &id)?;
                let summary = EntitySummary::new(
                    id,
                    from_sql(r.get(1), "entity version")?,
                    from_sql(r.get(3), "journal step")?,
                    updated_ms.max(last_step_us / 1000),
                );
                Ok(summary.with_schema(schema))
            })
            .collect()
    }

    async fn query(&self, kind: &str, filter: &Filter, page: Page<'_>) -> Result<Vec<EntityState>> {
        query::query(&*self.reader().await?, kind, filter, page.after, page.limit).await
    }

    async fn create_index(&self, kind: &str, path: &Path) -> Result<()> {
        self.check_open()?;
        let mut writer = self.writer().await?;
        query::create_index(&mut writer.client, kind, path).await
    }

    async fn drop_index(&self, kind: &str, path: &Path) -> Result<bool> {
        self.check_open()?;
        let mut writer = self.writer().await?;
        query::drop_index(&mut writer.client, kind, path).await
    }

    async fn indexes(&self, kind: &str) -> Result<Vec<Path>> {
        query::indexes(&*self.reader().await?, kind).await
    }

    async fn changes(&self, kind: &str, after: u64, limit: usize) -> Result<ChangePage> {
        // One statement, so one snapshot: an expiry cannot fall between the two reads.
        const CHANGES: &str = "
            SELECT e.through, c.seq, c.id, c.version, c.at, c.state
              FROM (SELECT coalesce((SELECT through FROM changes_expired WHERE kind = $1), 0)
                        AS through) AS e
              LEFT JOIN LATERAL (SELECT seq, id, version, at, state FROM changes
                                  WHERE kind = $1 AND seq > $2 ORDER BY seq LIMIT $3) AS c
                ON true";
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .reader()
            .await?
            .query(CHANGES, &[&kind, &after, &limit])
            .await
            .map_err(map_err)?;
        let mut page = ChangePage::default();
        for row in rows {
            let through: i64 = row.get(0);
            page.expired_through = from_sql(through, "expired change number")?;
            let Some(seq) = row.get::<_, Option<i64>>(1) else {
                continue;
            };
            page.changes.push(StoredChange {
                seq: from_sql(seq, "change number")?,
                id: row.get(2),
                version: from_sql(row.get(3), "change version")?,
                at_ms: row.get(4),
                state: row.get(5),
            });
        }
        Ok(page)
    }
}

/// A stored schema version, which is never negative.
fn schema_from_sql(schema: i32, entity: &dyn std::fmt::Display) -> Result<u32> {
    u32::try_from(schema)
        .map_err(|_| Error::Corrupt(format!("{entity} has schema version {schema}")))
}

/// Pending rows selected as `kind, id, seq, due, class, target_kind, target_id, body`.
fn pending_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<Pending>> {
    rows.iter()
        .map(|r| {
            let owner = entity_key(r.get(0), r.get(1), "a pending row")?;
            let seq = from_sql(r.get(2), "pending number")?;
            let class: i16 = r.get(4);
            let class = PendingClass::from_code(i64::from(class)).ok_or_else(|| {
                Error::Corrupt(format!(
                    "pending row {owner}#{seq} has an unknown class {class}"
                ))
            })?;
            Ok(Pending {
                seq,
                due_ms: r.get(3),
                class,
                target: entity_key(r.get(5), r.get(6), "a pending row")?,
                body: Arc::from(r.get::<_, String>(7)),
                owner,
            })
        })
        .collect()
}
