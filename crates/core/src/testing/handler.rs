//! [`Handler`]: a kind's `handle` run step by step without a runtime, and [`Step`]: what one
//! step replied and asked for.

use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use perennial_storage::PendingClass;
use perennial_types::{EntityId, EntityKey};

use crate::process::ask::{AskBody, answer_message};
use crate::process::ctx::{NewRow, Work};
use crate::{AskError, AskId, Asked, Caller, Ctx, Effect, EffectId, Process, TimerId};

/// Runs one kind's handler, step by step, without a runtime.
///
/// Its clock starts at 2026-01-01T00:00:00Z and moves only when told
/// ([`advance`](Self::advance), [`at`](Self::at)); its steps draw their randomness from a
/// generator seeded with [`seed`](Self::seed) (0 by default), so a test is the same every
/// time. Steps are numbered from 1, as an entity's first steps are.
#[derive(Debug)]
pub struct Handler<K: Process> {
    id: EntityId,
    now: SystemTime,
    seed: u64,
    caller: Option<Caller>,
    steps: u64,
    _kind: PhantomData<fn() -> K>,
}

/// What [`Handler`]'s clock reads until it is moved: 2026-01-01T00:00:00Z.
pub const START: Duration = Duration::from_secs(1_767_225_600);

impl<K: Process> Handler<K> {
    /// A handler for the entity `id` of kind `K`.
    ///
    /// # Panics
    /// If `id` is not a valid entity id (empty, too long, or with control characters).
    pub fn new(id: &str) -> Self {
        let id = EntityId::new(id).unwrap_or_else(|e| panic!("{id:?} is not an entity id: {e}"));
        Self {
            id,
            now: SystemTime::UNIX_EPOCH + START,
            seed: 0,
            caller: None,
            steps: 0,
            _kind: PhantomData,
        }
    }

    /// Sets the clock to `now`.
    #[must_use]
    pub fn at(mut self, now: SystemTime) -> Self {
        self.now = now;
        self
    }

    /// Seeds the randomness of the steps ([`Ctx::rng`], [`Ctx::new_id`]): step `n` draws from
    /// a generator seeded with this seed and `n`.
    ///
    /// ```
    /// use perennial_core::testing::Handler;
    /// use perennial_core::{Ctx, Process};
    ///
    /// #[derive(Default)]
    /// struct Tickets;
    ///
    /// impl Process for Tickets {
    ///     const KIND: &'static str = "tickets";
    ///     type Msg = ();
    ///     type Reply = String;
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn handle(&mut self, (): (), ctx: &mut Ctx<'_, Self>) -> Result<String, Self::Error> {
    ///         Ok(ctx.new_id())
    ///     }
    /// }
    ///
    /// let ticket = |seed| Handler::<Tickets>::new("t").seed(seed).handle(&mut Tickets, ()).reply;
    /// assert_eq!(ticket(7), ticket(7));
    /// assert_ne!(ticket(7), ticket(8));
    /// ```
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Makes the messages come from `caller` ([`Ctx::caller`]); `None` for anonymous ones.
    pub fn set_caller(&mut self, caller: Option<Caller>) {
        self.caller = caller;
    }

    /// What the clock reads: the time of the next step.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Handles `msg` with `state`, as one step of the entity: the state changes in place, and
    /// the step's reply and requests come back. A step that returns an error leaves the
    /// requests in the [`Step`] but, on a runtime, would be rolled back with its state; here
    /// the state is yours, as the handler left it.
    ///
    /// # Panics
    /// If the handler panics.
    pub fn handle(&mut self, state: &mut K, msg: K::Msg) -> Step<K> {
        self.step(|state, ctx| state.handle(msg, ctx), state)
    }

    /// Runs [`Process::init`] on `state`, as for a new entity before its first message.
    pub fn init(&mut self, state: &mut K) -> Step<K, ()> {
        self.step(
            |state, ctx| {
                state.init(ctx);
                Ok(())
            },
            state,
        )
    }

    fn step<R>(
        &mut self,
        run: impl FnOnce(&mut K, &mut Ctx<'_, K>) -> Result<R, K::Error>,
        state: &mut K,
    ) -> Step<K, R> {
        self.steps += 1;
        let at_us = self
            .now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        seed[8..16].copy_from_slice(&self.steps.to_le_bytes());
        let mut ctx = Ctx::<K>::seeded(&self.id, at_us, seed, self.steps);
        ctx.set_caller(self.caller.as_ref());
        let reply = run(state, &mut ctx);
        Step {
            reply,
            work: ctx.take_work(),
            key: EntityKey::new(K::KIND, self.id.clone()),
            _kind: PhantomData,
        }
    }
}

/// One step run by a [`Handler`]: its reply, and what it asked for.
pub struct Step<K: Process, R = <K as Process>::Reply> {
    /// What the handler returned.
    pub reply: Result<R, K::Error>,
    work: Work,
    key: EntityKey,
    _kind: PhantomData<fn() -> K>,
}

/// A timer a step scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct Timer<M> {
    /// Its id, as [`Ctx::schedule`] returned it.
    pub id: TimerId,
    /// When it fires (to the millisecond, as timers are stored).
    pub at: SystemTime,
    /// The message it brings.
    pub msg: M,
}

impl<K: Process, R> Step<K, R> {
    /// The timers the step scheduled, in order.
    pub fn timers(&self) -> Vec<Timer<K::Msg>> {
        self.rows(PendingClass::Timer, None)
            .map(|row| Timer {
                id: TimerId(row.seq),
                at: SystemTime::UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(row.due_ms).unwrap_or(0)),
                msg: decode(&row.body, "a timer's message"),
            })
            .collect()
    }

