//! Filters over entity state: the little language of `perennial query` and the admin API's
//! `query` route, parsed once here and answered by every backend (SQL for SQLite and
//! PostgreSQL, [`Filter::matches`] for the memory store and for states not yet in a table).
//!
//! ```text
//! pot > 100
//! players[*].name = 'alice' and not (phase = 'showdown')
//! state.owner = "user-7" or tags[0] != null
//! ```
//!
//! # Grammar
//! - A **comparison** is `path op literal`, with `op` one of `=` (or `==`), `!=` (or `<>`),
//!   `<`, `<=`, `>`, `>=`.
//! - A **path** starts at the state: `pot`, `seats[2].player`, `["odd key"].x`. It may start
//!   with `state` (`state.pot`) or `$`; `state` or `$` alone is the whole state. `[*]` stands
//!   for every element of an array: the comparison holds if it holds for one of them.
//! - A **literal** is a number, a string in single or double quotes (a quote doubled
//!   inside), `true`, `false` or `null`.
//! - Comparisons combine with `and`, `or`, `not` and parentheses; `not` binds tightest, then
//!   `and`, then `or`. Keywords may be upper case.
//!
//! # Meaning
//! A comparison holds only when the path leads to a value **of the literal's type**: a number
//! compares with numbers, a string with strings (byte order), a boolean with booleans, and
//! `pot > 100` is false for an entity without a `pot` or whose `pot` is a string. So
//! `not (pot > 100)` also finds entities without a `pot`. `= null` finds an explicit `null`;
//! `!= null` finds any value that is not `null`. Booleans and `null` only compare with `=`
//! and `!=`.

use std::fmt;

use serde_json::Value;

/// The longest filter text accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;
/// The deepest nesting of parentheses and `not` accepted.
const MAX_DEPTH: usize = 32;
/// The most `[*]` in one path.
const MAX_WILDCARDS: usize = 4;

/// A parsed filter over entity state.
///
/// ```
/// use perennial_storage::Filter;
/// use serde_json::json;
///
/// let filter: Filter = "players[*].name = 'alice' and pot > 100".parse()?;
/// assert!(filter.matches(&json!({"pot": 150, "players": [{"name": "bob"}, {"name": "alice"}]})));
/// assert!(!filter.matches(&json!({"pot": "150", "players": [{"name": "alice"}]})));
/// # Ok::<(), perennial_storage::FilterError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: Expr,
}

/// A filter's expression tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// One or both hold.
    Or(Box<Expr>, Box<Expr>),
    /// The inner expression does not hold.
    Not(Box<Expr>),
    /// The value at `path` compares with `value` by `op`.
    Compare {
        /// Where the value is.
        path: Path,
        /// How it compares.
        op: Op,
        /// What it compares with.
        value: Literal,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    /// The operator in SQL.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "<>",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }

    fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Self::Eq => ordering == Equal,
            Self::Ne => ordering != Equal,
            Self::Lt => ordering == Less,
            Self::Le => ordering != Greater,
            Self::Gt => ordering == Greater,
            Self::Ge => ordering != Less,
        }
    }
}

/// A literal a value is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number, as JSON has them.
    Number(serde_json::Number),
    /// A string.
    String(String),
}

/// A path into a state: keys, array positions and `[*]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(Vec<Segment>);

/// One step of a [`Path`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// An object's member.
    Key(String),
    /// An array's element.
    Index(u64),
    /// Every element of an array.
    Each,
}

/// Why a filter or a path did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at byte {at} of the filter)")]
pub struct FilterError {
    /// Where, in bytes from the start of the text.
    pub at: usize,
    /// What was wrong, and what was expected.
    pub message: String,
}

impl Filter {
    /// Parses a filter; see the [module documentation](self) for the grammar.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let mut parser = Parser::new(text)?;
        let expr = parser.or(0)?;
        parser.end()?;
        Ok(Self { expr })
    }

    /// The expression tree, for backends that compile it.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether `state` matches.
    pub fn matches(&self, state: &Value) -> bool {
        self.expr.matches(state)
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;
    fn from_str(text: &str) -> Result<Self, FilterError> {
        Self::parse(text)
    }
}

impl Expr {
    fn matches(&self, state: &Value) -> bool {
        match self {
            Self::And(a, b) => a.matches(state) && b.matches(state),
            Self::Or(a, b) => a.matches(state) || b.matches(state),
            Self::Not(a) => !a.matches(state),
            Self::Compare { path, op, value } => {
                let mut found = false;
                path.visit(state, &mut |v| found = found || compare(v, *op, value));
                found
            }
        }
    }
}

