//! Where a message's outcome goes ([`ReplyTo`]), and the replies held until their step is
//! durable: released in step order when the commit pipeline reports a batch durable, failed
//! when it reports it failed. A reply computed from the state in memory (a read) leaves only
//! while this node still serves the entity's shard under the epoch that state was loaded
//! under.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use perennial_types::{EntityKey, Epoch, ShardId};
use tokio::sync::oneshot;

use super::{Cell, Inner, Keys, Serving, Slot};
use crate::commit::{Extras, Failure, Owner, Step, Write};
use crate::courier::Delivery;
use crate::listen::Change;
use crate::{CallError, Process};

/// What a call finally gets.
pub(crate) type Reply<K> = Result<<K as Process>::Reply, CallError<<K as Process>::Error>>;

/// A successful step's answer: the handler's reply, or the reply kept for an idempotency key.
pub(crate) enum Answer<K: Process> {
    Value(K::Reply),
    /// The JSON of the reply to the first call with the same idempotency key.
    Kept(Arc<str>),
    /// The answer to an operator's request that carries no message (`entity::rewrite`,
    /// `entity::delete`): whether it wrote anything.
    Done(bool),
}

pub(super) type Outcome<K> = Result<Answer<K>, CallError<<K as Process>::Error>>;

/// Where a message's outcome goes.
pub(crate) enum ReplyTo<K: Process> {
    /// A typed caller.
    Caller(oneshot::Sender<Reply<K>>),
    /// A caller by kind name: the reply as JSON (for a retried idempotent call, the kept
    /// bytes themselves).
    Json(oneshot::Sender<Result<String, CallError<K::Error>>>),
    /// The dispatcher, delivering a timer, a message from another entity, an effect's result
    /// or an answer.
    Row(oneshot::Sender<Delivery>),
    /// The dispatcher, delivering an ask's message: the reply goes back with the delivery.
    Ask(oneshot::Sender<Delivery>),
    /// An operator's request without a message: a migration pass rewriting the stored state
    /// (see `entity::rewrite`), a deletion (`entity::delete`).
    Done(oneshot::Sender<Result<bool, CallError<K::Error>>>),
}

impl<K: Process> ReplyTo<K> {
    /// Tells the dispatcher its row needs nothing more (a cancelled timer).
    pub(super) fn send_skipped(self) {
        if let Self::Row(to) | Self::Ask(to) = self {
            let _ = to.send(Delivery::Skipped);
        }
    }

    /// Sends the outcome; `key` names the entity in errors made here.
    pub(super) fn send(self, outcome: Outcome<K>, key: impl FnOnce() -> EntityKey) {
        match self {
            Self::Caller(to) => {
                let reply = outcome.and_then(|answer| match answer {
                    Answer::Value(value) => Ok(value),
                    Answer::Done(_) => Err(not_a_reply(key())),
                    Answer::Kept(json) => {
                        serde_json::from_str(&json).map_err(|e| CallError::CorruptState {
                            key: key(),
                            detail: format!(
                                "the reply kept for the idempotency key no longer decodes: {e}"
                            ),
                        })
                    }
                });
                let _ = to.send(reply);
            }
            Self::Json(to) => {
                let reply = outcome.and_then(|answer| match answer {
                    Answer::Value(value) => {
                        serde_json::to_string(&value).map_err(|e| CallError::UnencodableReply {
                            key: key(),
                            detail: e.to_string(),
                        })
                    }
                    Answer::Kept(json) => Ok(json.to_string()),
                    Answer::Done(_) => Err(not_a_reply(key())),
                });
                let _ = to.send(reply);
            }
            Self::Done(to) => {
                let _ = to.send(outcome.map(|answer| !matches!(answer, Answer::Done(false))));
            }
            Self::Row(to) => {
                let delivery = match outcome {
                    Ok(_) | Err(CallError::DeadLettered { .. }) => Delivery::Applied,
                    Err(e) => not_applied(e),
                };
                let _ = to.send(delivery);
            }
            Self::Ask(to) => {
                let delivery = match outcome {
                    Ok(Answer::Value(value)) => match serde_json::to_string(&value) {
                        Ok(json) => Delivery::Answered(json),
                        Err(e) => Delivery::Poison(format!("the reply cannot be encoded: {e}")),
                    },
                    Ok(Answer::Kept(json)) => Delivery::Answered(json.to_string()),
                    Ok(Answer::Done(_)) => Delivery::Poison("an ask got no reply".into()),
                    Err(CallError::DeadLettered {
                        attempts, message, ..
                    }) => Delivery::Poison(format!(
                        "the message was set aside as a dead letter after {attempts} attempts: \
                         {message}"
                    )),
                    Err(e) => not_applied(e),
                };
                let _ = to.send(delivery);
            }
        }
    }
}

