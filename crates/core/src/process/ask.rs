//! Asks: a step asks another entity ([`Ctx::ask`](crate::Ctx::ask)) and gets the answer back as
//! one of its own messages, made from an [`Asked`] value.
//!
//! An ask is a pending row of the asker (class `Ask`), stored in the asking step's commit. Its
//! body holds the message for the target and the asker's own message with a placeholder where
//! the answer goes (found once, at the ask, as a JSON path). The dispatcher of the asker's
//! node delivers the message to the target under a key made from the row's id, so the target
//! applies it once however often it is delivered and keeps its reply under that key; it then
//! puts the answer in the placeholder and delivers the result to the asker, whose step deletes
//! the row. Until that step is durable the row is stored, and a crash only makes the
//! dispatcher deliver it again: the target answers from its kept reply, and the asker applies
//! the answer once.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::Process;

/// The id of an ask, returned by [`Ctx::ask`](crate::Ctx::ask) and carried by its [`Asked`]
/// answer. Unique within the asking entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AskId(pub(crate) u64);

impl fmt::Display for AskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ask-{}", self.0)
    }
}

/// The answer to an ask of an entity of kind `T`: its reply, or why there is none. The asker
/// receives it inside the message it made from it at [`Ctx::ask`](crate::Ctx::ask).
///
/// ```
/// use perennial_core::{AskError, Asked, Ctx, Process};
/// use serde::{Deserialize, Serialize};
///
/// # #[derive(Default)]
/// # struct Stock;
/// # impl Process for Stock {
/// #     const KIND: &'static str = "stock";
/// #     type Msg = u32;
/// #     type Reply = u32;
/// #     type Error = std::convert::Infallible;
/// #     fn handle(&mut self, n: u32, _: &mut Ctx<'_, Self>) -> Result<u32, Self::Error> { Ok(n) }
/// # }
/// #[derive(Serialize, Deserialize)]
/// enum OrderMsg {
///     Place,
///     Reserved(Asked<Stock>),
/// }
///
/// fn describe(answer: &Asked<Stock>) -> String {
///     match &answer.result {
///         Ok(left) => format!("reserved, {left} left"),
///         Err(AskError::Refused { code, .. }) => format!("refused: {code}"),
///         Err(AskError::TimedOut) => "no answer in time".to_owned(),
///         Err(e) => format!("failed: {e}"),
///     }
/// }
/// # let _ = (OrderMsg::Place, describe);
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Asked<T: Process> {
    /// The ask this answers: what [`Ctx::ask`](crate::Ctx::ask) returned.
    pub id: AskId,
    /// The target's reply, or why there is none.
    pub result: Result<T::Reply, AskError>,
}

impl<T: Process> Asked<T> {
    /// The value the asker's closure is handed at the ask: it marks where the answer goes.
    pub(crate) fn placeholder(id: AskId) -> Self {
        Self {
            id,
            result: Err(AskError::TimedOut),
        }
    }
}

impl<T: Process> fmt::Debug for Asked<T>
where
    T::Reply: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Asked")
            .field("id", &self.id)
            .field("result", &self.result)
            .finish()
    }
}

impl<T: Process> Clone for Asked<T>
where
    T::Reply: Clone,
{
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            result: self.result.clone(),
        }
    }
}

impl<T: Process> PartialEq for Asked<T>
where
    T::Reply: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.result == other.result
    }
}

impl<T: Process> Eq for Asked<T> where T::Reply: Eq {}

/// Why an ask has no reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AskError {
    /// The target's handler refused the message (it returned its `Error`): nothing changed
    /// there. `code` is the error's [`Rejection::code`](crate::Rejection::code), `message`
    /// its text.
    #[error("the target refused: {code}: {message}")]
    Refused {
        /// The refusal's stable name.
        code: String,
        /// The refusal's text.
        message: String,
    },
    /// No answer came before the deadline given to
    /// [`Ctx::ask_within`](crate::Ctx::ask_within). The target may still have applied the
    /// message (once): it was on its way, or applied while its answer was on its way back.
    #[error("no answer came before the deadline")]
    TimedOut,
    /// The target can never apply the message: it does not decode as the target's message
    /// any more, or it made the handler panic until it was set aside as a dead letter (an
    /// operator can retry the letter).
    #[error("the ask failed: {0}")]
    Failed(String),
}

