//! Queries over entity state in SQL over `jsonb`, and the indexes that answer them.
//!
//! A comparison tests the value's JSON type and compares it as a number (`numeric`, exact) or
//! as a string (`COLLATE "C"`, byte order, like the other stores), each behind a `CASE` so
//! that a value of another type never reaches a cast; `[*]` becomes an `EXISTS` over
//! `jsonb_array_elements`. An index by a path is two partial expression indexes for its
//! kind, one on the value as a string and one as a number, with the very expressions the
//! queries use, so PostgreSQL's planner matches them:
//!
//! ```sql
//! CREATE INDEX state_index_1_text ON entities
//!   ((CASE WHEN jsonb_typeof(state #> '{owner}') = 'string' THEN state #>> '{owner}' END) COLLATE "C", id)
//!   WHERE kind = 'cart';
//! ```

use perennial_storage::filter::{Expr, Literal, Op, Segment};
use perennial_storage::{EntityState, Error, Filter, Path};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::errors::{from_sql, map_err};

/// Up to `limit` entities of `kind` after `after` whose state matches, in id order.
pub(crate) async fn query(
    client: &Client,
    kind: &str,
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<EntityState>, Error> {
    let mut sql = Sql::default();
    let condition = sql.expr(filter.expr(), "state");
    let text = format!(
        "SELECT id, state::text, version, updated_at FROM entities
          WHERE kind = {} AND id > $1 AND ({condition})
          ORDER BY id LIMIT $2",
        quote(kind)
    );
    let after = after.unwrap_or("");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after, &limit];
    params.extend(sql.params.iter().map(|p| p as &(dyn ToSql + Sync)));
    let rows = client.query(&text, &params).await.map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(EntityState::new(
                r.get(0),
                r.get(1),
                from_sql(r.get(2), "entity version")?,
                r.get(3),
            ))
        })
        .collect()
}

/// Makes the indexes of `kind` by `path`, unless they exist.
pub(crate) async fn create_index(
    client: &mut Client,
    kind: &str,
    path: &Path,
) -> Result<(), Error> {
    if !path.is_single() {
        return Err(Error::Invalid(format!(
            "`{path}` cannot be indexed: an index is by one value, and `[*]` stands for many"
        )));
    }
    let tx = client.transaction().await.map_err(map_err)?;
    let row = tx
        .query_one(
            "INSERT INTO state_indexes (kind, path) VALUES ($1, $2)
             ON CONFLICT (kind, path) DO UPDATE SET kind = excluded.kind RETURNING n, xmax = 0",
            &[&kind, &path.to_string()],
        )
        .await
        .map_err(map_err)?;
    let (n, new): (i32, bool) = (row.get(0), row.get(1));
    if new {
        let at = json_path(path.segments());
        let (text, number) = (as_text("state", &at), as_number("state", &at));
        let kind = quote(kind);
        tx.batch_execute(&format!(
            "CREATE INDEX state_index_{n}_text ON entities ({text}, id) WHERE kind = {kind};
             CREATE INDEX state_index_{n}_number ON entities ({number}, id) WHERE kind = {kind};"
        ))
        .await
        .map_err(map_err)?;
    }
    tx.commit().await.map_err(map_err)
}

/// Drops the indexes of `kind` by `path`; whether there were any.
pub(crate) async fn drop_index(
    client: &mut Client,
    kind: &str,
    path: &Path,
) -> Result<bool, Error> {
    let tx = client.transaction().await.map_err(map_err)?;
    let row = tx
        .query_opt(
            "DELETE FROM state_indexes WHERE kind = $1 AND path = $2 RETURNING n",
            &[&kind, &path.to_string()],
        )
        .await
        .map_err(map_err)?;
    let Some(row) = row else {
        return Ok(false);
    };
    let n: i32 = row.get(0);
    tx.batch_execute(&format!(
        "DROP INDEX IF EXISTS state_index_{n}_text; DROP INDEX IF EXISTS state_index_{n}_number;"
    ))
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(true)
}

