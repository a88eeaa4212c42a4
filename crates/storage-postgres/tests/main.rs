//! The PostgreSQL store: the shared conformance suite, each case in a schema of its own, on
//! the server at `PERENNIAL_TEST_POSTGRES` (default: 127.0.0.1:5432, user `postgres`,
//! database `test`). Without a reachable server the cases pass after saying so on stderr,
//! unless `PERENNIAL_REQUIRE_POSTGRES=1` (CI sets it), which makes them fail instead.

mod base_backup;
mod cluster;
mod tls;

use perennial_storage_postgres::test_util;

perennial_storage::store_conformance!(optional test_util::store());
