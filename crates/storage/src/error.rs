//! The storage error type: one enum that every backend maps its failures into.

use std::path::PathBuf;

/// A store's result: [`std::result::Result`] with [`Error`] as the error, as `std::io::Result`
/// is for I/O.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a store.
///
/// Errors carry text rather than the backend's own error types so that one failure can be
/// reported to every caller whose step was in a failed batch (the type is `Clone`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The disk or database is full. Nothing in the failed batch was written.
    #[error("storage is full ({0}); free some space, then retry")]
    Full(String),
    /// Reading or writing failed at the operating-system level (for example a failed fsync).
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// Stored bytes could not be read back as written.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store is configured in a way that would acknowledge writes that are not durable.
    #[error("{setting} is {actual}, but durable acknowledgements need {expected}")]
    NotDurable {
        /// The setting, such as `PRAGMA synchronous`.
        setting: &'static str,
        /// The value found.
        actual: String,
        /// The value required.
        expected: &'static str,
    },
    /// Another process holds the data directory.
    #[error(
        "the data directory {} is in use by another process; stop it or pick another directory",
        path.display()
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The data was written by a newer version of Perennial.
    #[error(
        "the data was written by a newer Perennial (format {found}, this build reads up to {supported}); upgrade Perennial"
    )]
    TooNew {
        /// The format version found in the data.
        found: u32,
        /// The newest format version this build reads.
        supported: u32,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The request cannot be done as asked (for example an index by a path with `[*]`).
    #[error("{0}")]
    Invalid(String),
    /// Any other failure of the backend.
    #[error("storage failed: {0}")]
    Backend(String),
}