    /// Whether the step cancelled `timer`.
    pub fn cancels_timer(&self, timer: TimerId) -> bool {
        self.work.cancels.contains(&timer.0)
    }

    /// Whether the step cancelled `effect` (one of this entity's).
    pub fn cancels_effect(&self, effect: &EffectId) -> bool {
        *effect.entity() == self.key && self.work.cancels.contains(&effect.number())
    }

    /// The messages the step told entities of kind `T` ([`Ctx::tell`]), in order, with the
    /// id each went to.
    pub fn told<T: Process>(&self) -> Vec<(EntityId, T::Msg)> {
        self.rows(PendingClass::Message, Some(T::KIND))
            .map(|row| (target(row), decode(&row.body, "a told message")))
            .collect()
    }

    /// The asks the step made of entities of kind `T` ([`Ctx::ask`]), in order: each ask's
    /// id, the entity asked and the message it was sent.
    pub fn asked<T: Process>(&self) -> Vec<(AskId, EntityId, T::Msg)> {
        self.rows(PendingClass::Ask, Some(T::KIND))
            .map(|row| {
                let body = ask_body(row);
                let msg = decode(body.msg.get(), "an asked message");
                (AskId(row.seq), target(row), msg)
            })
            .collect()
    }

    /// The message the asking entity gets when ask `ask` of this step is answered with
    /// `result` (a reply of the entity of kind `T` it asked, or why there is none): what the
    /// runtime would deliver to it. Hand it to [`Handler::handle`] to test the answer's step.
    ///
    /// # Panics
    /// If this step made no ask `ask` of kind `T`.
    pub fn answer<T: Process>(&self, ask: AskId, result: Result<T::Reply, AskError>) -> K::Msg {
        let row = self
            .rows(PendingClass::Ask, Some(T::KIND))
            .find(|row| row.seq == ask.0)
            .unwrap_or_else(|| panic!("this step made no {ask} of a {}", T::KIND));
        let asked = serde_json::to_value(Asked::<T> { id: ask, result })
            .unwrap_or_else(|e| panic!("the answer cannot be encoded as JSON: {e}"));
        let message = answer_message(&ask_body(row), asked).unwrap_or_else(|e| panic!("{e}"));
        decode(&message, "an answer's message")
    }

    /// The effects of type `E` the step started ([`Ctx::effect`]), in order, with their ids.
    pub fn effects<E: Effect<Kind = K>>(&self) -> Vec<(EffectId, E)> {
        self.rows(PendingClass::Effect, None)
            .filter(|row| row.effect == Some(E::NAME))
            .map(|row| {
                #[derive(serde::Deserialize)]
                struct Stored<E> {
                    input: E,
                }
                let stored: Stored<E> = decode(&row.body, "an effect");
                (EffectId::new(self.key.clone(), row.seq), stored.input)
            })
            .collect()
    }

    /// Whether the step deleted its entity ([`Ctx::delete`]).
    pub fn deleted(&self) -> bool {
        self.work.delete
    }

    /// Why the runtime would fail this step, like a panic, if it would: a request it cannot
    /// keep (an invalid id to tell or ask, a value that cannot be encoded as JSON).
    pub fn invalid(&self) -> Option<&str> {
        self.work.invalid.as_deref()
    }

    fn rows(
        &self,
        class: PendingClass,
        kind: Option<&'static str>,
    ) -> impl Iterator<Item = &NewRow> {
        self.work.rows.iter().filter(move |row| {
            row.class == class && kind.is_none_or(|k| row.target.as_ref().is_some_and(|t| t.0 == k))
        })
    }
}

impl<K: Process, R: std::fmt::Debug> std::fmt::Debug for Step<K, R>
where
    K::Error: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("reply", &self.reply)
            .field("requests", &self.work.rows.len())
            .field("cancels", &self.work.cancels)
            .field("deleted", &self.work.delete)
            .field("invalid", &self.work.invalid)
            .finish()
    }
}

fn target(row: &NewRow) -> EntityId {
    match &row.target {
        Some((_, id)) => id.clone(),
        None => panic!("a message or an ask has a target"),
    }
}

fn ask_body(row: &NewRow) -> AskBody<'_> {
    serde_json::from_str(&row.body).unwrap_or_else(|e| panic!("an ask's body does not decode: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> T {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{what} does not decode: {e}: {json}"))
}
