//! Queries over entity state, and the indexes that answer them without a scan.
//!
//! A [`Filter`] compiles to SQL over the `entities` table: each comparison becomes a test of
//! the value's JSON type and a comparison of `json_extract(state, '$.path')`, and `[*]`
//! becomes an `EXISTS` over `json_each`. States committed but not folded into the table yet
//! live in memory ([`Pending`]); they are tested with [`Filter::matches`] instead, and their
//! older rows in the table are skipped.
//!
//! An index by a path is a partial expression index on `entities`, made for one kind:
//!
//! ```sql
//! CREATE INDEX state_index_1 ON entities (json_extract(state, '$.owner'), id)
//!  WHERE kind = 'counter';
//! ```
//!
//! SQLite uses it for a query whose SQL holds the same expression and the same `kind = '…'`
//! literal, which is why paths and kinds are written into the SQL as quoted literals (built
//! from parsed segments, quotes doubled) and values are bound as parameters. The `state_indexes`
//! table lists the indexes made this way.

use std::collections::HashSet;
use std::fmt::Write as _;

use parking_lot::Mutex;
use perennial_storage::filter::{Expr, Literal, Op, Segment};
use perennial_storage::{EntityState, Error, Filter, Path};
use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;

use crate::errors::{from_sql, map_err};
use crate::pending::Pending;

/// Rows read from the table per statement while rows of pending states are skipped.
const PAGE: usize = 256;

/// Up to `limit` entities of `kind` after `after` whose state matches, in id order.
pub(crate) fn query(
    conn: &Connection,
    pending: &Mutex<Pending>,
    kind: &str,
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<EntityState>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // First the states not folded yet: any entity folded after this point is in the table
    // with a state at least as new as the one it had here.
    let unfolded = pending.lock().of_kind(kind);
    let skip: HashSet<&str> = unfolded.iter().map(|(id, _)| id.as_str()).collect();
    let mut found = Vec::new();
    for (id, p) in &unfolded {
        if after.is_some_and(|a| id.as_str() <= a) {
            continue;
        }
        let state: serde_json::Value = serde_json::from_str(&p.state)
            .map_err(|e| Error::Corrupt(format!("the state of {kind}/{id} is not JSON: {e}")))?;
        if filter.matches(&state) {
            found.push(EntityState::new(
                id.clone(),
                p.state.to_string(),
                p.version,
                p.updated_at,
            ));
        }
    }

    let (text, sql) = select(kind, filter, &index_numbers(conn, kind)?)?;
    let mut stmt = conn.prepare_cached(&text).map_err(map_err)?;
    let mut cursor = after.map(str::to_owned);
    let mut from_table = Vec::new();
    'pages: loop {
        // Every id is above the empty string.
        let mut params = vec![SqlValue::Text(cursor.clone().unwrap_or_default())];
        params.extend(sql.params.iter().cloned());
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(map_err)?;
        let mut read = 0;
        while let Some(row) = rows.next().map_err(map_err)? {
            read += 1;
            let id: String = row.get(0).map_err(map_err)?;
            cursor = Some(id.clone());
            if skip.contains(id.as_str()) {
                continue;
            }
            let version = from_sql(row.get(2).map_err(map_err)?, "entity version")?;
            from_table.push(EntityState::new(
                id,
                row.get(1).map_err(map_err)?,
                version,
                row.get(3).map_err(map_err)?,
            ));
            if from_table.len() == limit {
                break 'pages;
            }
        }
        if read < PAGE {
            break;
        }
    }
    found.extend(from_table);
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.truncate(limit);
    Ok(found)
}

/// The statement that reads a page of matching rows of `kind` from the table, after the id
/// bound to `?1`; the filter's values are bound from `?2` on.
///
/// Without statistics, SQLite prefers the primary key (`kind = …`) to an expression index, so
/// when one of the filter's top-level conditions compares an indexed path, the statement
/// names that index (`INDEXED BY`): an equality first, else a range.
fn select(kind: &str, filter: &Filter, indexes: &[(Path, i64)]) -> Result<(String, Sql), Error> {
    let mut sql = Sql::default();
    let condition = sql.expr(filter.expr())?;
    let mut conditions = Vec::new();
    conjuncts(filter.expr(), &mut conditions);
    let usable = |equality: bool| {
        conditions.iter().find_map(|(path, op)| {
            let wanted = if equality {
                *op == Op::Eq
            } else {
                *op != Op::Ne && *op != Op::Eq
            };
            let n = indexes.iter().find(|(p, _)| p == *path).map(|(_, n)| *n);
            n.filter(|_| wanted)
        })
    };
    let hint = usable(true)
        .or_else(|| usable(false))
        .map(|n| format!(" INDEXED BY state_index_{n}"))
        .unwrap_or_default();
    let text = format!(
        "SELECT id, state, version, updated_at FROM entities{hint}
          WHERE kind = {} AND id > ?1 AND ({condition})
          ORDER BY id LIMIT {PAGE}",
        quote(kind)
    );
    Ok((text, sql))
}

