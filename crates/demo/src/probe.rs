//! Kind `probe`: an append-only list of tokens, the entity the reliability suite's histories
//! are about (`perennial-checker`). Each append returns the whole list, so every reply shows
//! the entity's timeline up to that append, and checking a history takes linear time
//! (Elle's list-append idea). Also a small event log for anyone.
//!
//! Messages, as JSON: `{"append": "c1-7"}`, `{"forward": {"token": "c1-8", "to": "p2"}}`,
//! `{"schedule": {"token": "c1-9", "ms": 50}}`, `"read"`. All answer the list.

use perennial_core::{Ctx, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The state: the tokens appended, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The tokens.
    pub tokens: Vec<String>,
}

/// A message to a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMsg {
    /// Appends a token.
    Append(String),
    /// Appends a token here and sends it to probe `to` (a message between entities, exactly
    /// once), which appends it when it arrives. `to` should be another probe: the checker
    /// expects each token once per list.
    Forward {
        /// The token.
        token: String,
        /// The probe that receives it too.
        to: String,
    },
    /// Appends a token when a durable timer fires, `ms` from now.
    Schedule {
        /// The token.
        token: String,
        /// The delay, in milliseconds.
        ms: u64,
    },
    /// Reads the list.
    Read,
}

impl Process for Probe {
    const KIND: &'static str = "probe";
    type Msg = ProbeMsg;
    type Reply = Vec<String>;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        msg: ProbeMsg,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Vec<String>, Self::Error> {
        match msg {
            ProbeMsg::Append(token) => self.tokens.push(token),
            ProbeMsg::Forward { token, to } => {
                ctx.send::<Probe>(to, ProbeMsg::Append(token.clone()));
                self.tokens.push(token);
            }
            ProbeMsg::Schedule { token, ms } => {
                ctx.schedule(Duration::from_millis(ms), ProbeMsg::Append(token));
            }
            ProbeMsg::Read => {}
        }
        Ok(self.tokens.clone())
    }

    fn is_read_only(msg: &ProbeMsg) -> bool {
        matches!(msg, ProbeMsg::Read)
    }
}
