//! One message handled: the handler runs inside the panic guard on the state in hand, and a
//! successful step is kept: its new state (a `Snapshot` kind) or its journal entry (a
//! `Journal` kind, with a snapshot when one is due) goes to the commit pipeline with its
//! timers, messages and effects, and its reply is held until durable (see `reply`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use perennial_storage::{JournalEntry, Pending, StoredReply};
use perennial_types::EntityKey;

use super::Cell;
use super::failure::Failed;
use super::mailbox::{Envelope, Via};
use super::reply::{Answer, Outcome, ReplyTo};
use crate::clock::now_us;
use crate::commit::{Extras, JournalStep, Write};
use crate::due::RowId;
use crate::guard::guard;
use crate::journal;
use crate::kind::Mode;
use crate::listen::Change;
use crate::process::ctx::Work;
use crate::{CallError, Caller, Ctx, Process};

impl<K: Process> Cell<K> {
    /// Handles one message. Returns false if the state in hand is no longer valid (a batch
    /// failed, or a rollback was impossible) and must be reloaded.
    pub(super) fn step(
        self: &Arc<Self>,
        state: &mut K,
        envelope: Envelope<K>,
        incarnation: u32,
    ) -> bool {
        let Envelope {
            msg,
            reply,
            via,
            caller,
        } = envelope;
        // Off by default; `RUST_LOG=perennial_core=debug` shows one span per step.
        let _span = tracing::debug_span!("step", kind = K::KIND, id = %self.id).entered();
        let Some(msg) = msg else {
            if matches!(via, Via::Delete) {
                let change = self.listening(state, None);
                let done = (reply, Ok(Answer::Done(true)));
                return self.delete(done, None, (incarnation, change));
            }
            let snapshot = matches!(via, Via::Rewrite { snapshot: true });
            return self.rewrite(state, reply, snapshot, incarnation);
        };
        if let Some(answered) = self.answered_before(&via) {
            return match answered {
                Some(kept) => self.respond_outcome(reply, Ok(Answer::Kept(kept)), incarnation),
                None => {
                    reply.send_skipped();
                    true
                }
            };
        }
        // Kept to dead-letter the message if it keeps failing: the handler consumes it.
        let message_json = guard(|| serde_json::to_string(&msg))
            .map_err(|panic| format!("encoding the message panicked: {panic}"))
            .and_then(|encoded| encoded.map_err(|e| e.to_string()));
        let backup = match &self.kind.mode {
            Mode::Ephemeral { clone } => match guard(|| clone(state)) {
                Ok(backup) => Some(backup),
                Err(panic) => {
                    // The message was not handled, and the state is as it was.
                    self.kind.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    let error = self.panicked_error(format!("copying the state panicked: {panic}"));
                    reply.send(Err(error.widen()), || self.key());
                    return true;
                }
            },
            Mode::Snapshot { .. } | Mode::Journal { .. } => None,
        };
        let read_only = matches!(self.kind.mode, Mode::Journal { .. })
            && guard(|| K::is_read_only(&msg)).unwrap_or(false);
        let at_us = now_us();
        let next = self.inner.lock().seq + 1;
        let mut ctx = Ctx::step(&self.id, at_us, next);
        ctx.set_caller(caller.as_ref());
        // What the kind's listeners hear: the state before, and the message.
        let mut change = self.listening(state, Some(&msg));
        let result = guard(|| state.handle(msg, &mut ctx));
        if let (Some(change), Some(listeners), Ok(Ok(_))) =
            (&mut change, &self.kind.listeners, &result)
        {
            change.after = guard(|| (listeners.clone_state)(state)).ok();
        }
        let work = ctx.take_work();
        let deletes = work.delete;
        let seed = ctx.drawn_seed();
        let result = match (result, self.extras(work, &via)) {
            (Ok(Ok(value)), Ok(extras)) => Ok((value, extras)),
            (Ok(Err(rejection)), _) => Err(Ok(rejection)),
            (Err(panic), _) | (Ok(Ok(_)), Err(panic)) => Err(Err(panic)),
        };
        if matches!(via, Via::Row(_) | Via::Idempotent { row: Some(_), .. }) {
            perennial_faults::failpoint!("step.row_handled");
        }
        match result {
            Ok((value, mut extras)) if deletes => {
                self.keep_reply(&mut extras, &value);
                self.clear_failures(&message_json);
                let answer = (reply, Ok(Answer::Value(value)));
                self.delete(answer, extras, (incarnation, change))
            }
            Ok((value, extras)) if matches!(self.kind.mode, Mode::Journal { .. }) => {
                if read_only && extras.is_none() {
                    self.clear_failures(&message_json);
                    return self.respond_gated(reply, Ok(value), incarnation);
                }
                self.journal(
                    state,
                    reply,
                    (value, extras),
                    &message_json,
                    (at_us, seed, caller.as_ref()),
                    (incarnation, change),
                )
            }
            Ok((value, extras)) => self.keep(
                state,
                reply,
                (value, extras),
                &message_json,
                (incarnation, change),
            ),
            Err(Ok(rejection)) => {
                self.clear_failures(&message_json);
                match self.rollback(state, backup) {
                    Ok(intact) => {
                        let rejected = Err(CallError::Rejected(rejection));
                        self.respond_gated(reply, rejected, incarnation) && intact
                    }
                    Err(error) => {
                        reply.send(Err(error.widen()), || self.key());
                        false
                    }
                }
            }
            Err(Err(panic)) => {
                let (row, letter) = match via {
                    Via::Row(row) | Via::Idempotent { row: Some(row), .. } => (Some(row), None),
                    Via::Letter(seq) => (None, Some(seq)),
                    Via::Call
                    | Via::Idempotent { row: None, .. }
                    | Via::Rewrite { .. }
                    | Via::Delete => (None, None),
                };
                let failure = Failed {
                    message: panic,
                    message_json,
                    row,
                    letter,
                };
                self.panicked(state, backup, reply, failure, incarnation)
            }
        }
    }