/// The comparisons of `expr` that must all hold (joined by `and` at the top) and that an
/// index by their path can answer: a number or a string compared with the value.
fn conjuncts<'e>(expr: &'e Expr, out: &mut Vec<(&'e Path, Op)>) {
    match expr {
        Expr::And(a, b) => {
            conjuncts(a, out);
            conjuncts(b, out);
        }
        Expr::Compare { path, op, value } => {
            if matches!(value, Literal::Number(_) | Literal::String(_)) && path.is_single() {
                out.push((path, *op));
            }
        }
        Expr::Or(..) | Expr::Not(_) => {}
    }
}

/// The number of each index of `kind`, by path.
fn index_numbers(conn: &Connection, kind: &str) -> Result<Vec<(Path, i64)>, Error> {
    let mut stmt = conn
        .prepare_cached("SELECT path, n FROM state_indexes WHERE kind = ?1 ORDER BY path")
        .map_err(map_err)?;
    let rows = stmt
        .query_map([kind], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(map_err)?;
    let mut indexes = Vec::new();
    for row in rows {
        let (text, n) = row.map_err(map_err)?;
        let path = Path::parse(&text).map_err(|e| {
            Error::Corrupt(format!(
                "state_indexes holds the path `{text}`, which does not parse: {e}"
            ))
        })?;
        indexes.push((path, n));
    }
    Ok(indexes)
}

/// Makes the index of `kind` by `path`, unless it exists.
pub(crate) fn create_index(conn: &mut Connection, kind: &str, path: &Path) -> Result<(), Error> {
    if !path.is_single() {
        return Err(Error::Invalid(format!(
            "`{path}` cannot be indexed: an index is by one value, and `[*]` stands for many"
        )));
    }
    let json_path = json_path(path.segments())?;
    let tx = conn.transaction().map_err(map_err)?;
    let exists = tx
        .query_row(
            "SELECT count(*) FROM state_indexes WHERE kind = ?1 AND path = ?2",
            (kind, path.to_string()),
            |r| r.get::<_, i64>(0),
        )
        .map_err(map_err)?;
    if exists > 0 {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO state_indexes (kind, path) VALUES (?1, ?2)",
        (kind, path.to_string()),
    )
    .map_err(map_err)?;
    let n = tx.last_insert_rowid();
    tx.execute_batch(&format!(
        "CREATE INDEX state_index_{n} ON entities (json_extract(state, {}), id) WHERE kind = {}",
        quote(&json_path),
        quote(kind)
    ))
    .map_err(map_err)?;
    tx.commit().map_err(map_err)
}

/// Drops the index of `kind` by `path`; whether there was one.
pub(crate) fn drop_index(conn: &mut Connection, kind: &str, path: &Path) -> Result<bool, Error> {
    let tx = conn.transaction().map_err(map_err)?;
    let n: Option<i64> = tx
        .query_row(
            "SELECT n FROM state_indexes WHERE kind = ?1 AND path = ?2",
            (kind, path.to_string()),
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(map_err)?;
    let Some(n) = n else {
        return Ok(false);
    };
    tx.execute_batch(&format!("DROP INDEX IF EXISTS state_index_{n}"))
        .map_err(map_err)?;
    tx.execute("DELETE FROM state_indexes WHERE n = ?1", [n])
        .map_err(map_err)?;
    tx.commit().map_err(map_err)?;
    Ok(true)
}

/// The paths `kind` is indexed by.
pub(crate) fn indexes(conn: &Connection, kind: &str) -> Result<Vec<Path>, Error> {
    Ok(index_numbers(conn, kind)?
        .into_iter()
        .map(|(path, _)| path)
        .collect())
}

/// A filter being compiled: the SQL text's parameters, and how many `json_each` aliases
/// were used.
#[derive(Default)]
struct Sql {
    params: Vec<SqlValue>,
    aliases: usize,
}

impl Sql {
    /// The SQL condition for `expr`. It is true, false or NULL, and NULL means false: `not`
    /// turns NULL into false before negating.
    fn expr(&mut self, expr: &Expr) -> Result<String, Error> {
        Ok(match expr {
            Expr::And(a, b) => format!("({}) AND ({})", self.expr(a)?, self.expr(b)?),
            Expr::Or(a, b) => format!("({}) OR ({})", self.expr(a)?, self.expr(b)?),
            Expr::Not(a) => format!("NOT coalesce(({}), 0)", self.expr(a)?),
            Expr::Compare { path, op, value } => self.compare(path, *op, value)?,
        })
    }

    fn compare(&mut self, path: &Path, op: Op, value: &Literal) -> Result<String, Error> {
        // Split at each `[*]`: the part before the first is read from the state, each later
        // part from the element the previous `json_each` is at.
        let mut parts = path.segments().split(|s| *s == Segment::Each);
        let first = json_path(parts.next().unwrap_or_default())?;
        let mut from = Vec::new();
        let mut base = quote(&first);
        for part in parts {
            self.aliases += 1;
            let alias = format!("w{}", self.aliases);
            from.push(format!("json_each(state, {base}) AS {alias}"));
            // Elements of an array only: json_each also walks objects and scalars.
            let rest = json_path(part)?;
            base = if rest.len() > 1 {
                format!("{alias}.fullkey || {}", quote(&rest[1..]))
            } else {
                format!("{alias}.fullkey")
            };
        }
        let json_type = format!("json_type(state, {base})");
        let extracted = format!("json_extract(state, {base})");
        let test = match (value, op) {
            (Literal::Null, Op::Eq) => format!("{json_type} = 'null'"),
            (Literal::Null, _) => format!("{json_type} <> 'null'"),
            (Literal::Bool(b), op) => {
                let wanted = if *b == (op == Op::Eq) {
                    "true"
                } else {
                    "false"
                };
                format!("{json_type} = '{wanted}'")
            }
            (Literal::Number(n), op) => {
                self.params.push(match n.as_i64() {
                    Some(i) => SqlValue::Integer(i),
                    None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
                });
                let p = self.params.len() + 1;
                format!(
                    "{json_type} IN ('integer', 'real') AND {extracted} {} ?{p}",
                    op.sql()
                )
            }
            (Literal::String(s), op) => {
                self.params.push(SqlValue::Text(s.clone()));
                let p = self.params.len() + 1;
                format!("{json_type} = 'text' AND {extracted} {} ?{p}", op.sql())
            }
        };
        if from.is_empty() {
            return Ok(test);
        }
        let elements: Vec<String> = (self.aliases + 1 - from.len()..=self.aliases)
            .map(|n| format!("typeof(w{n}.key) = 'integer'"))
            .collect();
        Ok(format!(
            "EXISTS (SELECT 1 FROM {} WHERE {} AND {test})",
            from.join(", "),
            elements.join(" AND ")
        ))
    }
}

/// The SQLite JSON path of `segments` (none of them `[*]`), such as `$.seats[0]."odd key"`.
fn json_path(segments: &[Segment]) -> Result<String, Error> {
    let mut path = String::from("$");
    for segment in segments {
        match segment {
            Segment::Key(k)
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                let _ = write!(path, ".{k}");
            }
            Segment::Key(k) if !k.contains('"') => {
                let _ = write!(path, ".\"{k}\"");
            }
            Segment::Key(k) => {
                return Err(Error::Invalid(format!(
                    "the key {k:?} holds a double quote, which SQLite's JSON paths cannot name"
                )));
            }
            Segment::Index(i) => {
                let _ = write!(path, "[{i}]");
            }
            Segment::Each => {
                return Err(Error::Invalid("`[*]` has no single JSON path".into()));
            }
        }
    }
    Ok(path)
}

/// `text` as an SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite plans the page query of `filter` over kind `t`.
    fn plan(conn: &Connection, filter: &str) -> String {
        let indexes = index_numbers(conn, "t").unwrap();
        let (text, sql) = select("t", &Filter::parse(filter).unwrap(), &indexes).unwrap();
        let mut params = vec![SqlValue::Text(String::new())];
        params.extend(sql.params);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {text}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn an_indexed_comparison_is_answered_from_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("q.db")).unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        create_index(&mut conn, "t", &Path::parse("owner").unwrap()).unwrap();
        create_index(&mut conn, "t", &Path::parse("seats[0].player").unwrap()).unwrap();
        for filter in [
            "owner = 'user-7'",
            "owner = 'user-7' and pot > 3",
            "owner > 'user-7'",
            "seats[0].player = 'bob' and not phase = 'flop'",
        ] {
            let plan = plan(&conn, filter);
            assert!(
                plan.contains("USING INDEX state_index_"),
                "{filter}: {plan}"
            );
        }
        // Another path, or a condition that may not hold for every match, is not served by
        // them.
        for filter in [
            "pot = 3",
            "owner = 'a' or pot = 3",
            "not owner = 'a'",
            "owner != 'a'",
        ] {
            let plan = plan(&conn, filter);
            assert!(!plan.contains("state_index_"), "{filter}: {plan}");
        }
    }
}
