//! Mapping SQLite's errors into [`perennial_storage::Error`].

use perennial_storage::Error;
use rusqlite::ErrorCode;

/// Turns a rusqlite error into the storage error a caller can act on.
pub(crate) fn map_err(err: rusqlite::Error) -> Error {
    match &err {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            ErrorCode::DiskFull => Error::Full(err.to_string()),
            ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => Error::Io(err.to_string()),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Error::Corrupt(err.to_string()),
            _ => Error::Backend(err.to_string()),
        },
        _ => Error::Backend(err.to_string()),
    }
}

/// Stores a counter (a version or an epoch) in SQLite's signed 64-bit integer.
///
/// Counters grow by one per step, so they never come near `i64::MAX`; saturating keeps a
/// corrupt caller from wrapping into negative numbers.
pub(crate) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Reads a counter back, treating a negative value as corruption.
pub(crate) fn from_sql(value: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::Corrupt(format!("{what} is negative: {value}")))
}
