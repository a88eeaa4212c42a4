//! Timers' and effects' ids, and the [`Effect`] trait: work a step starts outside its handler,
//! with its [`Retry`] policy, what an attempt is handed ([`EffectCtx`]) and how it fails.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
/// [`Effect::run`] (in its [`EffectCtx`]). It is the same each time the effect runs (after a
/// crash, say), and unique across all entities: its text, such as `queue/alice/e12582912`,
/// makes a good idempotency key for an external API. Keep it in the state to
/// [`cancel_effect`](crate::Ctx::cancel_effect) the effect later.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EffectId {
    #[serde(rename = "entity")]
    key: EntityKey,
    #[serde(rename = "number")]
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
/// the restart. Effects run **at least once**: pass [`EffectCtx::id`]'s text to an external
/// API as its idempotency key to make the whole exactly-once.
///
/// [`run`](Effect::run) does one attempt. An attempt fails if it returns `Err`, panics, or
/// outlives its [`Retry::timeout`]; it is then retried after a backoff, as
/// [`retry`](Effect::retry) says, until an attempt succeeds or none is left (or the error is
/// [`EffectError::permanent`]); then [`failed`](Effect::failed) makes the entity's message
/// for the failure. Either way the entity gets exactly one message per effect. A step can
/// stop an effect with [`Ctx::cancel_effect`](crate::Ctx::cancel_effect). What an effect needs
/// (an HTTP client, a pool, a configuration) it gets from [`EffectCtx::resource`], given to
/// the builder with [`Builder::resource`](crate::Builder::resource). Register each effect
/// type with [`Builder::register_effect`](crate::Builder::register_effect).
///
/// ```
/// use std::time::Duration;
/// use perennial_core::{Ctx, Effect, EffectCtx, EffectError, EffectFailure, Process, Retry};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default)]
/// struct Job {
///     status: String,
/// }
///
/// #[derive(Serialize, Deserialize)]
/// enum JobMsg {
///     Start,
///     Finished(String),
///     Failed(String),
/// }
///
/// /// Where reports go; given to the builder with `.resource(Endpoint(...))`.
/// struct Endpoint(String);
///
/// /// Sends a report, then tells the job.
/// #[derive(Serialize, Deserialize)]
/// struct Report {
///     ms: u64,
/// }
///
/// impl Effect for Report {
///     type Kind = Job;
///     const NAME: &'static str = "report";
///
///     fn retry() -> Retry {
///         Retry::DEFAULT.attempts(3).timeout(Duration::from_secs(5))
///     }
///
///     async fn run(self, cx: EffectCtx) -> Result<JobMsg, EffectError> {
///         let endpoint = cx.resource::<Endpoint>()?;
///         tokio::time::sleep(Duration::from_millis(self.ms)).await;
///         // A real one sends with `cx.id()` as the idempotency key.
///         Ok(JobMsg::Finished(format!("sent to {} as {}", endpoint.0, cx.id())))
///     }
///
///     fn failed(self, failure: EffectFailure) -> JobMsg {
///         JobMsg::Failed(failure.error)
///     }
/// }
///
/// impl Process for Job {
///     const KIND: &'static str = "job";
///     type Msg = JobMsg;
///     type Reply = String;
///     type Error = std::convert::Infallible;
///
///     fn handle(&mut self, msg: JobMsg, ctx: &mut Ctx<'_, Self>) -> Result<String, Self::Error> {
///         match msg {
///             JobMsg::Start => {
///                 ctx.effect(Report { ms: 10 });
///                 self.status = "sending".into();
///             }
///             JobMsg::Finished(how) => self.status = how,
///             JobMsg::Failed(why) => self.status = format!("failed: {why}"),
///         }
///         Ok(self.status.clone())
///     }
/// }
/// ```
pub trait Effect: Serialize + DeserializeOwned + Send + 'static {
    /// The kind whose entities start this effect and receive its result.
    type Kind: Process;

    /// The effect's name within its kind: it is stored with each pending effect, so it must
    /// not change while effects of this type may be pending.
    const NAME: &'static str;

    /// How failed attempts are retried. Default: [`Retry::DEFAULT`].
    fn retry() -> Retry {
        Retry::DEFAULT
    }

    /// Does the work, once, and returns the message to hand to the entity that started it.
    /// An `Err` is a failed attempt; so are a panic and an attempt past its timeout.
    fn run(
        self,
        cx: EffectCtx,
    ) -> impl Future<Output = Result<<Self::Kind as Process>::Msg, EffectError>> + Send;

    /// The message to hand to the entity when the effect failed for good: every attempt
    /// failed, or one failed with a [`permanent`](EffectError::permanent) error.
    fn failed(self, failure: EffectFailure) -> <Self::Kind as Process>::Msg;
}