/// Whether `value` compares with `literal` by `op`; false when their types differ.
fn compare(value: &Value, op: Op, literal: &Literal) -> bool {
    match (value, literal) {
        (Value::Null, Literal::Null) => op == Op::Eq,
        (v, Literal::Null) => op == Op::Ne && !v.is_null(),
        (Value::Bool(a), Literal::Bool(b)) => op.holds(a.cmp(b)),
        (Value::String(a), Literal::String(b)) => op.holds(a.as_bytes().cmp(b.as_bytes())),
        (Value::Number(a), Literal::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => op.holds(a.cmp(&b)),
            _ => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => a.partial_cmp(&b).is_some_and(|o| op.holds(o)),
                _ => false,
            },
        },
        _ => false,
    }
}

impl Path {
    /// Parses a path on its own, as given to an index: `owner`, `seats[0].player`.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let mut parser = Parser::new(text)?;
        let path = parser.path()?;
        parser.end()?;
        Ok(path)
    }

    /// The path's steps, from the state's root.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether the path has no `[*]`, so that one value at most is found (and it can be
    /// indexed).
    pub fn is_single(&self) -> bool {
        !self.0.contains(&Segment::Each)
    }

    /// Calls `f` with each value the path leads to in `value`.
    fn visit<'v>(&self, value: &'v Value, f: &mut dyn FnMut(&'v Value)) {
        fn walk<'v>(segments: &[Segment], value: &'v Value, f: &mut dyn FnMut(&'v Value)) {
            let Some((first, rest)) = segments.split_first() else {
                return f(value);
            };
            match (first, value) {
                (Segment::Key(k), Value::Object(map)) => {
                    if let Some(v) = map.get(k) {
                        walk(rest, v, f);
                    }
                }
                (Segment::Index(i), Value::Array(items)) => {
                    if let Some(v) = usize::try_from(*i).ok().and_then(|i| items.get(i)) {
                        walk(rest, v, f);
                    }
                }
                (Segment::Each, Value::Array(items)) => {
                    for v in items {
                        walk(rest, v, f);
                    }
                }
                _ => {}
            }
        }
        walk(&self.0, value, f);
    }
}