/// What the dispatcher is told of a row whose step failed.
fn not_applied<E: crate::Rejection>(error: CallError<E>) -> Delivery {
    match error {
        CallError::Rejected(e) => Delivery::Refused {
            code: crate::Rejection::code(&e).to_owned(),
            message: e.to_string(),
        },
        // Not applied here (activation found the shard gone): another node will.
        CallError::NotOwner { .. } => Delivery::NotServed,
        e => Delivery::Retry(e.to_string()),
    }
}

/// The error a caller would get for a rewrite's answer, which no caller is given.
fn not_a_reply<E>(key: EntityKey) -> CallError<E> {
    CallError::UnencodableReply {
        key,
        detail: "a rewrite has no reply".into(),
    }
}

/// A reply waiting for the step at `seq` (and all before it) to be durable.
pub(super) struct Held<K: Process> {
    pub(super) seq: u64,
    pub(super) reply: ReplyTo<K>,
    pub(super) result: Outcome<K>,
    /// Whether its step wrote nothing (a read): its answer came from the state in memory,
    /// so it leaves only while this node still serves the shard under the cell's epoch.
    pub(super) read: bool,
    /// What the kind's listeners hear once the step is durable (if it has listeners).
    pub(super) change: Option<Box<Change<K>>>,
}

impl<K: Process> Cell<K> {
    /// What a reply says when it leaves: its step's outcome, unless the step wrote nothing
    /// (`read`) and this node no longer serves the shard under the epoch the answer was
    /// computed under. A node can stall between a step and its reply while another node
    /// takes the shard and writes; the read is then refused as not served (nothing was
    /// applied), and its caller asks the owner.
    fn released(&self, outcome: Outcome<K>, read: bool) -> Outcome<K> {
        if read && !matches!(self.serving(), Serving::Current) {
            return Err(CallError::NotOwner { shard: self.shard });
        }
        outcome
    }

    /// Answers a step that wrote nothing: at once if every earlier step is durable, else
    /// after them (a reply never overtakes a held one).
    pub(super) fn hold_read(
        &self,
        mut inner: parking_lot::MutexGuard<'_, Inner<K>>,
        reply: ReplyTo<K>,
        result: Outcome<K>,
    ) {
        if inner.held.is_empty() && inner.seq == inner.durable {
            drop(inner);
            reply.send(self.released(result, true), || self.key());
        } else {
            let seq = inner.seq;
            inner.held.push_back(Held {
                seq,
                reply,
                result,
                read: true,
                change: None,
            });
        }
    }

    /// Holds the reply of step `seq` until it is durable (with what the kind's listeners
    /// hear then), and sends the step's write to the commit pipeline.
    pub(super) fn hold_and_submit(
        self: &Arc<Self>,
        mut inner: parking_lot::MutexGuard<'_, Inner<K>>,
        seq: u64,
        (reply, result): (ReplyTo<K>, Outcome<K>),
        (write, extras): (Write, Option<Box<Extras>>),
        (incarnation, change): (u32, Option<Box<Change<K>>>),
    ) {
        let change = change.map(|mut change| {
            change.step = seq;
            change
        });
        inner.held.push_back(Held {
            seq,
            reply,
            result,
            read: false,
            change,
        });
        drop(inner);
        self.kind.engine.committer.submit(Step {
            owner: Arc::clone(self) as Arc<dyn Owner>,
            incarnation,
            seq,
            write,
            extras,
        });
    }

