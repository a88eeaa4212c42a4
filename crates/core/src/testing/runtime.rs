//! [`TestRuntime`]: a runtime on a memory store whose clock moves only when the test moves it,
//! and which can be killed and started again on the same store.
//!
//! How: tokio's paused time drives everything the runtime waits for (idle deadlines, effects'
//! backoff and timeouts, the dispatcher's sleep until the next durable timer), and the
//! simulation's wall-time hook (`sim`) makes the wall clock follow tokio's, so durable timers,
//! steps' times and kept replies see the same time. Paused time moves on its own only when
//! every task waits; [`TestRuntime::advance`] sleeps, so the runtime goes from one due thing
//! to the next, in order, each at its own time.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use perennial_storage::MemoryStore;
use tokio::time::Instant;

use super::START;

/// Rounds of the scheduler without a poll of the runtime's tasks after which it has settled.
const QUIET_ROUNDS: u32 = 3;
/// Rounds after which a runtime that still has not settled is taken to never settle.
const MAX_ROUNDS: u64 = 10_000_000;
use crate::{Builder, Runtime, StartError};

/// A runtime for tests: on a memory store, with a clock that moves only when the test moves
/// it ([`advance`](Self::advance)), and a [`restart`](Self::restart) that drops everything
/// in memory as a kill -9 would.
///
/// It dereferences to its [`Runtime`], so `rt.get::<K>(id).call(msg)` works as on a node.
///
/// Its wall clock starts at 2026-01-01T00:00:00Z ([`START`]) and the steps' randomness
/// ([`Ctx::rng`](crate::Ctx::rng), [`Ctx::new_id`](crate::Ctx::new_id)) comes from a generator
/// seeded with 0 (or the seed given to [`start_with_seed`](Self::start_with_seed)), so a test
/// runs the same every time. Test runtimes alive at once on one thread share one clock and
/// one generator, the first one's; a test runtime stays on the thread it started on (it is
/// not `Send`).
///
/// It needs a current-thread tokio runtime, the kind `#[tokio::test]` makes by default, and
/// pauses its time (tokio's `test-util`, which this feature turns on). While it lives,
/// `tokio::time::sleep` in the test moves the same clock: sleeping an hour is the same as
/// [`advance`](Self::advance)ing an hour. Effects' work should not wait on the world
/// outside (a socket, a real database): paused time jumps ahead whenever every task waits, so
/// a per-attempt timeout would expire at once. Give them a fake through
/// [`Builder::resource`] instead.
///
/// ```
/// use std::time::Duration;
///
/// use perennial_core::testing::TestRuntime;
/// use perennial_core::{Ctx, Process, TimerId};
/// use serde::{Deserialize, Serialize};
///
/// /// A cart that empties itself an hour after its last change.
/// #[derive(Default, Serialize, Deserialize)]
/// struct Cart {
///     items: Vec<String>,
///     expiry: Option<TimerId>,
/// }
///
/// #[derive(Serialize, Deserialize)]
/// enum CartMsg {
///     Add(String),
///     Count,
///     Expire,
/// }
///
/// impl Process for Cart {
///     const KIND: &'static str = "cart";
///     type Msg = CartMsg;
///     type Reply = usize;
///     type Error = std::convert::Infallible;
///
///     fn handle(&mut self, msg: CartMsg, ctx: &mut Ctx<'_, Self>) -> Result<usize, Self::Error> {
///         match msg {
///             CartMsg::Add(item) => {
///                 self.items.push(item);
///                 if let Some(old) = self.expiry.take() {
///                     ctx.cancel(old);
///                 }
///                 self.expiry = Some(ctx.schedule(Duration::from_secs(3600), CartMsg::Expire));
///             }
///             CartMsg::Count => {}
///             CartMsg::Expire => self.items.clear(),
///         }
///         Ok(self.items.len())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // In a test: #[tokio::test] async fn expires() { … }
/// let mut rt = TestRuntime::start(|b| b.register_snapshot::<Cart>()).await?;
/// rt.get::<Cart>("alice").call(CartMsg::Add("tea".into())).await?;
///
/// rt.advance(Duration::from_secs(59 * 60)).await;
/// assert_eq!(rt.get::<Cart>("alice").call(CartMsg::Count).await?, 1);
///
/// // kill -9: the cart and its timer are stored, so both come back.
/// rt.restart().await?;
/// assert_eq!(rt.get::<Cart>("alice").call(CartMsg::Count).await?, 1);
///
/// rt.advance(Duration::from_secs(60)).await;
/// assert_eq!(rt.get::<Cart>("alice").call(CartMsg::Count).await?, 0);
/// # Ok(())
/// # }
/// ```
pub struct TestRuntime {
    runtime: Runtime,
    store: MemoryStore,
    kinds: Box<dyn Fn(Builder) -> Builder + Send + Sync>,
    clock: Arc<VirtualClock>,
    /// Not `Send`: its clock is installed on the thread it started on.
    _thread: PhantomData<Rc<()>>,
}