/// How an effect's failed attempts are retried: how many attempts in all, the backoff between
/// them (doubling from `backoff` up to `max_backoff`, each wait between half and all of it,
/// so that effects that failed together do not retry together), and how long one attempt may
/// run.
///
/// Attempts are counted by the node running the effect: after a restart, an interrupted
/// effect starts again from its first attempt.
///
/// ```
/// use std::time::Duration;
/// use perennial_core::Retry;
///
/// let patient = Retry::DEFAULT
///     .attempts(20)
///     .backoff(Duration::from_millis(200), Duration::from_secs(60))
///     .timeout(Duration::from_secs(10));
/// assert_eq!(patient.attempts, 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retry {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// The wait before the second attempt.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// How long one attempt may run before it counts as failed (and is stopped).
    pub timeout: Duration,
}

impl Retry {
    /// 10 attempts, waits doubling from 100 ms up to 30 s, 60 s per attempt.
    pub const DEFAULT: Retry = Retry {
        attempts: 10,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(30),
        timeout: Duration::from_secs(60),
    };

    /// With `attempts` attempts in all (0 is taken as 1).
    pub const fn attempts(self, attempts: u32) -> Self {
        Self {
            attempts: if attempts == 0 { 1 } else { attempts },
            ..self
        }
    }

    /// With waits doubling from `first` up to `max`.
    pub const fn backoff(self, first: Duration, max: Duration) -> Self {
        Self {
            backoff: first,
            max_backoff: max,
            ..self
        }
    }

    /// With at most `timeout` per attempt.
    pub const fn timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The wait after failed attempt `attempt` (1 for the first) of effect `id`: the doubled
    /// backoff, scaled by a factor in [0.5, 1) drawn from the effect's id and the attempt (the
    /// same on every run, so that a simulation replays it).
    pub(crate) fn wait_after(&self, attempt: u32, id: &EffectId) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let full = doubled.min(self.max_backoff);
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(id.to_string().as_bytes());
        bytes.extend_from_slice(&attempt.to_le_bytes());
        let draw = xxhash_rust::xxh3::xxh3_64(&bytes);
        #[allow(clippy::cast_precision_loss)]
        let fraction = 0.5 + (draw >> 11) as f64 / (1u64 << 54) as f64;
        full.mul_f64(fraction)
    }
}

impl Default for Retry {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What an effect's attempt is handed: the effect's id, which attempt this is, and the
/// resources given to the builder.
#[derive(Clone)]
pub struct EffectCtx {
    id: EffectId,
    attempt: u32,
    resources: Arc<Resources>,
}

impl EffectCtx {
    pub(crate) fn new(id: EffectId, attempt: u32, resources: Arc<Resources>) -> Self {
        Self {
            id,
            attempt,
            resources,
        }
    }

    /// The effect's id: the same on every attempt and after a restart, unique across all
    /// entities. Its text makes a good idempotency key for an external API.
    pub fn id(&self) -> &EffectId {
        &self.id
    }

    /// Which attempt this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The time now, as the runtime reads it: the operating system's clock on a node, the
    /// test's clock on a `testing::TestRuntime` (feature `testing`).
    pub fn now(&self) -> std::time::SystemTime {
        crate::clock::time_of(crate::clock::now_us())
    }

