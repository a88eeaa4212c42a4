//! [`Ctx`]: what a handler may ask of the world (its id, the time, randomness), and [`Rng`].

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use perennial_storage::PendingClass;
use perennial_types::EntityId;

use crate::Process;
use crate::clock::{now_us, time_of};
use crate::process::ask::{AskBody, AskId, Asked, path_of};
use crate::process::caller::Caller;
use crate::process::effect::{Effect, EffectId, TimerId};
use crate::process::rng::Rng;

/// The context of one step: the entity's id, the time the step started, randomness and ids.
///
/// Handlers take time, randomness and ids from here and nowhere else, so that a step depends
/// only on the state, the message and what the context handed it. For `Journal` kinds the
/// runtime records what it handed (the time and the random seed) with the message, and hands
/// the same again when it replays the step.
pub struct Ctx<'a, K: Process> {
    id: &'a EntityId,
    caller: Option<&'a Caller>,
    now: SystemTime,
    rng: Option<Rng>,
    seed: Seed,
    /// The number this step gets if it is kept: it names the timers and effects it creates.
    step: u64,
    work: Work,
    _kind: PhantomData<fn() -> K>,
}

/// What a step asked for beyond its state change: timers, messages, effects, cancellations.
/// It is kept (in the step's own commit) only if the step is.
#[derive(Debug, Default)]
pub(crate) struct Work {
    pub(crate) rows: Vec<NewRow>,
    /// Numbers of the entity's own timers to cancel.
    pub(crate) cancels: Vec<u64>,
    /// Why the step cannot be kept (an invalid request); it then fails like a panic.
    pub(crate) invalid: Option<String>,
    /// Whether the step deletes its entity ([`Ctx::delete`]).
    pub(crate) delete: bool,
}

impl Work {
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.cancels.is_empty() && self.invalid.is_none() && !self.delete
    }
}

/// A timer, message or effect created by a step, before it has an owner.
#[derive(Debug)]
pub(crate) struct NewRow {
    pub(crate) seq: u64,
    pub(crate) due_ms: i64,
    pub(crate) class: PendingClass,
    /// The target (for messages): its kind and id. `None`: the entity itself.
    pub(crate) target: Option<(&'static str, EntityId)>,
    /// Effects: the effect's name, checked against the registered effects at commit.
    pub(crate) effect: Option<&'static str>,
    pub(crate) body: String,
}

/// How many timers, messages and effects one step may create (they are numbered within it).
const ROWS_PER_STEP: u64 = 1 << 20;

/// The step that created the pending row numbered `seq`.
pub(crate) fn step_of_row(seq: u64) -> u64 {
    seq / ROWS_PER_STEP
}

/// The lowest number a row created by a step after `step` can have.
pub(crate) fn first_row_after(step: u64) -> u64 {
    step.saturating_add(1).saturating_mul(ROWS_PER_STEP)
}

/// Where a step's random seed comes from.
#[derive(Debug, Clone, Copy)]
enum Seed {
    /// A live step: drawn from the OS when first asked for, then kept to be recorded.
    Live(Option<[u8; 32]>),
    /// A replayed step: the recorded seed, if the live step drew one. `strayed` is set if the
    /// replayed step asks for randomness the live one never asked for.
    Replay {
        recorded: Option<[u8; 32]>,
        strayed: bool,
    },
}

impl<'a, K: Process> Ctx<'a, K> {
    /// The context of a live step that starts now.
    pub(crate) fn new(id: &'a EntityId) -> Self {
        Self::at(id, now_us())
    }

    /// The context of a live step at `at_us` microseconds since the Unix epoch.
    pub(crate) fn at(id: &'a EntityId, at_us: i64) -> Self {
        Self {
            id,
            caller: None,
            now: time_of(at_us),
            rng: None,
            seed: Seed::Live(None),
            step: 0,
            work: Work::default(),
            _kind: PhantomData,
        }
    }