impl TestRuntime {
    /// Starts a runtime on a new memory store, built by `kinds` from a builder that has the
    /// store already: register the kinds, effects, resources and listeners there. `kinds` is
    /// called again by each [`restart`](Self::restart).
    ///
    /// # Panics
    /// Outside a current-thread tokio runtime (use `#[tokio::test]`, whose default flavour is
    /// that one).
    ///
    /// # Errors
    /// What [`Builder::start`] fails with: a wiring mistake, such as an effect of a kind that
    /// is not registered.
    pub async fn start(
        kinds: impl Fn(Builder) -> Builder + Send + Sync + 'static,
    ) -> Result<Self, StartError> {
        Self::start_with_seed(0, kinds).await
    }

    /// [`start`](Self::start), with the steps' randomness drawn from a generator seeded with
    /// `seed`.
    ///
    /// # Panics
    /// Outside a current-thread tokio runtime.
    ///
    /// # Errors
    /// What [`Builder::start`] fails with.
    pub async fn start_with_seed(
        seed: u64,
        kinds: impl Fn(Builder) -> Builder + Send + Sync + 'static,
    ) -> Result<Self, StartError> {
        let clock = VirtualClock::install(seed).await;
        let store = MemoryStore::new();
        let runtime = match build(&kinds, &store).start().await {
            Ok(runtime) => runtime,
            Err(error) => {
                VirtualClock::uninstall();
                return Err(error);
            }
        };
        Ok(Self {
            runtime,
            store,
            kinds: Box::new(kinds),
            clock,
            _thread: PhantomData,
        })
    }

    /// What the clock reads now: the time a step would see.
    pub fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.clock.since_epoch()
    }

    /// Moves the clock forward by `by` (to the millisecond: a part of one counts as a whole).
    /// What falls due on the way runs at its own time, in order: durable timers and asks'
    /// deadlines fire, idle entities are passivated, effects' attempts are retried or timed
    /// out. Returns once what that started is done (see [`settle`](Self::settle)).
    pub async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
        self.settle().await;
    }

    /// Waits, without moving the clock, until nothing runs: every step already started is
    /// committed and its reply sent, every message sent is handled, every effect whose work
    /// needs no more time has its result applied. What waits on the clock stays waiting.
    ///
    /// It watches the runtime's own tasks: a task an effect spawns itself is not waited for
    /// (await its work inside the effect instead).
    ///
    /// # Panics
    /// If the runtime never settles: its tasks keep running without the clock moving, as
    /// with an entity that sends itself messages forever.
    pub async fn settle(&self) {
        // Each yield lets every task that is ready run first. Once a few rounds in a row
        // polled none of the runtime's tasks, each of them waits: on the clock, which does
        // not move meanwhile, or on the world outside.
        let mut polls = crate::task::polls();
        let mut quiet = 0;
        let mut rounds = 0u64;
        while quiet < QUIET_ROUNDS {
            tokio::task::yield_now().await;
            let now = crate::task::polls();
            quiet = if now == polls { quiet + 1 } else { 0 };
            polls = now;
            rounds += 1;
            assert!(
                rounds < MAX_ROUNDS,
                "the test runtime never settled: after {MAX_ROUNDS} rounds its tasks still run \
                 without the clock moving (an entity that sends itself messages, or sets timers \
                 that are due at once, forever?)"
            );
        }
    }

    /// Stops the runtime as a kill -9 would and starts a new one on the same store, built
    /// again by the `kinds` given to [`start`](Self::start). Whatever was only in memory is
    /// gone: calls in flight fail, states not yet durable are lost, ephemeral entities start
    /// afresh; effects' work in progress is stopped at its next `.await`. What was
    /// acknowledged comes back from storage: states, pending timers and messages, and effects
    /// that had not finished, which run again with the same ids.
    ///
    /// Handles ([`EntityRef`](crate::EntityRef)s, clones of the runtime) taken before refer
    /// to the stopped runtime: take them again.
    ///
    /// # Errors
    /// What [`Builder::start`] fails with; the old runtime stays stopped.
    pub async fn restart(&mut self) -> Result<(), StartError> {
        self.runtime.kill();
        // Let the stopped runtime's tasks see it: its callers are answered with failures.
        self.settle().await;
        self.runtime = build(&self.kinds, &self.store).start().await?;
        Ok(())
    }

    /// The store, shared by every start: to look at what is stored.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The running runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

