//! Timers' and effects' ids, and the [`Effect`] trait: work a step starts outside its handler.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use perennial_types::EntityKey;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Process;

/// The id of a timer, returned by [`Ctx::schedule`](crate::Ctx::schedule); keep it in the
/// state to [`cancel`](crate::Ctx::cancel) the timer. Unique within its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimerId(pub(crate) u64);

impl fmt::Display for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timer-{}", self.0)
    }
}

/// The id of an effect, returned by [`Ctx::effect`](crate::Ctx::effect) and handed to
/// [`Effect::run`]. It is the same each time the effect runs (after a crash, say), and unique
/// across all entities: its text, such as `queue/alice/e12582912`, makes a good idempotency
/// key for an external API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EffectId {
    key: EntityKey,
    seq: u64,
}

impl EffectId {
    pub(crate) fn new(key: EntityKey, seq: u64) -> Self {
        Self { key, seq }
    }

    /// The entity that started the effect.
    pub fn entity(&self) -> &EntityKey {
        &self.key
    }

    /// The effect's number within its entity.
    pub fn number(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/e{}", self.key, self.seq)
    }
}

/// Slow or external work that a step starts with [`Ctx::effect`](crate::Ctx::effect): it runs
/// after the step is durable, outside the handler, and its result comes back to the entity
/// as a message.
///
/// An effect is a serializable value, not a closure, because it is stored with the step that
/// started it: if the node crashes while the effect runs, it is decoded and run again after
/// the restart (effects run at least once). Register each effect type with
/// [`Builder::register_effect`](crate::Builder::register_effect).
///
/// ```
/// use std::time::Duration;
/// use perennial_core::{Ctx, Effect, EffectId, Process};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default)]
/// struct Job {
///     done: bool,
/// }
///
/// #[derive(Serialize, Deserialize)]
/// enum JobMsg {
///     Start,
///     Finished,
/// }
///
/// /// Sleeps, then tells the job it is finished.
/// #[derive(Serialize, Deserialize)]
/// struct Sleep {
///     ms: u64,
/// }
///
/// impl Effect for Sleep {
///     type Kind = Job;
///     const NAME: &'static str = "sleep";
///
///     async fn run(self, _id: EffectId) -> JobMsg {
///         tokio::time::sleep(Duration::from_millis(self.ms)).await;
///         JobMsg::Finished
///     }
/// }
///
/// impl Process for Job {
///     const KIND: &'static str = "job";
///     type Msg = JobMsg;
///     type Reply = bool;
///     type Error = std::convert::Infallible;
///
///     fn handle(&mut self, msg: JobMsg, ctx: &mut Ctx<'_, Self>) -> Result<bool, Self::Error> {
///         match msg {
///             JobMsg::Start => {
///                 ctx.effect(Sleep { ms: 10 });
///             }
///             JobMsg::Finished => self.done = true,
///         }
///         Ok(self.done)
///     }
/// }
/// ```
pub trait Effect: Serialize + DeserializeOwned + Send + 'static {
    /// The kind whose entities start this effect and receive its result.
    type Kind: Process;

    /// The effect's name within its kind: it is stored with each pending effect, so it must
    /// not change while effects of this type may be pending.
    const NAME: &'static str;

    /// Does the work and returns the message to hand to the entity that started it.
    fn run(self, id: EffectId) -> impl Future<Output = <Self::Kind as Process>::Msg> + Send;
}

/// A boxed future, as effects run type-erased.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Runs a stored effect: decodes its input and returns the work, whose output is the message
/// for the entity, as JSON.
pub(crate) type EffectRunner =
    fn(&str, EffectId) -> Result<BoxFuture<Result<String, String>>, String>;

/// The [`EffectRunner`] of effect type `E`.
pub(crate) fn runner<E: Effect>(
    input: &str,
    id: EffectId,
) -> Result<BoxFuture<Result<String, String>>, String> {
    let effect: E = serde_json::from_str(input)
        .map_err(|e| format!("the input of effect {:?} no longer decodes: {e}", E::NAME))?;
    Ok(Box::pin(async move {
        let msg = effect.run(id).await;
        serde_json::to_string(&msg)
            .map_err(|e| format!("the effect's message cannot be encoded: {e}"))
    }))
}

/// A stored effect's body: `{"effect": name, "input": …}`.
#[derive(Deserialize)]
pub(crate) struct EffectBody<'a> {
    #[serde(borrow)]
    pub(crate) effect: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) input: &'a serde_json::value::RawValue,
}
