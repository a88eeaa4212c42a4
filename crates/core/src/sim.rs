//! Hooks for a deterministic simulation of the runtime, such as `perennial-sim` runs (with
//! turmoil): once `install`ed on a thread, runtimes started there take wall time and
//! random seeds from the simulator instead of the operating system, and run their committer
//! as a task instead of a thread of its own, so that a run is the same every time its seed
//! is. Monotonic time always comes from tokio's clock, which a simulator pauses and advances.
//!
//! The hooks are per thread: a simulator runs all its hosts on the thread that calls
//! `install`, and tests may run several simulations at once on other threads. A thread
//! without them costs one thread-local read per step; a build without the `sim` feature
//! (every real node) has no hooks at all.

#[cfg(feature = "testing")]
pub(crate) use hooks::install_clock;
#[cfg(feature = "sim")]
pub(crate) use hooks::{active, seed, since_epoch};
#[cfg(feature = "sim")]
pub use hooks::{install, uninstall};

/// Without the `sim` feature: no hooks, nothing to look up.
#[cfg(not(feature = "sim"))]
mod none {
    use std::time::Duration;

    pub(crate) fn active() -> bool {
        false
    }

    pub(crate) fn since_epoch() -> Option<Duration> {
        None
    }

    pub(crate) fn seed() -> Option<[u8; 32]> {
        None
    }
}
#[cfg(not(feature = "sim"))]
pub(crate) use none::{active, seed, since_epoch};

#[cfg(feature = "sim")]
mod hooks {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};

    thread_local! {
        static CLOCK: RefCell<Option<Rc<dyn Fn() -> Duration>>> = const { RefCell::new(None) };
        static RANDOM: RefCell<Option<ChaCha8Rng>> = const { RefCell::new(None) };
    }

    /// From now on, on this thread, wall time is `clock()` (the duration since the Unix epoch)
    /// and the random seeds handed to steps are drawn from a generator seeded with `seed`.
    pub fn install(clock: fn() -> Duration, seed: u64) {
        install_clock(Rc::new(clock), seed);
    }

    /// [`install`] with a clock that may hold state (the test kit's).
    pub(crate) fn install_clock(clock: Rc<dyn Fn() -> Duration>, seed: u64) {
        CLOCK.with(|c| *c.borrow_mut() = Some(clock));
        RANDOM.with(|r| *r.borrow_mut() = Some(ChaCha8Rng::seed_from_u64(seed)));
    }

    /// Removes the hooks of this thread: time and randomness are real again.
    pub fn uninstall() {
        CLOCK.with(|c| *c.borrow_mut() = None);
        RANDOM.with(|r| *r.borrow_mut() = None);
    }

    /// Whether a simulation is installed on this thread.
    pub(crate) fn active() -> bool {
        CLOCK.with(|c| c.borrow().is_some())
    }

    /// The simulated wall time, if a simulation is installed on this thread.
    pub(crate) fn since_epoch() -> Option<Duration> {
        let clock = CLOCK.with(|c| c.borrow().clone())?;
        Some(clock())
    }

    /// A seed from the simulation's generator, if one is installed on this thread.
    pub(crate) fn seed() -> Option<[u8; 32]> {
        RANDOM.with(|r| {
            r.borrow_mut().as_mut().map(|rng| {
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                seed
            })
        })
    }
}