impl Deref for TestRuntime {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        &self.runtime
    }
}

impl std::fmt::Debug for TestRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRuntime")
            .field("now", &self.now())
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        VirtualClock::uninstall();
    }
}

/// The builder `kinds` makes, on `store`, looking an hour ahead for due rows: the clock may
/// jump days, and a node's ten seconds would make the dispatcher scan the store every five.
fn build(kinds: &dyn Fn(Builder) -> Builder, store: &MemoryStore) -> Builder {
    kinds(Runtime::builder())
        .store(store.clone())
        .lookahead(Duration::from_secs(3600))
}

/// Wall time that follows tokio's paused clock from [`START`].
struct VirtualClock {
    /// Tokio's time when the clock started.
    origin: Instant,
}

thread_local! {
    /// The clock of this thread's test runtimes, and how many of them live.
    static INSTALLED: RefCell<Option<(usize, Arc<VirtualClock>)>> = const { RefCell::new(None) };
    /// Whether the first of them is aligning tokio's clock (it awaits meanwhile).
    static ALIGNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl VirtualClock {
    /// Pauses tokio's time if it is not yet, and makes this thread's wall time follow it.
    /// Test runtimes on one thread share one clock.
    async fn install(seed: u64) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::current();
        assert!(
            matches!(
                runtime.runtime_flavor(),
                tokio::runtime::RuntimeFlavor::CurrentThread
            ),
            "a TestRuntime needs a current-thread tokio runtime: use #[tokio::test] (its \
             default flavour), not a multi-threaded one"
        );
        let shared = INSTALLED.with_borrow_mut(|installed| {
            installed.as_mut().map(|(count, clock)| {
                *count += 1;
                Arc::clone(clock)
            })
        });
        if let Some(clock) = shared {
            return clock;
        }
        assert!(
            !ALIGNING.replace(true),
            "two TestRuntimes are starting at once on this thread: start them one after the other"
        );
        if !time_is_paused() {
            tokio::time::pause();
        }
        align_to_tick().await;
        ALIGNING.set(false);
        let clock = Arc::new(Self {
            origin: Instant::now(),
        });
        let read = Arc::clone(&clock);
        crate::sim::install_clock(Rc::new(move || read.since_epoch()), seed);
        INSTALLED.set(Some((1, Arc::clone(&clock))));
        clock
    }

    /// One test runtime less; with the last one, the thread's time is real again.
    fn uninstall() {
        let last = INSTALLED.with_borrow_mut(|installed| match installed {
            Some((count, _)) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                *installed = None;
                true
            }
        });
        if last {
            crate::sim::uninstall();
        }
    }

    /// Wall time, as a duration since the Unix epoch.
    fn since_epoch(&self) -> Duration {
        START + (Instant::now() - self.origin)
    }
}

/// Moves tokio's paused clock to the start of one of its timer's millisecond ticks. Tokio
/// rounds a timer's deadline up to a whole tick and jumps by whole ticks, so from anywhere
/// inside a tick every timer would fire up to a millisecond late (and a step's time with it).
///
/// An idle runtime reaches `now + d` by jumping `ceil(phase + d)` ticks, where `phase` is how
/// far into its tick `now` is (in nanoseconds, below 1 ms): the smallest `d` that takes two
/// ticks is `1 ms + 1 ns - phase`, found by bisection in about twenty jumps of one or two
/// milliseconds, each leaving the phase as it was.
async fn align_to_tick() {
    const TICK: u64 = 1_000_000;
    async fn ticks_to_reach(nanos: u64) -> u128 {
        let before = Instant::now();
        tokio::time::sleep_until(before + Duration::from_nanos(nanos)).await;
        (Instant::now() - before).as_nanos() / u128::from(TICK)
    }
    // One tick reaches `low`, two reach `high`.
    let (mut low, mut high) = (1, TICK + 1);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if ticks_to_reach(middle).await >= 2 {
            high = middle;
        } else {
            low = middle;
        }
    }
    let phase = TICK + 1 - high;
    if phase > 0 {
        tokio::time::advance(Duration::from_nanos(TICK - phase)).await;
    }
}

/// Whether tokio's clock is paused: a paused clock does not move while the thread sleeps.
fn time_is_paused() -> bool {
    let before = Instant::now();
    std::thread::sleep(Duration::from_millis(1));
    Instant::now() == before
}