/// The canonical text of a path, which [`Path::parse`] reads back.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("state");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) if is_identifier(k) && !is_keyword(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => {
                    if i == 0 {
                        f.write_str("state")?;
                    }
                    write!(f, "[\"{}\"]", k.replace('"', "\"\""))?;
                }
                Segment::Index(n) => {
                    if i == 0 {
                        f.write_str("state")?;
                    }
                    write!(f, "[{n}]")?;
                }
                Segment::Each => {
                    if i == 0 {
                        f.write_str("state")?;
                    }
                    f.write_str("[*]")?;
                }
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_keyword(s: &str) -> bool {
    ["and", "or", "not", "true", "false", "null", "state"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(s))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number(serde_json::Number),
    Op(Op),
    Dot,
    Dollar,
    Star,
    Open,
    Close,
    OpenBracket,
    CloseBracket,
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(error(
                0,
                format!(
                    "the filter is {} bytes; at most {MAX_FILTER_BYTES} are accepted",
                    text.len()
                ),
            ));
        }
        Ok(Self {
            tokens: tokenize(text)?,
            pos: 0,
            len: text.len(),
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.len, |(at, _)| *at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word))
    }

    fn end(&self) -> Result<(), FilterError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(error(
                self.at(),
                "expected `and`, `or` or the end of the filter",
            )),
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.and(depth)?;
        while self.keyword("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.unary(depth)?;
        while self.keyword("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary(depth)?));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth >= MAX_DEPTH {
            return Err(error(
                self.at(),
                format!("the filter nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        if self.keyword("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.pos += 1;
            let inner = self.or(depth + 1)?;
            let at = self.at();
            return match self.next() {
                Some(Token::Close) => Ok(inner),
                _ => Err(error(at, "expected `)`")),
            };
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, FilterError> {
        let path = self.path()?;
        let at = self.at();
        let Some(Token::Op(op)) = self.next() else {
            return Err(error(at, "expected a comparison: =, !=, <, <=, > or >="));
        };
        let at = self.at();
        let value = match self.next() {
            Some(Token::Str(s)) => Literal::String(s),
            Some(Token::Number(n)) => Literal::Number(n),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("null") => Literal::Null,
            _ => {
                return Err(error(
                    at,
                    "expected a value: a number, a 'string', true, false or null",
                ));
            }
        };
        if matches!(value, Literal::Null | Literal::Bool(_)) && !matches!(op, Op::Eq | Op::Ne) {
            return Err(error(at, "booleans and null compare only with = and !="));
        }
        Ok(Expr::Compare { path, op, value })
    }

    fn path(&mut self) -> Result<Path, FilterError> {
        let at = self.at();
        let mut segments = Vec::new();
        match self.next() {
            Some(Token::Dollar) => {}
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("state") => {}
            Some(Token::Ident(w)) if !is_keyword(&w) => segments.push(Segment::Key(w)),
            Some(Token::OpenBracket) => {
                self.pos -= 1;
            }
            _ => {
                return Err(error(
                    at,
                    "expected a path into the state, such as `pot` or `players[*].name`",
                ));
            }
        }
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.pos += 1;
                    let at = self.at();
                    match self.next() {
                        Some(Token::Ident(w)) => segments.push(Segment::Key(w)),
                        _ => return Err(error(at, "expected a name after `.`")),
                    }
                }
                Some(Token::OpenBracket) => {
                    self.pos += 1;
                    let at = self.at();
                    let segment = match self.next() {
                        Some(Token::Star) => Segment::Each,
                        Some(Token::Str(k)) => Segment::Key(k),
                        Some(Token::Number(n)) => match n.as_u64() {
                            Some(i) => Segment::Index(i),
                            None => {
                                return Err(error(
                                    at,
                                    "an array position is a whole number from 0",
                                ));
                            }
                        },
                        _ => {
                            return Err(error(
                                at,
                                "expected a position, `*` or a \"key\" inside [ ]",
                            ));
                        }
                    };
                    let at = self.at();
                    if self.next() != Some(Token::CloseBracket) {
                        return Err(error(at, "expected `]`"));
                    }
                    segments.push(segment);
                }
                _ => break,
            }
        }
        if segments.iter().filter(|s| **s == Segment::Each).count() > MAX_WILDCARDS {
            return Err(error(
                at,
                format!("a path has at most {MAX_WILDCARDS} `[*]`"),
            ));
        }
        Ok(Path(segments))
    }
}

fn error(at: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        at,
        message: message.into(),
    }
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        let two = |next: u8| bytes.get(i + 1) == Some(&next);
        let (token, len) = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'.' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => (Token::Dot, 1),
            b'$' => (Token::Dollar, 1),
            b'*' => (Token::Star, 1),
            b'(' => (Token::Open, 1),
            b')' => (Token::Close, 1),
            b'[' => (Token::OpenBracket, 1),
            b']' => (Token::CloseBracket, 1),
            b'=' if two(b'=') => (Token::Op(Op::Eq), 2),
            b'=' => (Token::Op(Op::Eq), 1),
            b'!' if two(b'=') => (Token::Op(Op::Ne), 2),
            b'<' if two(b'>') => (Token::Op(Op::Ne), 2),
            b'<' if two(b'=') => (Token::Op(Op::Le), 2),
            b'<' => (Token::Op(Op::Lt), 1),
            b'>' if two(b'=') => (Token::Op(Op::Ge), 2),
            b'>' => (Token::Op(Op::Gt), 1),
            b'\'' | b'"' => {
                let (s, len) = string(text, i)?;
                (Token::Str(s), len)
            }
            b'-' | b'.' | b'0'..=b'9' => {
                let len = bytes[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_digit() || b"+-.eE".contains(b)))
                    .unwrap_or(bytes.len() - i);
                let number = serde_json::from_str::<serde_json::Number>(&text[i..i + len])
                    .map_err(|_| error(i, format!("`{}` is not a number", &text[i..i + len])))?;
                (Token::Number(number), len)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let len = bytes[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .unwrap_or(bytes.len() - i);
                (Token::Ident(text[i..i + len].to_owned()), len)
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(error(i, format!("unexpected `{ch}`")));
            }
        };
        tokens.push((start, token));
        i += len;
    }
    Ok(tokens)
}