    /// What the kind's listeners will hear of this step, if it has any: the state before it
    /// and the message (copied before the handler consumes them); the step fills in the rest.
    /// `None` if copying panicked (logged): listeners then miss this step.
    fn listening(&self, state: &K, msg: Option<&K::Msg>) -> Option<Box<Change<K>>> {
        let listeners = self.kind.listeners.as_ref()?;
        let copied = guard(|| {
            let before = (listeners.clone_state)(state);
            let msg = msg.map(listeners.clone_msg);
            (before, msg)
        });
        match copied {
            Ok((before, msg)) => Some(Box::new(Change {
                id: self.id.clone(),
                step: 0,
                msg,
                after: None,
                before,
            })),
            Err(panic) => {
                tracing::error!(kind = K::KIND, id = %self.id, %panic,
                    "copying the state for the listeners panicked; they miss this step");
                None
            }
        }
    }

    /// Whether the message was answered before: `Some(Some(reply))` for an idempotency key
    /// whose reply is kept, `Some(None)` for a timer cancelled since it was sent.
    fn answered_before(&self, via: &Via) -> Option<Option<Arc<str>>> {
        match via {
            Via::Call | Via::Letter(_) | Via::Rewrite { .. } | Via::Delete => None,
            Via::Idempotent { key, row, .. } => {
                if row.as_ref().is_some_and(|row| self.is_cancelled(row)) {
                    return Some(None);
                }
                self.inner.lock().kept_reply(key).map(Some)
            }
            Via::Row(row) => self.is_cancelled(row).then_some(None),
        }
    }

    /// Whether `row` is one of this entity's own timers, cancelled since it was sent.
    fn is_cancelled(&self, row: &RowId) -> bool {
        let own = row.owner.kind == self.kind.name && row.owner.id == self.id;
        own && (self.inner.lock().is_cancelled(row.seq) || self.kind.engine.due.is_cancelled(row))
    }

