//! Many rows per `INSERT` statement, and the values bound to them: the writer's bulk inserts
//! (the fold into `entities`, journal entries, pending rows).

use perennial_storage::Error;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Transaction, params_from_iter};

use crate::errors::map_err;

/// An `INSERT` of many rows per statement: binding and stepping one statement per row
/// costs more than the row itself.
pub(crate) struct Rows {
    width: usize,
    /// The statement for each of [`Rows::CHUNKS`] rows.
    sql: [String; 3],
}

impl Rows {
    /// Rows per statement: full chunks first, then smaller ones for the rest.
    const CHUNKS: [usize; 3] = [32, 8, 1];

    pub(crate) fn new(head: &str, width: usize, tail: &str) -> Self {
        let row = format!("({})", vec!["?"; width].join(", "));
        let sql = Self::CHUNKS.map(|rows| {
            format!(
                "{head} VALUES {}{tail}",
                vec![row.as_str(); rows].join(", ")
            )
        });
        Self { width, sql }
    }

    /// Inserts `values`, `width` per row.
    pub(crate) fn run(
        &self,
        tx: &Transaction<'_>,
        values: &[ToSqlOutput<'_>],
    ) -> Result<(), Error> {
        let mut rest = values;
        for (rows, sql) in Self::CHUNKS.into_iter().zip(&self.sql) {
            let n = rows * self.width;
            if rest.len() < n {
                continue;
            }
            let mut stmt = tx.prepare_cached(sql).map_err(map_err)?;
            while rest.len() >= n {
                stmt.execute(params_from_iter(&rest[..n]))
                    .map_err(map_err)?;
                rest = &rest[n..];
            }
        }
        Ok(())
    }
}

/// A text value, borrowed.
pub(crate) fn text(s: &str) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
}

/// An integer value.
pub(crate) fn int(i: i64) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Integer(i))
}