/// The string starting with the quote at `start`, and its length in the text.
fn string(text: &str, start: usize) -> Result<(String, usize), FilterError> {
    let quote = text.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|(_, next)| *next == quote) {
                chars.next();
                out.push(quote);
            } else {
                return Ok((out, i + 2));
            }
        } else {
            out.push(c);
        }
    }
    Err(error(start, format!("this string has no closing {quote}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matches(filter: &str, state: Value) -> bool {
        Filter::parse(filter).unwrap().matches(&state)
    }

    #[test]
    fn comparisons_hold_only_between_values_of_one_type() {
        assert!(matches("pot > 100", json!({"pot": 150})));
        assert!(matches("pot > 100", json!({"pot": 100.5})));
        assert!(!matches("pot > 100", json!({"pot": 100})));
        assert!(!matches("pot > 100", json!({"pot": "150"})));
        assert!(!matches("pot > 100", json!({})));
        assert!(matches("not (pot > 100)", json!({})));
        assert!(matches("name = 'alice'", json!({"name": "alice"})));
        assert!(!matches("name = 'alice'", json!({"name": ["alice"]})));
        assert!(matches("name < 'b'", json!({"name": "alice"})));
        assert!(matches("open = true", json!({"open": true})));
        assert!(!matches("open = true", json!({"open": 1})));
        assert!(matches("x = null", json!({"x": null})));
        assert!(!matches("x = null", json!({})));
        assert!(matches("x != null", json!({"x": 0})));
        assert!(!matches("x != null", json!({"x": null})));
        assert!(matches("state = 5", json!(5)));
        assert!(matches("n = -2.5e1", json!({"n": -25})));
    }

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        let table = json!({"players": [{"name": "bob", "chips": 10}, {"name": "alice", "chips": 900}],
                           "odd key": {"x": 1}});
        assert!(matches("players[*].name = 'alice'", table.clone()));
        assert!(matches("state.players[*].name = 'alice'", table.clone()));
        assert!(matches("$.players[1].chips >= 900", table.clone()));
        assert!(!matches("players[0].name = 'alice'", table.clone()));
        assert!(matches("[\"odd key\"].x = 1", table.clone()));
        assert!(matches(
            "players[*].chips < 100 and players[*].chips > 500",
            table.clone()
        ));
        assert!(!matches("players[*] = 'alice'", table));
        assert!(!matches(
            "players[*].name = 'alice'",
            json!({"players": {"name": "alice"}})
        ));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let state = json!({"a": 1, "b": 2});
        assert!(matches("a = 1 or a = 5 and b = 5", state.clone()));
        assert!(!matches("(a = 1 or a = 5) and b = 5", state.clone()));
        assert!(matches("not a = 5 and b = 2", state.clone()));
        assert!(matches("A = 1 AND NOT b = 3", json!({"A": 1, "b": 2})));
    }

    #[test]
    fn bad_filters_say_where_and_what() {
        for (text, at, words) in [
            ("", 0, "expected a path"),
            ("pot >", 5, "expected a value"),
            ("pot 100", 4, "expected a comparison"),
            ("(pot > 1", 8, "expected `)`"),
            ("pot > 1 pot", 8, "expected `and`"),
            ("name = 'alice", 7, "no closing '"),
            ("open > true", 7, "only with = and !="),
            ("a[-1] = 1", 2, "whole number"),
            ("a = 1e", 4, "not a number"),
            ("a # 1", 2, "unexpected `#`"),
        ] {
            let e = Filter::parse(text).unwrap_err();
            assert_eq!(e.at, at, "{text}: {e}");
            assert!(e.message.contains(words), "{text}: {e}");
        }
        let deep = format!("{}a = 1{}", "(".repeat(40), ")".repeat(40));
        assert!(Filter::parse(&deep).unwrap_err().message.contains("deeper"));
        let long = "a = 1 or ".repeat(600) + "a = 1";
        assert!(
            Filter::parse(&long)
                .unwrap_err()
                .message
                .contains("at most")
        );
    }

    #[test]
    fn a_path_prints_as_it_parses() {
        for text in [
            "owner",
            "seats[0].player",
            "players[*].name",
            "state",
            "state[\"odd key\"].x",
            "state[2]",
            "state[\"and\"]",
        ] {
            let path = Path::parse(text).unwrap();
            assert_eq!(path.to_string(), text);
            assert_eq!(Path::parse(&path.to_string()).unwrap(), path);
        }
        assert!(Path::parse("a = 1").is_err());
        assert!(!Path::parse("a[*].b").unwrap().is_single());
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in "\\PC{0,64}") {
            let _ = Filter::parse(&text);
            let _ = Path::parse(&text);
        }
    }
}