    /// What a successful step writes besides its state: its timers, messages and effects,
    /// the row it applied, the timers it cancelled. `Err` if the step asked for something
    /// invalid; it then fails like a panic.
    fn extras(&self, work: Work, via: &Via) -> Result<Option<Box<Extras>>, String> {
        if let Some(detail) = work.invalid {
            return Err(format!("the step is invalid: {detail}"));
        }
        if work.is_empty() && matches!(via, Via::Call) {
            return Ok(None);
        }
        let engine = &self.kind.engine;
        if !work.rows.is_empty() && matches!(self.kind.mode, Mode::Ephemeral { .. }) {
            return Err(format!(
                "kind {:?} is ephemeral: its timers, messages and effects would outlive its \
                 state; register it with `register_snapshot` or `register_journal` to use them",
                K::KIND
            ));
        }
        let owner = self.key();
        let mut extras = Extras::default();
        for row in work.rows {
            if let Some((kind, _)) = &row.target
                && !engine.kind_names.contains(kind)
            {
                return Err(format!(
                    "the step is invalid: ctx.tell or ctx.ask to kind {kind:?}, which is not registered"
                ));
            }
            if let Some(name) = row.effect
                && !engine.effects.contains_key(&(K::KIND, name))
            {
                return Err(format!(
                    "the step is invalid: effect {name:?} is not registered; add \
                     .register_effect::<…>() to the runtime's builder"
                ));
            }
            let target = match row.target {
                Some((kind, id)) => EntityKey::new(kind, id),
                None => owner.clone(),
            };
            extras.rows.push(Pending {
                owner: owner.clone(),
                seq: row.seq,
                due_ms: row.due_ms,
                class: row.class,
                target,
                body: Arc::from(row.body),
            });
        }
        extras.done.extend(
            work.cancels
                .iter()
                .map(|&seq| RowId::new(owner.clone(), seq)),
        );
        match via {
            Via::Row(row) => extras.done.push((**row).clone()),
            Via::Letter(seq) => extras.letter = Some(*seq),
            Via::Idempotent { key, row, .. } => {
                if let Some(row) = row {
                    extras.done.push((**row).clone());
                }
                // Filled in once the reply is encoded (see `keep_reply`).
                extras.reply = Some((
                    key.to_string(),
                    StoredReply {
                        reply: String::new(),
                        at_ms: crate::clock::now_ms(),
                    },
                ));
            }
            Via::Call | Via::Rewrite { .. } | Via::Delete => {}
        }
        if !work.cancels.is_empty() {
            let mut inner = self.inner.lock();
            let step = inner.seq + 1;
            inner
                .keys()
                .cancelled
                .extend(work.cancels.iter().map(|&timer| (step, timer)));
        }
        Ok((!extras.is_empty()).then(|| Box::new(extras)))
    }

    /// Encodes the reply to keep for an idempotent call, and caches it. `None` (nothing to
    /// keep) if the step has no idempotency key or the reply cannot be encoded.
    fn keep_reply(&self, extras: &mut Option<Box<Extras>>, value: &K::Reply) {
        let Some(extras) = extras else {
            return;
        };
        let Some((key, kept)) = &mut extras.reply else {
            return;
        };
        match serde_json::to_string(value) {
            Ok(json) => {
                let json: Arc<str> = Arc::from(json);
                kept.reply = json.to_string();
                Self::cache_reply(&mut self.inner.lock(), Box::from(key.as_str()), json);
            }
            Err(e) => {
                tracing::warn!(kind = K::KIND, id = %self.id, error = %e,
                    "the reply cannot be encoded, so it is not kept for its idempotency key");
                extras.reply = None;
            }
        }
    }

    /// Keeps a step of a `Journal` kind: submits its journal entry (and a snapshot when one
    /// is due), holding the reply until durable.
    fn journal(
        self: &Arc<Self>,
        state: &mut K,
        reply: ReplyTo<K>,
        (value, mut extras): (K::Reply, Option<Box<Extras>>),
        message_json: &Result<String, String>,
        (at_us, seed, caller): (i64, Option<[u8; 32]>, Option<&Caller>),
        (incarnation, change): (u32, Option<Box<Change<K>>>),
    ) -> bool {
        let Mode::Journal { snapshots } = &self.kind.mode else {
            return false;
        };
        let message = match message_json {
            Ok(message) => message,
            Err(detail) => {
                // Without the message, the step cannot be replayed: undo it by replaying.
                let detail = format!("the message cannot be journaled: {detail}");
                tracing::error!(kind = K::KIND, id = %self.id, %detail, "the step is discarded");
                let error = CallError::Unencodable {
                    key: self.key(),
                    detail,
                };
                self.respond_gated(reply, Err(error), incarnation);
                return false;
            }
        };
        let digest = journal::reply_digest(&value);
        self.keep_reply(&mut extras, &value);
        let due = {
            let inner = self.inner.lock();
            snapshots.as_ref().filter(|codec| {
                inner.outdated || inner.seq + 1 - inner.snapshot_step >= codec.policy.every
            })
        };
        let snapshot = due.and_then(|codec| match guard(|| (codec.encode)(state)) {
            Ok(Ok(json)) => Some((Arc::<str>::from(json), codec.policy)),
            Ok(Err(e)) => {
                tracing::warn!(kind = K::KIND, id = %self.id, error = %e,
                    "the state cannot be encoded for a snapshot; the journal keeps every step");
                None
            }
            Err(panic) => {
                tracing::warn!(kind = K::KIND, id = %self.id, %panic,
                    "encoding a snapshot panicked; the journal keeps every step");
                None
            }
        });
        // A watched entity's watchers get its new state once the step is durable, and a kind's
        // change feed gets every step's.
        let engine = &self.kind.engine;
        let feed = self.kind.feed.is_some();
        if feed || (engine.watchers.any() && engine.watchers.is_watched(&self.key())) {
            let watched = match (&snapshot, snapshots) {
                (Some((json, _)), _) => Some(Arc::clone(json)),
                (None, Some(codec)) => guard(|| (codec.encode)(state))
                    .ok()
                    .and_then(Result::ok)
                    .map(Arc::<str>::from),
                (None, None) => None,
            };
            extras.get_or_insert_with(Box::default).watched = watched;
        }
        let Some(mut inner) = self.lock_current(incarnation) else {
            return self.respond_lost(reply);
        };
        inner.forget_failure(message);
        inner.seq += 1;
        let seq = inner.seq;
        // A new entity's first journaled step records what `init` was handed (its number may
        // be above 1 if a dead letter took a number before it).
        let init = inner.rare.as_mut().and_then(|rare| rare.init.take());
        let entry = JournalEntry {
            step: seq,
            at_us,
            entry: Arc::from(journal::encode_entry(
                message,
                (seed, caller),
                init,
                digest,
                crate::upgrade::schema_version::<K>(),
            )),
        };
        let (snapshot, trim) = match snapshot {
            Some((json, policy)) => {
                inner.snapshot_step = seq;
                inner.outdated = false;
                self.kind.engine.registry.account(inner.bytes, json.len());
                inner.bytes = json.len();
                (Some(json), policy.trim_through(seq))
            }
            None => (None, None),
        };
        let write = Write::Journal(Box::new(JournalStep {
            entry,
            snapshot,
            trim,
        }));
        let answer = Ok(Answer::Value(value));
        let step = (write, extras);
        self.hold_and_submit(inner, seq, (reply, answer), step, (incarnation, change));
        true
    }

