//! Kind `counter`: a number that messages add to. The smallest useful persistent process.
//!
//! Messages, as JSON: `{"add": 5}`, `"get"`, and `{"transfer": {"to": "c2", "amount": 5}}`,
//! which takes the amount from this counter and adds it to counter `c2` by a message sent
//! exactly once (`ctx.tell`): whatever crashes, the sum of all counters stays the same. All
//! answer `{"value": N}`.

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
    /// Moves an amount from this counter to another, exactly once.
    Transfer {
        /// The counter that receives the amount.
        to: String,
        /// How much.
        amount: i64,
    },
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
    /// The transfer's target is not a valid counter id.
    #[error("cannot transfer to {to:?}: {reason}")]
    BadTarget {
        /// The id given.
        to: String,
        /// Why it is not valid.
        reason: String,
    },
}

impl Rejection for CounterError {
    fn code(&self) -> &str {
        match self {
            Self::Overflow { .. } => "overflow",
            Self::BadTarget { .. } => "bad_target",
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
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<CounterReply, CounterError> {
        match msg {
            CounterMsg::Add(add) => self.add(add)?,
            CounterMsg::Get => {}
            CounterMsg::Transfer { to, amount } => {
                if let Err(e) = perennial_core::EntityId::new(&to) {
                    return Err(CounterError::BadTarget {
                        to,
                        reason: e.to_string(),
                    });
                }
                self.add(amount.checked_neg().unwrap_or(i64::MAX))?;
                ctx.tell::<Counter>(to, CounterMsg::Add(amount));
            }
        }
        Ok(CounterReply { value: self.value })
    }

    fn is_read_only(msg: &CounterMsg) -> bool {
        matches!(msg, CounterMsg::Get)
    }
}

impl Counter {
    fn add(&mut self, add: i64) -> Result<(), CounterError> {
        self.value = self.value.checked_add(add).ok_or(CounterError::Overflow {
            value: self.value,
            add,
        })?;
        Ok(())
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
