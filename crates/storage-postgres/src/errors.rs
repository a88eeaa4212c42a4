//! Mapping PostgreSQL's errors into [`perennial_storage::Error`].

use perennial_storage::Error;
use tokio_postgres::error::SqlState;

/// How an error from a read-only server (a standby) begins.
pub(crate) const READ_ONLY: &str = "the PostgreSQL server is read-only (a standby)";

/// Turns a client error into the storage error a caller can act on.
pub(crate) fn map_err(err: tokio_postgres::Error) -> Error {
    match err.code() {
        Some(code) if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY => {
            Error::Full(err.to_string())
        }
        Some(code) if *code == SqlState::IO_ERROR => Error::Io(err.to_string()),
        // The server became a standby (or is one): nothing was written. The write connection
        // is opened again before the next batch, which finds the primary.
        Some(code) if *code == SqlState::READ_ONLY_SQL_TRANSACTION => {
            Error::Io(format!("{READ_ONLY}: {}", with_detail(&err)))
        }
        Some(code) if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED => {
            Error::Corrupt(err.to_string())
        }
        Some(_) => Error::Backend(with_detail(&err)),
        // No SQL state: the connection failed or was closed.
        None if err.is_closed() => {
            Error::Io(format!("the connection to PostgreSQL is closed: {err}"))
        }
        None => Error::Io(with_detail(&err)),
    }
}

/// The error with the server's message or its cause, which `Display` leaves out.
pub(crate) fn with_detail(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{err}: {}", db.message()),
        None => {
            let source = std::error::Error::source(err).map(ToString::to_string);
            match source {
                Some(source) => format!("{err}: {source}"),
                None => err.to_string(),
            }
        }
    }
}

/// A counter (a version, an epoch, a step) in PostgreSQL's signed 64-bit integer.
pub(crate) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A counter read back; a negative value is corruption.
pub(crate) fn from_sql(value: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::Corrupt(format!("{what} is negative: {value}")))
}