/// The paths `kind` is indexed by.
pub(crate) async fn indexes(client: &Client, kind: &str) -> Result<Vec<Path>, Error> {
    let rows = client
        .query(
            "SELECT path FROM state_indexes WHERE kind = $1 ORDER BY path",
            &[&kind],
        )
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            let text: String = r.get(0);
            Path::parse(&text).map_err(|e| {
                Error::Corrupt(format!(
                    "state_indexes holds the path `{text}`, which does not parse: {e}"
                ))
            })
        })
        .collect()
}

/// A filter being compiled: its parameters (from `$3` on, as text cast in SQL) and how many
/// `jsonb_array_elements` aliases were used.
#[derive(Default)]
struct Sql {
    params: Vec<String>,
    aliases: usize,
}

impl Sql {
    /// The SQL condition for `expr` over the JSON value `base`. It is true, false or NULL, and
    /// NULL means false: `not` turns NULL into false before negating.
    fn expr(&mut self, expr: &Expr, base: &str) -> String {
        match expr {
            Expr::And(a, b) => format!("({}) AND ({})", self.expr(a, base), self.expr(b, base)),
            Expr::Or(a, b) => format!("({}) OR ({})", self.expr(a, base), self.expr(b, base)),
            Expr::Not(a) => format!("NOT coalesce(({}), false)", self.expr(a, base)),
            Expr::Compare { path, op, value } => self.compare(path, *op, value, base),
        }
    }

    fn compare(&mut self, path: &Path, op: Op, value: &Literal, base: &str) -> String {
        let mut parts = path.segments().split(|s| *s == Segment::Each);
        let first = json_path(parts.next().unwrap_or_default());
        let mut from = Vec::new();
        let mut base = base.to_owned();
        let mut at = first;
        for part in parts {
            self.aliases += 1;
            let alias = format!("w{}", self.aliases);
            let value = format!("{base} #> {at}");
            from.push(format!(
                "jsonb_array_elements(CASE WHEN jsonb_typeof({value}) = 'array' THEN {value} END) AS {alias}(v)"
            ));
            base = format!("{alias}.v");
            at = json_path(part);
        }
        let value_at = format!("{base} #> {at}");
        let test = match (value, op) {
            (Literal::Null, Op::Eq) => format!("jsonb_typeof({value_at}) = 'null'"),
            (Literal::Null, _) => format!("jsonb_typeof({value_at}) <> 'null'"),
            (Literal::Bool(b), op) => {
                let wanted = if *b == (op == Op::Eq) {
                    "true"
                } else {
                    "false"
                };
                format!("jsonb_typeof({value_at}) = 'boolean' AND {value_at} = '{wanted}'::jsonb")
            }
            (Literal::Number(n), op) => {
                self.params.push(n.to_string());
                let p = self.params.len() + 2;
                format!("{} {} ${p}::text::numeric", as_number(&base, &at), op.sql())
            }
            (Literal::String(s), op) => {
                self.params.push(s.clone());
                let p = self.params.len() + 2;
                format!("{} {} ${p}::text", as_text(&base, &at), op.sql())
            }
        };
        if from.is_empty() {
            return test;
        }
        format!("EXISTS (SELECT 1 FROM {} WHERE {test})", from.join(", "))
    }
}

/// The value at `at` in `base` as a string in byte order, or NULL if it is not a string.
fn as_text(base: &str, at: &str) -> String {
    format!(
        "(CASE WHEN jsonb_typeof({base} #> {at}) = 'string' THEN {base} #>> {at} END) COLLATE \"C\""
    )
}

/// The value at `at` in `base` as a number, or NULL if it is not a number.
fn as_number(base: &str, at: &str) -> String {
    format!(
        "(CASE WHEN jsonb_typeof({base} #> {at}) = 'number' THEN ({base} #> {at})::numeric END)"
    )
}

/// The path's segments (none of them `[*]`) as a `text[]` literal for `#>`.
fn json_path(segments: &[Segment]) -> String {
    let items: Vec<String> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Key(k) => Some(quote(k)),
            Segment::Index(i) => Some(quote(&i.to_string())),
            Segment::Each => None,
        })
        .collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

/// `text` as an SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
