//! For tests (feature `test-util`): the machine's PostgreSQL server, a fresh schema per test
//! dropped afterwards, and a loud skip where no server is reachable.
//!
//! The server is `PERENNIAL_TEST_POSTGRES` (default: 127.0.0.1:5432, user `postgres`,
//! database `test`). Without one, [`store`] and [`schema`] return `None` after saying so once
//! on stderr (past the test harness's capture), unless `PERENNIAL_REQUIRE_POSTGRES=1`, which
//! makes them panic instead: CI sets it.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Options, PostgresStore};

/// The server's address, from `PERENNIAL_TEST_POSTGRES`.
pub fn url() -> String {
    std::env::var("PERENNIAL_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned())
}

/// A schema name no other test (or test process) uses.
fn fresh_schema() -> String {
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

/// A schema of its own for one test; dropped (with its tables) when this is dropped.
#[derive(Debug)]
pub struct Schema(String);

impl Schema {
    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

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

/// A fresh schema on the test server, or `None` (said loudly) if no server is reachable and
/// none is required.
pub async fn schema() -> Option<Schema> {
    match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        Ok((_, connection)) => {
            drop(connection);
            Some(Schema(fresh_schema()))
        }
        Err(e) => unreachable_server(&crate::errors::with_detail(&e)),
    }
}

/// A store in a fresh schema, or `None` (said loudly) if no server is reachable and none is
/// required.
pub async fn store() -> Option<(PostgresStore, Schema)> {
    let schema = schema().await?;
    let options = Options {
        schema: schema.name().to_owned(),
        ..Options::default()
    };
    match PostgresStore::connect_with(&url(), options).await {
        Ok(store) => Some((store, schema)),
        Err(e) => unreachable_server(&e.to_string()),
    }
}

fn unreachable_server<T>(why: &str) -> Option<T> {
    if std::env::var("PERENNIAL_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
        panic!("PostgreSQL is required here (PERENNIAL_REQUIRE_POSTGRES=1) but: {why}");
    }
    // Once per test process, and past the harness's capture of `eprintln!`, so that a
    // passing `cargo test` still shows it.
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: the PostgreSQL tests pass without running: no server at {:?} ({why}). \
             Start one, or set PERENNIAL_TEST_POSTGRES; .ci/run requires it.\n",
            url()
        );
    });
    None
}
