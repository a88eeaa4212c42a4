//! The test server: a fresh schema per test, dropped afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};

use perennial_storage_postgres::{Options, PostgresStore};

/// The server's address, from `PERENNIAL_TEST_POSTGRES`.
pub(crate) fn url() -> String {
    std::env::var("PERENNIAL_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned())
}

/// A schema name no other test (or test process) uses.
pub(crate) fn fresh_schema() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "perennial_test_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops its schema when dropped.
#[derive(Debug)]
pub(crate) struct Schema(pub(crate) String);

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: drop the schema from a thread of its own.
        let schema = self.0.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test schema {}", self.0);
        }
    }
}

/// A store in a fresh schema, or `None` (said loudly) if no server is reachable and none is
/// required.
pub(crate) async fn store() -> Option<(PostgresStore, Schema)> {
    let schema = fresh_schema();
    let mut options = Options::default();
    options.schema = schema.clone();
    match PostgresStore::connect_with(&url(), options).await {
        Ok(store) => Some((store, Schema(schema))),
        Err(e) if std::env::var("PERENNIAL_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
            panic!("PostgreSQL is required here (PERENNIAL_REQUIRE_POSTGRES=1) but: {e}")
        }
        Err(e) => {
            // Once per test process, and past the harness's capture of `eprintln!`, so that a
            // passing `cargo test` still shows it.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\nSKIPPED: the PostgreSQL tests pass without running: no server at {:?} ({e}). \
                     Start one, or set PERENNIAL_TEST_POSTGRES; .ci/run requires it.\n",
                    url()
                );
            });
            None
        }
    }
}