    /// The resource of type `T` given to the builder with
    /// [`Builder::resource`](crate::Builder::resource); an error (a permanent one: retrying
    /// cannot help) if none was.
    pub fn resource<T: Send + Sync + 'static>(&self) -> Result<&T, EffectError> {
        self.resources.get::<T>().ok_or_else(|| {
            EffectError::permanent(format!(
                "no resource of type {} was given to the runtime; add .resource(…) to its builder",
                std::any::type_name::<T>()
            ))
        })
    }
}

impl fmt::Debug for EffectCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EffectCtx")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The resources given to a builder, by type.
#[derive(Default)]
pub(crate) struct Resources(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl Resources {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Why an attempt of an effect failed. Any error converts into one with `?` (and is retried);
/// [`permanent`](EffectError::permanent) ones end the effect at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectError {
    message: String,
    permanent: bool,
}

impl EffectError {
    /// A failed attempt, retried if attempts are left.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot help (a request the other side refuses, say): the
    /// effect fails at once, and its entity gets [`Effect::failed`]'s message.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }

    /// Whether it ends the effect at once.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Display for EffectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for EffectError {
    fn from(e: E) -> Self {
        Self::new(e.to_string())
    }
}

/// How an effect failed for good, handed to [`Effect::failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EffectFailure {
    /// Attempts made (on this node, since its start).
    pub attempts: u32,
    /// The last attempt's error, as text.
    pub error: String,
}

/// An effect whose last attempt failed, waiting for its next one (see [`Admin::retrying`](crate::Admin::retrying)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retrying {
    /// Attempts that failed so far (on this node, since it started the effect).
    pub failed_attempts: u32,
    /// The last one's error.
    pub last_error: String,
}

/// A boxed future, as effects run type-erased.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One attempt of an effect, running: the entity's message as JSON, or why it failed.
pub(crate) type Attempt = BoxFuture<Result<String, EffectError>>;

/// A registered effect type, type-erased: its attempts, its failure message and its policy.
#[derive(Clone, Copy)]
pub(crate) struct EffectVtable {
    /// One attempt: decodes the stored input and returns the work, whose output is the
    /// message for the entity as JSON. `Err` if the input does not decode.
    pub(crate) run: fn(&str, EffectCtx) -> Result<Attempt, String>,
    /// The entity's message for a failure, as JSON.
    pub(crate) failed: fn(&str, EffectFailure) -> Result<String, String>,
    pub(crate) retry: fn() -> Retry,
}

impl EffectVtable {
    /// The vtable of effect type `E`.
    pub(crate) fn of<E: Effect>() -> Self {
        Self {
            run: run::<E>,
            failed: failed::<E>,
            retry: E::retry,
        }
    }
}

fn decode<E: Effect>(input: &str) -> Result<E, String> {
    serde_json::from_str(input)
        .map_err(|e| format!("the input of effect {:?} no longer decodes: {e}", E::NAME))
}

fn encode<T: Serialize>(msg: &T) -> Result<String, String> {
    serde_json::to_string(msg).map_err(|e| format!("the effect's message cannot be encoded: {e}"))
}

fn run<E: Effect>(input: &str, cx: EffectCtx) -> Result<Attempt, String> {
    let effect = decode::<E>(input)?;
    Ok(Box::pin(async move {
        let msg = effect.run(cx).await?;
        encode(&msg).map_err(EffectError::permanent)
    }))
}

fn failed<E: Effect>(input: &str, failure: EffectFailure) -> Result<String, String> {
    encode(&decode::<E>(input)?.failed(failure))
}

/// A stored effect's body: `{"effect": name, "input": …}`.
#[derive(Deserialize)]
pub(crate) struct EffectBody<'a> {
    #[serde(borrow)]
    pub(crate) effect: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) input: &'a serde_json::value::RawValue,
}