    /// The context of live step number `step`.
    pub(crate) fn step(id: &'a EntityId, at_us: i64, step: u64) -> Self {
        Self {
            step,
            ..Self::at(id, at_us)
        }
    }

    /// The context of live step `step` whose randomness, if it asks for any, comes from
    /// `seed` (a test's, see `testing`).
    #[cfg(feature = "testing")]
    pub(crate) fn seeded(id: &'a EntityId, at_us: i64, seed: [u8; 32], step: u64) -> Self {
        Self {
            seed: Seed::Live(Some(seed)),
            step,
            ..Self::at(id, at_us)
        }
    }

    /// The context of replayed step `step`: the time and seed the live step was handed.
    pub(crate) fn replay(id: &'a EntityId, at_us: i64, seed: Option<[u8; 32]>, step: u64) -> Self {
        Self {
            seed: Seed::Replay {
                recorded: seed,
                strayed: false,
            },
            step,
            ..Self::at(id, at_us)
        }
    }

    /// Makes this the context of a message sent by `caller` (in place: a context is large,
    /// and replay makes one per entry).
    pub(crate) fn set_caller(&mut self, caller: Option<&'a Caller>) {
        self.caller = caller;
    }

    /// What the step asked for beyond its state change.
    pub(crate) fn take_work(&mut self) -> Work {
        std::mem::take(&mut self.work)
    }

    /// The seed this live step drew, if it asked for randomness.
    pub(crate) fn drawn_seed(&self) -> Option<[u8; 32]> {
        match self.seed {
            Seed::Live(seed) => seed,
            Seed::Replay { recorded, .. } => recorded,
        }
    }

    /// Whether this replayed step asked for randomness that its live run never asked for.
    pub(crate) fn strayed(&self) -> bool {
        matches!(self.seed, Seed::Replay { strayed: true, .. })
    }

    /// The id of the entity handling the message.
    pub fn id(&self) -> &EntityId {
        self.id
    }

    /// The name of the entity's kind.
    pub fn kind(&self) -> &'static str {
        K::KIND
    }

    /// Who sent the message, if it came from an authenticated call: through the HTTP
    /// gateway with a verified caller token, or through
    /// [`EntityRef::as_caller`](crate::EntityRef::as_caller). `None` for anonymous calls and
    /// for every message that is not a call (timers, messages and asks from other entities,
    /// effects' results, retried dead letters), and in `init`.
    ///
    /// A `Journal` kind records the caller with the step, so a replayed step sees the same.
    /// A handler refuses a caller with a rejection whose
    /// [`refusal`](crate::Rejection::refusal) says why (HTTP `401` or `403`); see
    /// [`Caller`] for an example.
    pub fn caller(&self) -> Option<&Caller> {
        self.caller
    }

    /// The wall-clock time at which this step started, to the microsecond. It does not move
    /// during the step, and a replayed step gets the time of its live run.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// A random number generator for this step, seeded from the operating system's secure
    /// source the first time the step asks for it (a replayed step gets the recorded seed).
    pub fn rng(&mut self) -> &mut Rng {
        let seed = &mut self.seed;
        self.rng.get_or_insert_with(|| {
            let seed = match seed {
                Seed::Live(drawn) => *drawn.get_or_insert_with(os_seed),
                Seed::Replay { recorded, strayed } => recorded.unwrap_or_else(|| {
                    *strayed = true;
                    [0; 32]
                }),
            };
            Rng::from_seed(seed)
        })
    }

    /// A new random id (a version 4 UUID, as text), drawn from [`rng`](Self::rng) so that a
    /// replayed step generates the same one.
    ///
    /// ```
    /// # use perennial_core::Rng;
    /// // The format, shown with a bare generator:
    /// let id = Rng::from_seed([9; 32]).uuid();
    /// assert_eq!(id.len(), 36);
    /// assert_eq!(&id[14..15], "4");
    /// ```
    pub fn new_id(&mut self) -> String {
        self.rng().uuid()
    }

