//! Kinds `probe` and `jprobe`: append-only lists of tokens, the entities the reliability
//! suite's histories are about (`perennial-checker`). Each append returns the whole list, so
//! every reply shows the entity's timeline up to that append, and checking a history takes
//! linear time (Elle's list-append idea). Also a small event log for anyone.
//!
//! The two kinds answer the same messages; `probe` keeps its list as a `Snapshot` kind,
//! `jprobe` as a `Journal` kind with a snapshot every [`JOURNAL_SNAPSHOT_EVERY`] steps (which
//! trims the journal), so that the suite's histories also cover journaling, snapshots,
//! trims and replay.
//!
//! Messages, as JSON: `{"append": "c1-7"}`, `{"forward": {"token": "c1-8", "to": "p2"}}`,
//! `{"ask": {"token": "c1-11", "to": "p2"}}`, `{"schedule": {"token": "c1-9", "ms": 50}}`,
//! `{"effect": "c1-10"}`, `"read"`. All answer the list.

use std::marker::PhantomData;
use std::time::Duration;

use perennial_core::{Asked, Ctx, Effect, EffectCtx, EffectError, EffectFailure, Process};
use serde::{Deserialize, Serialize};

/// How often a `jprobe` snapshots its list (and trims the journal the snapshot covers).
pub const JOURNAL_SNAPSHOT_EVERY: u64 = 8;

/// The state of kind `probe`: the tokens appended, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The tokens.
    pub tokens: Vec<String>,
}

/// The state of kind `jprobe`: a [`Probe`] kept by its journal.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JournalProbe(pub Probe);

/// A message to a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMsg {
    /// Appends a token.
    Append(String),
    /// Appends a token here and sends it to the probe `to` of the same kind (a message
    /// between entities, exactly once), which appends it when it arrives. `to` should be
    /// another probe: the checker expects each token once per list.
    Forward {
        /// The token.
        token: String,
        /// The probe that receives it too.
        to: String,
    },
    /// Asks the probe `to` of the same kind to append a token (an ask between entities:
    /// applied there exactly once), and appends [`answered`]`(token)` here when the answer
    /// comes (exactly once), or [`unanswered`]`(token)` if the ask failed.
    Ask {
        /// The token.
        token: String,
        /// The probe asked.
        to: String,
    },
    /// The answer to an [`Ask`](ProbeMsg::Ask) (sent by the runtime).
    Answer {
        /// The token asked for.
        token: String,
        /// The answer.
        answer: Asked<Probe>,
    },
    /// Appends a token when a durable timer fires, `ms` from now.
    Schedule {
        /// The token.
        token: String,
        /// The delay, in milliseconds.
        ms: u64,
    },
    /// Appends a token when an effect ([`Echo`]) that returns it has run: effects run at
    /// least once, their results are applied exactly once.
    Effect(String),
    /// Reads the list.
    Read,
}

/// The effect of [`ProbeMsg::Effect`]: gives its token back, to be appended.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Echo<P> {
    token: String,
    #[serde(skip)]
    kind: PhantomData<fn() -> P>,
}

impl<P: Process<Msg = ProbeMsg>> Effect for Echo<P> {
    type Kind = P;
    const NAME: &'static str = "echo";

    async fn run(self, _cx: EffectCtx) -> Result<ProbeMsg, EffectError> {
        Ok(ProbeMsg::Append(self.token))
    }

    /// Never called: an echo does not fail.
    fn failed(self, _failure: EffectFailure) -> ProbeMsg {
        ProbeMsg::Append(self.token)
    }
}

/// The token a probe appends when the answer to its ask of `token` comes.
pub fn answered(token: &str) -> String {
    format!("{token}!")
}

/// The token a probe appends when its ask of `token` fails.
pub fn unanswered(token: &str) -> String {
    format!("{token}?")
}

/// What both kinds do with a message.
fn handle<P: Process<Msg = ProbeMsg, Reply = Vec<String>>>(
    probe: &mut Probe,
    msg: ProbeMsg,
    ctx: &mut Ctx<'_, P>,
) -> Vec<String> {
    match msg {
        ProbeMsg::Append(token) => probe.tokens.push(token),
        ProbeMsg::Forward { token, to } => {
            ctx.tell::<P>(to, ProbeMsg::Append(token.clone()));
            probe.tokens.push(token);
        }
        ProbeMsg::Ask { token, to } => {
            let append = ProbeMsg::Append(token.clone());
            // Both kinds answer a list: the answer reads as a `Probe`'s.
            ctx.ask::<P>(to, append, |answer| ProbeMsg::Answer {
                token,
                answer: Asked {
                    id: answer.id,
                    result: answer.result,
                },
            });
        }
        ProbeMsg::Answer { token, answer } => probe.tokens.push(match answer.result {
            Ok(_) => answered(&token),
            Err(_) => unanswered(&token),
        }),
        ProbeMsg::Schedule { token, ms } => {
            ctx.schedule(Duration::from_millis(ms), ProbeMsg::Append(token));
        }
        ProbeMsg::Effect(token) => {
            ctx.effect(Echo::<P> {
                token,
                kind: PhantomData,
            });
        }
        ProbeMsg::Read => {}
    }
    probe.tokens.clone()
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
        Ok(handle(self, msg, ctx))
    }

    fn is_read_only(msg: &ProbeMsg) -> bool {
        matches!(msg, ProbeMsg::Read)
    }
}

impl Process for JournalProbe {
    const KIND: &'static str = "jprobe";
    type Msg = ProbeMsg;
    type Reply = Vec<String>;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        msg: ProbeMsg,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Vec<String>, Self::Error> {
        Ok(handle(&mut self.0, msg, ctx))
    }

    fn is_read_only(msg: &ProbeMsg) -> bool {
        matches!(msg, ProbeMsg::Read)
    }
}
