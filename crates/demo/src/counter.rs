//! Kind `counter`: a number that messages add to. The smallest useful persistent process.
//!
//! Messages, as JSON: `{"add": 5}` and `"get"`; both answer `{"value": N}`.

use perennial_core::{Ctx, Process, Rejection};
use serde::{Deserialize, Serialize};

/// The state of a counter.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The current value.
    pub value: i64,
}

/// A message to a counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterMsg {
    /// Adds a (possibly negative) amount.
    Add(i64),
    /// Reads the value.
    Get,
}

/// A counter's answer: its value after the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReply {
    /// The value.
    pub value: i64,
}

/// Why a counter refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// The addition would leave the range of a 64-bit signed integer.
    #[error("adding {add} to {value} would overflow a 64-bit integer")]
    Overflow {
        /// The current value.
        value: i64,
        /// The amount refused.
        add: i64,
    },
}

impl Rejection for CounterError {
    fn code(&self) -> &str {
        match self {
            Self::Overflow { .. } => "overflow",
        }
    }
}

impl Process for Counter {
    const KIND: &'static str = "counter";
    type Msg = CounterMsg;
    type Reply = CounterReply;
    type Error = CounterError;

    fn handle(
        &mut self,
        msg: CounterMsg,
        _ctx: &mut Ctx<'_, Self>,
    ) -> Result<CounterReply, CounterError> {
        if let CounterMsg::Add(add) = msg {
            self.value = self.value.checked_add(add).ok_or(CounterError::Overflow {
                value: self.value,
                add,
            })?;
        }
        Ok(CounterReply { value: self.value })
    }

    fn is_read_only(msg: &CounterMsg) -> bool {
        matches!(msg, CounterMsg::Get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_json_shapes() {
        let add: CounterMsg = serde_json::from_str(r#"{"add": -3}"#).unwrap();
        assert_eq!(add, CounterMsg::Add(-3));
        let get: CounterMsg = serde_json::from_str(r#""get""#).unwrap();
        assert_eq!(get, CounterMsg::Get);
        let reply = serde_json::to_string(&CounterReply { value: 7 }).unwrap();
        assert_eq!(reply, r#"{"value":7}"#);
    }
}