/// An ask as stored in its row.
#[derive(Serialize, Deserialize)]
pub(crate) struct AskBody<'a> {
    /// The message for the target.
    #[serde(borrow)]
    pub(crate) msg: &'a RawValue,
    /// The asker's message, with the placeholder where the answer goes.
    pub(crate) answer: Value,
    /// Where the placeholder is in `answer` (a JSON pointer).
    pub(crate) at: String,
    /// When the ask times out, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deadline_ms: Option<i64>,
}

/// The JSON path (a JSON pointer) of the one place in `value` equal to `needle`; `None` if
/// there is none, or more than one.
pub(crate) fn path_of(value: &Value, needle: &Value) -> Option<String> {
    fn walk(value: &Value, needle: &Value, path: &mut String, found: &mut Vec<String>) {
        if value == needle {
            found.push(path.clone());
            return;
        }
        let len = path.len();
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    walk(v, needle, path, found);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push('/');
                    path.push_str(&i.to_string());
                    walk(v, needle, path, found);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(value, needle, &mut String::new(), &mut found);
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The asker's message for an answer: the stored message with `answer` (an [`Asked`] as
/// JSON) in place of the placeholder.
pub(crate) fn answer_message(body: &AskBody<'_>, answer: Value) -> Result<String, String> {
    let mut message = body.answer.clone();
    let slot = message
        .pointer_mut(&body.at)
        .ok_or_else(|| format!("the stored ask has no place {:?} for its answer", body.at))?;
    *slot = answer;
    serde_json::to_string(&message).map_err(|e| e.to_string())
}

/// An [`Asked`] as JSON, from its parts as they come back from the target: the reply's JSON,
/// or the error.
pub(crate) fn asked_json(seq: u64, result: Result<&str, AskError>) -> Result<Value, String> {
    let result = match result {
        Ok(reply) => {
            let reply: Value = serde_json::from_str(reply)
                .map_err(|e| format!("the target's reply is not JSON: {e}"))?;
            serde_json::json!({ "Ok": reply })
        }
        Err(error) => serde_json::json!({ "Err": error }),
    };
    Ok(serde_json::json!({ "id": seq, "result": result }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_path_of_a_value_found_once() {
        let needle = json!({"id": 3, "result": {"Err": "timed_out"}});
        let v = json!({"reserved": ["tea", {"id": 3, "result": {"Err": "timed_out"}}]});
        assert_eq!(path_of(&v, &needle).as_deref(), Some("/reserved/1"));
        let v = json!({"a/b~": needle.clone()});
        assert_eq!(path_of(&v, &needle).as_deref(), Some("/a~1b~0"));
        assert_eq!(path_of(&needle, &needle).as_deref(), Some(""));
        assert_eq!(
            path_of(&json!([needle.clone(), needle.clone()]), &needle),
            None
        );
        assert_eq!(path_of(&json!({"x": 1}), &needle), None);
    }

    #[test]
    fn an_answer_goes_where_the_placeholder_was() {
        let raw = RawValue::from_string("1".into()).unwrap();
        let body = AskBody {
            msg: &raw,
            answer: json!({"reserved": ["tea", null]}),
            at: "/reserved/1".into(),
            deadline_ms: None,
        };
        let answer = asked_json(7, Ok("5")).unwrap();
        let message = answer_message(&body, answer).unwrap();
        assert_eq!(
            message,
            r#"{"reserved":["tea",{"id":7,"result":{"Ok":5}}]}"#
        );
        let refused = AskError::Refused {
            code: "sold_out".into(),
            message: "none left".into(),
        };
        let answer = asked_json(7, Err(refused)).unwrap();
        assert_eq!(
            answer,
            json!({"id": 7, "result": {"Err": {"refused": {"code": "sold_out", "message": "none left"}}}})
        );
    }
}