    /// Schedules `msg` to be handled by this entity after `delay`, and returns the timer's id
    /// (to [`cancel`](Self::cancel) it).
    ///
    /// The timer is durable: it is stored in the same commit as this step (and not at all if
    /// the step fails), it fires even if the entity was passivated or the node restarted in
    /// the meantime, and its message is applied exactly once. Ids are numbered by step, so a
    /// replayed step of a `Journal` kind gets the same ids again.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use perennial_core::{Ctx, Process, TimerId};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Turn {
    ///     timer: Option<TimerId>,
    ///     folded: bool,
    /// }
    ///
    /// #[derive(Serialize, Deserialize)]
    /// enum TurnMsg {
    ///     Start,
    ///     Act,
    ///     TimedOut,
    /// }
    ///
    /// impl Process for Turn {
    ///     const KIND: &'static str = "turn";
    ///     type Msg = TurnMsg;
    ///     type Reply = bool;
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn handle(&mut self, msg: TurnMsg, ctx: &mut Ctx<'_, Self>) -> Result<bool, Self::Error> {
    ///         match msg {
    ///             TurnMsg::Start => {
    ///                 self.timer = Some(ctx.schedule(Duration::from_secs(30), TurnMsg::TimedOut));
    ///             }
    ///             TurnMsg::Act => {
    ///                 if let Some(timer) = self.timer.take() {
    ///                     ctx.cancel(timer);
    ///                 }
    ///             }
    ///             TurnMsg::TimedOut => self.folded = true,
    ///         }
    ///         Ok(self.folded)
    ///     }
    /// }
    /// ```
    pub fn schedule(&mut self, delay: Duration, msg: K::Msg) -> TimerId {
        let at = self.now.checked_add(delay).unwrap_or(self.now);
        self.schedule_at(at, msg)
    }

    /// Schedules `msg` to be handled by this entity at `at` (at once, if `at` is past). See
    /// [`schedule`](Self::schedule).
    pub fn schedule_at(&mut self, at: SystemTime, msg: K::Msg) -> TimerId {
        let due_ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let body = self.encode(&msg, "a timer's message");
        TimerId(self.push(due_ms, PendingClass::Timer, None, None, body))
    }

    /// Cancels one of this entity's timers, in the same commit as this step. A timer that
    /// already fired, or an unknown id, is ignored.
    pub fn cancel(&mut self, timer: TimerId) {
        self.work.cancels.push(timer.0);
    }

    /// Cancels one of this entity's effects, in the same commit as this step: an attempt that
    /// is running is stopped (within 50 ms), none is started again, and its result or failure
    /// is never applied. An effect that finished already (its message applied, or on its way),
    /// or an id of another entity's effect, is ignored. Effects run at least once: an attempt
    /// may have done its work before it was stopped.
    pub fn cancel_effect(&mut self, effect: &EffectId) {
        if effect.entity().kind.as_ref() == K::KIND && effect.entity().id == *self.id {
            self.work.cancels.push(effect.number());
        }
    }

    /// Deletes this entity, in this step's commit: its state (for a `Journal` kind, its
    /// journal and snapshots) and what it addressed to itself (timers, effects not finished,
    /// messages to itself) are gone once the step is durable, and listings and queries no
    /// longer find it. The step's reply goes to its caller as usual; messages this step or
    /// earlier ones sent to other entities are still delivered, and replies kept for
    /// idempotency keys still answer retries. The next message starts the entity afresh,
    /// from [`Default`] and [`Process::init`](crate::Process::init).
    ///
    /// Whatever else the step changed in the state is discarded with it. A new life numbers
    /// its timers and effects after those of the life before while the entity stays in
    /// memory; after it left memory, an [`EffectId`] may be given again, so an effect that
    /// passes its id to an external API as an idempotency key should add something of its
    /// own (a job's id) if its entity may be deleted.
    ///
    /// ```
    /// use perennial_core::{Ctx, Process};
    /// use serde::{Deserialize, Serialize};
    ///
    /// /// A per-user queue that exists only while it has work.
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Queue {
    ///     jobs: Vec<String>,
    /// }
    ///
    /// #[derive(Serialize, Deserialize)]
    /// enum QueueMsg {
    ///     Push(String),
    ///     Done(String),
    /// }
    ///
    /// impl Process for Queue {
    ///     const KIND: &'static str = "queue";
    ///     type Msg = QueueMsg;
    ///     type Reply = usize;
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn handle(&mut self, msg: QueueMsg, ctx: &mut Ctx<'_, Self>) -> Result<usize, Self::Error> {
    ///         match msg {
    ///             QueueMsg::Push(job) => self.jobs.push(job),
    ///             QueueMsg::Done(job) => self.jobs.retain(|j| *j != job),
    ///         }
    ///         if self.jobs.is_empty() {
    ///             ctx.delete();
    ///         }
    ///         Ok(self.jobs.len())
    ///     }
    /// }
    /// ```
    pub fn delete(&mut self) {
        self.work.delete = true;
    }

    /// Sends `msg` to the entity `id` of kind `T`, exactly once: the message is stored in
    /// this step's commit (and not at all if the step fails), delivered after it, retried
    /// until the target has durably applied it, and applied once whatever crashes. Messages
    /// from one entity to another are applied in the order they were sent. The target's
    /// reply is not returned; it answers, if it wants to, by sending a message back.
    ///
    /// An invalid id or a kind not registered with the runtime fails the step, like a panic.
    pub fn tell<T: Process>(&mut self, id: impl AsRef<str>, msg: T::Msg) {
        let target = match EntityId::new(id.as_ref()) {
            Ok(target) => target,
            Err(e) => {
                self.invalid(format!("ctx.tell to {}: {e}", T::KIND));
                return;
            }
        };
        let body = self.encode(&msg, "a sent message");
        let due_ms = self.now_ms();
        self.push(
            due_ms,
            PendingClass::Message,
            Some((T::KIND, target)),
            None,
            body,
        );
    }

    /// Asks the entity `id` of kind `T` to handle `msg`, and gets the outcome back as a
    /// message of this entity's own, made by `answer` from an [`Asked`]: the target's reply,
    /// or why there is none (it refused the message, or can never apply it). Returns the
    /// ask's id, which the [`Asked`] carries.
    ///
    /// Like [`tell`](Self::tell), the ask is stored in this step's commit (and not at all if
    /// the step fails), and the target applies its message once, whatever crashes; the answer
    /// is then applied by this entity once, in a step of its own. The handler never waits:
    /// two entities that ask each other simply get each other's answers later, and an answer
    /// waits in storage while this entity is passivated. Asks that never get an answer (a
    /// target that is paused for good, say) are bounded with [`ask_within`](Self::ask_within).
    ///
    /// `answer` is called once, now, with a placeholder in place of the answer: it must put
    /// the [`Asked`] it is handed into the message as it is (a field or a variant's value;
    /// not flattened, not inspected), and the runtime puts the real answer there when it
    /// comes. A message that does not hold it, or an invalid id, or a kind not registered
    /// with the runtime, fails the step like a panic.
    ///
    /// ```
    /// use perennial_core::{AskError, Asked, Ctx, Process, Rejection};
    /// use serde::{Deserialize, Serialize};
    ///
    /// /// One product's stock.
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Stock {
    ///     left: u32,
    /// }
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("sold out")]
    /// struct SoldOut;
    ///
    /// impl Rejection for SoldOut {
    ///     fn code(&self) -> &str {
    ///         "sold_out"
    ///     }
    /// }
    ///
    /// impl Process for Stock {
    ///     const KIND: &'static str = "stock";
    ///     type Msg = u32;
    ///     type Reply = u32;
    ///     type Error = SoldOut;
    ///
    ///     fn handle(&mut self, take: u32, _ctx: &mut Ctx<'_, Self>) -> Result<u32, SoldOut> {
    ///         self.left = self.left.checked_sub(take).ok_or(SoldOut)?;
    ///         Ok(self.left)
    ///     }
    /// }
    ///
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Order {
    ///     status: String,
    /// }
    ///
    /// #[derive(Serialize, Deserialize)]
    /// enum OrderMsg {
    ///     Place { sku: String },
    ///     Reserved { sku: String, answer: Asked<Stock> },
    /// }
    ///
    /// impl Process for Order {
    ///     const KIND: &'static str = "order";
    ///     type Msg = OrderMsg;
    ///     type Reply = String;
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn handle(&mut self, msg: OrderMsg, ctx: &mut Ctx<'_, Self>) -> Result<String, Self::Error> {
    ///         match msg {
    ///             OrderMsg::Place { sku } => {
    ///                 // The handler does not wait: the answer comes as `Reserved`.
    ///                 ctx.ask::<Stock>(sku.clone(), 1, |answer| OrderMsg::Reserved { sku, answer });
    ///                 self.status = "reserving".into();
    ///             }
    ///             OrderMsg::Reserved { sku, answer } => {
    ///                 self.status = match answer.result {
    ///                     Ok(left) => format!("{sku} reserved, {left} left"),
    ///                     Err(AskError::Refused { code, .. }) => format!("{sku}: {code}"),
    ///                     Err(e) => format!("{sku}: {e}"),
    ///                 };
    ///             }
    ///         }
    ///         Ok(self.status.clone())
    ///     }
    /// }
    /// ```
    pub fn ask<T: Process>(
        &mut self,
        id: impl AsRef<str>,
        msg: T::Msg,
        answer: impl FnOnce(Asked<T>) -> K::Msg,
    ) -> AskId {
        self.ask_row::<T>(id.as_ref(), msg, None, answer)
    }

    /// [`ask`](Self::ask)s with a deadline: if no answer came `within` that time, the
    /// answer is [`AskError::TimedOut`](crate::AskError::TimedOut) and a reply that comes
    /// later is dropped. The deadline is stored with the ask, so it holds across restarts;
    /// whichever of the answer and the deadline comes first is applied, once.
    pub fn ask_within<T: Process>(
        &mut self,
        id: impl AsRef<str>,
        msg: T::Msg,
        within: Duration,
        answer: impl FnOnce(Asked<T>) -> K::Msg,
    ) -> AskId {
        let at = self.now.checked_add(within).unwrap_or(self.now);
        let deadline_ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.ask_row::<T>(id.as_ref(), msg, Some(deadline_ms), answer)
    }

    fn ask_row<T: Process>(
        &mut self,
        id: &str,
        msg: T::Msg,
        deadline_ms: Option<i64>,
        answer: impl FnOnce(Asked<T>) -> K::Msg,
    ) -> AskId {
        let ask = AskId(self.next_row());
        let target = match EntityId::new(id) {
            Ok(target) => target,
            Err(e) => {
                self.invalid(format!("ctx.ask to {}: {e}", T::KIND));
                return ask;
            }
        };
        let placeholder = Asked::<T>::placeholder(ask);
        let marker = serde_json::to_value(&placeholder);
        let template = serde_json::to_value(answer(placeholder));
        let body = match (marker, template) {
            (Ok(marker), Ok(template)) => match path_of(&template, &marker) {
                Some(at) => serde_json::value::to_raw_value(&msg).map(|msg| {
                    serde_json::to_string(&AskBody {
                        msg: &msg,
                        answer: template,
                        at,
                        deadline_ms,
                    })
                }),
                None => {
                    self.invalid(format!(
                        "ctx.ask to {}: the message made from the answer must hold the \
                         `Asked` value it was handed, once, as it is (not flattened)",
                        T::KIND
                    ));
                    return ask;
                }
            },
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let body = match body.and_then(|body| body) {
            Ok(body) => body,
            Err(e) => {
                self.invalid(format!("an ask cannot be encoded as JSON: {e}"));
                return ask;
            }
        };
        let due_ms = self.now_ms();
        let seq = self.push(
            due_ms,
            PendingClass::Ask,
            Some((T::KIND, target)),
            None,
            body,
        );
        debug_assert_eq!(seq, ask.0);
        ask
    }

    /// Starts `effect` once this step is durable: slow or external work (an HTTP call, a
    /// sleep) that runs outside the handler, whose result comes back to this entity as a
    /// message. Returns the effect's id, which stays the same if the effect runs again.
    ///
    /// Effects run **at least once**: the effect is stored with this step, and one that a
    /// crash interrupted is started again after the restart. Pass
    /// [`EffectId`]'s text to an external API as its idempotency key to make the whole
    /// exactly-once. A failed attempt is retried as [`Effect::retry`] says; when none is
    /// left, [`Effect::failed`]'s message comes back instead of a result. Stop it with
    /// [`cancel_effect`](Self::cancel_effect). The effect's type must be registered with
    /// [`Builder::register_effect`](crate::Builder::register_effect).
    pub fn effect<E: Effect<Kind = K>>(&mut self, effect: E) -> EffectId {
        let input = self.encode(&effect, "an effect");
        let body = format!(
            "{{\"effect\":{},\"input\":{input}}}",
            serde_json::Value::from(E::NAME)
        );
        let due_ms = self.now_ms();
        let seq = self.push(due_ms, PendingClass::Effect, None, Some(E::NAME), body);
        EffectId::new(
            perennial_types::EntityKey::new(K::KIND, self.id.clone()),
            seq,
        )
    }

    fn now_ms(&self) -> i64 {
        self.now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn encode<T: serde::Serialize>(&mut self, value: &T, what: &str) -> String {
        serde_json::to_string(value).unwrap_or_else(|e| {
            self.invalid(format!("{what} cannot be encoded as JSON: {e}"));
            String::new()
        })
    }

    fn invalid(&mut self, detail: String) {
        self.work.invalid.get_or_insert(detail);
    }

    /// The number the next row of this step gets.
    fn next_row(&self) -> u64 {
        let n = self.work.rows.len() as u64;
        self.step.saturating_mul(ROWS_PER_STEP).saturating_add(n)
    }

    /// Adds a row, numbered after this step's earlier ones; returns its number.
    fn push(
        &mut self,
        due_ms: i64,
        class: PendingClass,
        target: Option<(&'static str, EntityId)>,
        effect: Option<&'static str>,
        body: String,
    ) -> u64 {
        let n = self.work.rows.len() as u64;
        if n >= ROWS_PER_STEP {
            self.invalid(format!(
                "one step may create at most {ROWS_PER_STEP} timers, messages and effects"
            ));
        }
        let seq = self.step.saturating_mul(ROWS_PER_STEP).saturating_add(n);
        self.work.rows.push(NewRow {
            seq,
            due_ms,
            class,
            target,
            effect,
            body,
        });
        seq
    }
}

/// 32 bytes from the operating system's secure random source.
fn os_seed() -> [u8; 32] {
    if let Some(seed) = crate::sim::seed() {
        return seed;
    }
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut seed) {
        // The OS source never fails on supported platforms; a weaker seed is still better
        // than refusing the step.
        tracing::warn!(error = %e, "the OS random source failed; seeding from the clock");
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
    }
    seed
}

impl<K: Process> fmt::Debug for Ctx<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("kind", &K::KIND)
            .field("id", self.id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_through_microseconds() {
        for us in [0, 1, 1_700_000_000_123_456, -5] {
            let t = time_of(us);
            let back = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_micros()).unwrap(),
                Err(e) => -i64::try_from(e.duration().as_micros()).unwrap(),
            };
            assert_eq!(back, us);
        }
    }
}