    /// Answers now if nothing is held, or after the latest step is durable. (Replies of
    /// ephemeral kinds depend on nothing durable and always leave at once.)
    pub(super) fn respond_gated(
        &self,
        reply: ReplyTo<K>,
        result: Reply<K>,
        incarnation: u32,
    ) -> bool {
        self.respond_outcome(reply, result.map(Answer::Value), incarnation)
    }

    /// [`respond_gated`](Self::respond_gated), for any answer.
    pub(super) fn respond_outcome(
        &self,
        reply: ReplyTo<K>,
        result: Outcome<K>,
        incarnation: u32,
    ) -> bool {
        let inner = self.inner.lock();
        if !self.kind.is_durable() && inner.held.is_empty() {
            drop(inner);
            reply.send(self.released(result, true), || self.key());
            return true;
        }
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            drop(inner);
            return self.respond_lost(reply);
        }
        self.hold_read(inner, reply, result);
        true
    }

    /// Fails a reply whose step was computed from state a failed batch took back.
    pub(super) fn respond_lost(&self, reply: ReplyTo<K>) -> bool {
        let lost = self.inner.lock().lost();
        let failure = lost.unwrap_or(Failure::Storage(perennial_storage::Error::Backend(
            "the entity's pending steps were lost".into(),
        )));
        reply.send(Err(self.failure_error(failure).widen()), || self.key());
        false
    }

    fn failure_error(&self, failure: Failure) -> CallError {
        match failure {
            Failure::Storage(source) => CallError::Storage {
                key: self.key(),
                source,
            },
            Failure::Fenced => CallError::Fenced {
                key: self.key(),
                shard: self.shard,
            },
        }
    }
}

impl<K: Process> Owner for Cell<K> {
    fn key(&self) -> EntityKey {
        Cell::key(self)
    }

    fn schema(&self) -> u32 {
        crate::upgrade::schema_version::<K>()
    }

    fn keeps_feed(&self) -> bool {
        self.kind.feed.is_some()
    }

    fn shard(&self) -> ShardId {
        self.shard
    }

    fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    fn incarnation(&self) -> u32 {
        self.incarnation.load(Ordering::SeqCst)
    }

    fn durable(&self, incarnation: u32, seq: u64) {
        let mut inner = self.inner.lock();
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            return;
        }
        inner.durable = inner.durable.max(seq);
        let durable = inner.durable;
        if let Some(rare) = &mut inner.rare {
            rare.keys.cancelled.retain(|(step, _)| *step > durable);
        }
        while let Some(held) = inner.held.pop_front() {
            if held.seq > inner.durable {
                inner.held.push_front(held);
                break;
            }
            let outcome = self.released(held.result, held.read);
            held.reply.send(outcome, || self.key());
            if let (Some(change), Some(listeners)) = (held.change, &self.kind.listeners) {
                listeners.publish(change);
            }
        }
        if inner.held.is_empty() {
            // Free the queue's buffer: most entities are idle most of the time, and an empty
            // queue would otherwise keep room for several replies, per entity, forever.
            inner.held = VecDeque::new();
        }
    }

    fn failed(&self, incarnation: u32, failure: Failure) {
        let mut inner = self.inner.lock();
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            return;
        }
        let error = self.failure_error(failure.clone());
        if self.kind.is_durable() {
            // The in-memory state includes lost steps: start a new incarnation from storage.
            self.incarnation.fetch_add(1, Ordering::SeqCst);
            if matches!(inner.state, Slot::Ready(_)) {
                inner.state = Slot::Unloaded;
            }
            inner.seq = inner.durable;
            inner.last_json = None;
            let rare = inner.rare();
            rare.init = None;
            rare.lost = Some(failure);
            // Replies kept by lost steps were never stored; cancels may not have happened.
            rare.keys = Keys::default();
        }
        for held in inner.held.drain(..) {
            held.reply.send(Err(error.clone().widen()), || self.key());
        }
    }
}
