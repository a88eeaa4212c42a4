//! A step that fails: a handler's `Err` or panic is rolled back to the state after the
//! previous step, and a message that panics `max_attempts` times in a row is set aside as a
//! dead letter, in a write of its own.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use perennial_storage::DeadLetter;

use super::Cell;
use super::reply::{Held, ReplyTo};
use crate::commit::{Extras, Owner, Step, Write};
use crate::due::RowId;
use crate::guard::guard;
use crate::kind::Mode;
use crate::{CallError, Process};

impl<K: Process> Cell<K> {
    /// Handles a panic: rolls back, counts it, and dead-letters a message that keeps failing.
    pub(super) fn panicked(
        self: &Arc<Self>,
        state: &mut K,
        backup: Option<K>,
        reply: ReplyTo<K>,
        failed: Failed,
        incarnation: u32,
    ) -> bool {
        let Failed {
            message,
            message_json,
            row,
            letter: retried,
        } = failed;
        self.kind.counters.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(kind = K::KIND, id = %self.id, panic = %message,
            "handler panicked; the entity goes on from its previous state");
        let intact = match self.rollback(state, backup) {
            Ok(intact) => intact,
            Err(error) => {
                reply.send(Err(error.widen()), || self.key());
                return false;
            }
        };
        let max = self.kind.engine.config.max_attempts;
        let message_json =
            message_json.unwrap_or_else(|e| format!("<the message cannot be encoded: {e}>"));
        let Some(mut inner) = self.lock_current(incarnation) else {
            return self.respond_lost(reply);
        };
        let digest = digest_of(&message_json);
        let attempts = record_failure(&mut inner.rare().failures, digest);
        if attempts < max {
            drop(inner);
            let error = CallError::Panicked {
                key: self.key(),
                message,
            };
            return self.respond_gated(reply, Err(error), incarnation) && intact;
        }
        forget_failure(&mut inner.rare().failures, digest);
        // The dead letter is a write of its own, with a version of its own: its reply waits
        // for exactly the batch that holds it, and the entity cannot be passivated before.
        inner.seq += 1;
        let seq = inner.seq;
        let key = self.key();
        inner.held.push_back(Held {
            seq,
            reply,
            result: Err(CallError::DeadLettered {
                key: key.clone(),
                attempts,
                message: message.clone(),
            }),
            read: false,
            change: None,
        });
        drop(inner);
        tracing::warn!(kind = K::KIND, id = %self.id, attempts, "message set aside as a dead letter");
        self.kind
            .counters
            .dead_letters
            .fetch_add(1, Ordering::Relaxed);
        let letter = DeadLetter {
            key,
            message: message_json,
            error: message,
            attempts,
            at_ms: crate::clock::now_ms(),
        };
        // A timer or message that keeps failing is done with: its row goes with the letter.
        // So does the letter it came from, if it was a retried dead letter.
        let extras = Extras {
            done: row.map(|row| vec![*row]).unwrap_or_default(),
            letter: retried,
            ..Extras::default()
        };
        let extras = (!extras.is_empty()).then(|| Box::new(extras));
        self.kind.engine.committer.submit(Step {
            owner: Arc::clone(self) as Arc<dyn Owner>,
            incarnation,
            seq,
            write: Write::DeadLetter(Box::new(letter)),
            extras,
        });
        intact
    }

    /// Restores the state from before the failed step. Returns whether the state in hand is
    /// that state; if not (`Journal` kinds), the entity rebuilds it by replay once its steps
    /// in flight are durable.
    ///
    /// A `Snapshot` kind's rollback is impossible only if the last state's JSON does not
    /// decode (its type does not round-trip through `serde_json`, such as an `f64` holding
    /// NaN). The state in hand is then abandoned: the caller gets the error, and the entity
    /// reloads from storage once its steps in flight are settled. Nothing else is failed:
    /// those steps are fine.
    pub(super) fn rollback(&self, state: &mut K, backup: Option<K>) -> Result<bool, CallError> {
        if let Some(backup) = backup {
            *state = backup;
            return Ok(true);
        }
        let decode = match &self.kind.mode {
            Mode::Snapshot { decode, .. } => decode,
            Mode::Journal { .. } => return Ok(false),
            Mode::Ephemeral { .. } => return Ok(true),
        };
        let json = self.inner.lock().last_json.clone();
        let restored = match json {
            Some(json) => guard(|| decode(&json))
                .map_err(|p| format!("the decoder panicked: {p}"))
                .and_then(|r| r.map_err(|e| e.to_string())),
            None => self
                .fresh()
                .map(|(state, _)| state)
                .map_err(|e| e.to_string()),
        };
        match restored {
            Ok(previous) => {
                *state = previous;
                Ok(true)
            }
            Err(detail) => {
                tracing::error!(kind = K::KIND, id = %self.id, %detail,
                    "cannot restore the previous state; reloading from storage");
                Err(CallError::CorruptState {
                    key: self.key(),
                    detail: format!(
                        "the last state does not decode after encoding; its type must \
                         round-trip through serde_json: {detail}"
                    ),
                })
            }
        }
    }
}

/// A step that panicked (or asked for something invalid).
pub(super) struct Failed {
    /// The panic's message.
    pub(super) message: String,
    /// The message, to dead-letter it if it keeps failing.
    pub(super) message_json: Result<String, String>,
    /// The pending row it came from, deleted with its dead letter.
    pub(super) row: Option<Box<RowId>>,
    /// The dead letter it was a retry of, deleted with the new one.
    pub(super) letter: Option<u64>,
}

/// How often one message has failed in a row at this entity.
pub(super) struct Attempts {
    pub(super) digest: u64,
    pub(super) count: u32,
}

/// At most this many distinct failing messages are tracked per entity.
const TRACKED_FAILURES: usize = 8;

pub(super) fn digest_of(message: &str) -> u64 {
    let mut h = DefaultHasher::new();
    message.hash(&mut h);
    h.finish()
}

/// Counts one more failure of the message with `digest`; returns the count.
fn record_failure(failures: &mut Vec<Attempts>, digest: u64) -> u32 {
    if let Some(a) = failures.iter_mut().find(|a| a.digest == digest) {
        a.count += 1;
        return a.count;
    }
    if failures.len() >= TRACKED_FAILURES {
        failures.remove(0);
    }
    failures.push(Attempts { digest, count: 1 });
    1
}

pub(super) fn forget_failure(failures: &mut Vec<Attempts>, digest: u64) {
    failures.retain(|a| a.digest != digest);
}