    /// Keeps the step: encodes the state and submits it, holding the reply until durable.
    fn keep(
        self: &Arc<Self>,
        state: &mut K,
        reply: ReplyTo<K>,
        (value, mut extras): (K::Reply, Option<Box<Extras>>),
        message_json: &Result<String, String>,
        (incarnation, change): (u32, Option<Box<Change<K>>>),
    ) -> bool {
        self.keep_reply(&mut extras, &value);
        let Mode::Snapshot { encode, .. } = &self.kind.mode else {
            // Ephemeral: nothing to make durable, so the reply leaves at once, unless the
            // step made timers, messages or effects: they are durable even here.
            self.clear_failures(message_json);
            if extras.is_none() {
                reply.send(Ok(Answer::Value(value)), || self.key());
                return true;
            }
            let Some(mut inner) = self.lock_current(incarnation) else {
                return self.respond_lost(reply);
            };
            inner.seq += 1;
            let seq = inner.seq;
            let step = (Write::Nothing, extras);
            let answer = Ok(Answer::Value(value));
            self.hold_and_submit(inner, seq, (reply, answer), step, (incarnation, None));
            return true;
        };
        let json = match encoded(*encode, state) {
            Ok(json) => json,
            Err(detail) => return self.unencodable(state, reply, detail, incarnation),
        };
        let Some(mut inner) = self.lock_current(incarnation) else {
            return self.respond_lost(reply);
        };
        if let Ok(message) = message_json {
            inner.forget_failure(message);
        }
        if extras.is_none() && !inner.outdated && inner.last_json.as_deref() == Some(&*json) {
            // The step changed nothing, so nothing is written; but its reply must not overtake
            // a held one.
            self.hold_read(inner, reply, Ok(Answer::Value(value)));
            return true;
        }
        inner.seq += 1;
        let seq = inner.seq;
        self.kind.engine.registry.account(inner.bytes, json.len());
        inner.bytes = json.len();
        inner.last_json = Some(Arc::clone(&json));
        inner.outdated = false;
        let step = (Write::State(json), extras);
        let answer = Ok(Answer::Value(value));
        self.hold_and_submit(inner, seq, (reply, answer), step, (incarnation, change));
        true
    }

    /// Writes the state back at the kind's schema version if storage holds an older one;
    /// for a `Journal` kind with snapshots, as a snapshot with a mark entry (a step that
    /// changed nothing), also when `snapshot` asks for one and the journal goes beyond the
    /// latest snapshot. The answer, held until durable, says whether anything was written.
    fn rewrite(
        self: &Arc<Self>,
        state: &mut K,
        reply: ReplyTo<K>,
        snapshot: bool,
        incarnation: u32,
    ) -> bool {
        let (encode, snapshots) = match &self.kind.mode {
            Mode::Snapshot { encode, .. } => (*encode, None),
            Mode::Journal {
                snapshots: Some(codec),
            } => (codec.encode, Some(codec.policy)),
            Mode::Journal { snapshots: None } | Mode::Ephemeral { .. } => {
                return self.respond_outcome(reply, Ok(Answer::Done(false)), incarnation);
            }
        };
        let needed = {
            let inner = self.inner.lock();
            inner.outdated || (snapshots.is_some() && snapshot && inner.seq > inner.snapshot_step)
        };
        if !needed {
            return self.respond_outcome(reply, Ok(Answer::Done(false)), incarnation);
        }
        let json = match encoded(encode, state) {
            Ok(json) => json,
            Err(detail) => return self.unencodable(state, reply, detail, incarnation),
        };
        let Some(mut inner) = self.lock_current(incarnation) else {
            return self.respond_lost(reply);
        };
        inner.seq += 1;
        let seq = inner.seq;
        self.kind.engine.registry.account(inner.bytes, json.len());
        inner.bytes = json.len();
        inner.outdated = false;
        let write = match snapshots {
            None => {
                inner.last_json = Some(Arc::clone(&json));
                Write::State(json)
            }
            Some(policy) => {
                inner.snapshot_step = seq;
                let schema = crate::upgrade::schema_version::<K>();
                let entry = JournalEntry {
                    step: seq,
                    at_us: now_us(),
                    entry: Arc::from(journal::encode_mark(schema)),
                };
                Write::Journal(Box::new(JournalStep {
                    entry,
                    snapshot: Some(json),
                    trim: policy.trim_through(seq),
                }))
            }
        };
        let answer = Ok(Answer::Done(true));
        let step = (write, None);
        self.hold_and_submit(inner, seq, (reply, answer), step, (incarnation, None));
        true
    }

    /// Keeps a step that deleted its entity ([`Ctx::delete`], or an operator's request): the
    /// deletion goes to the commit pipeline with the step's messages to others (its rows to
    /// itself would die with it), and the reply is held until it is durable. Returns false: the state in hand is
    /// gone, so the next message activates the entity again once the deletion is durable,
    /// afresh (or from the state stored before, if the commit failed).
    fn delete(
        self: &Arc<Self>,
        (reply, answer): (ReplyTo<K>, Outcome<K>),
        mut extras: Option<Box<Extras>>,
        (incarnation, change): (u32, Option<Box<Change<K>>>),
    ) -> bool {
        if let Some(extras) = &mut extras {
            extras.rows.retain(|row| !row.dies_with_owner());
        }
        let Some(mut inner) = self.lock_current(incarnation) else {
            return self.respond_lost(reply);
        };
        inner.seq += 1;
        let seq = inner.seq;
        // Rows this life addressed to itself that are still on their way are stale from now
        // on, and the next life numbers its rows after them.
        inner.keys().deleted_at = seq;
        let write = match self.kind.mode {
            Mode::Ephemeral { .. } if extras.is_none() && inner.held.is_empty() => {
                // Nothing to make durable, and no reply to wait behind.
                inner.durable = seq;
                drop(inner);
                reply.send(answer, || self.key());
                return false;
            }
            Mode::Ephemeral { .. } => Write::Nothing,
            Mode::Snapshot { .. } | Mode::Journal { .. } => Write::Delete,
        };
        let change = change.map(|mut change| {
            change.after = None;
            change
        });
        let step = (write, extras);
        self.hold_and_submit(inner, seq, (reply, answer), step, (incarnation, change));
        false
    }

    /// The message ran to completion, so it no longer counts as failing.
    fn clear_failures(&self, message_json: &Result<String, String>) {
        if let Ok(message) = message_json {
            self.inner.lock().forget_failure(message);
        }
    }

    fn unencodable(
        self: &Arc<Self>,
        state: &mut K,
        reply: ReplyTo<K>,
        detail: String,
        incarnation: u32,
    ) -> bool {
        tracing::error!(kind = K::KIND, id = %self.id, %detail, "the new state cannot be encoded; the step is discarded");
        let intact = match self.rollback(state, None) {
            Ok(intact) => intact,
            Err(error) => {
                reply.send(Err(error.widen()), || self.key());
                return false;
            }
        };
        let error = CallError::Unencodable {
            key: self.key(),
            detail,
        };
        self.respond_gated(reply, Err(error), incarnation) && intact
    }
}

/// The state's JSON, or why it cannot be encoded (the encoder failed or panicked).
fn encoded<K>(encode: fn(&K) -> serde_json::Result<String>, state: &K) -> Result<Arc<str>, String> {
    match guard(|| encode(state)) {
        Ok(Ok(json)) => Ok(Arc::from(json)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("the encoder panicked: {panic}")),
    }
}
