//! The runtime's tasks are spawned here, so that the test kit (feature `testing`) can tell
//! when every one of them waits: it counts their polls on the thread that runs them, and a
//! `testing::TestRuntime` has settled once a round of the scheduler polled none. Without the
//! feature this is `tokio::spawn`, nothing more.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Spawns `future` on the current tokio runtime.
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_on(&Handle::current(), future)
}

/// Spawns `future` on `runtime`.
pub(crate) fn spawn_on<F>(runtime: &Handle, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(feature = "testing")]
    return runtime.spawn(counted::Counted(Box::pin(future)));
    #[cfg(not(feature = "testing"))]
    runtime.spawn(future)
}

#[cfg(feature = "testing")]
pub(crate) use counted::polls;

#[cfg(feature = "testing")]
mod counted {
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    thread_local! {
        static POLLS: Cell<u64> = const { Cell::new(0) };
    }

    /// How many times the runtime's tasks were polled on this thread.
    pub(crate) fn polls() -> u64 {
        POLLS.get()
    }

    /// A task that counts its polls.
    pub(super) struct Counted<F>(pub(super) Pin<Box<F>>);

    impl<F: Future> Future for Counted<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            POLLS.set(POLLS.get().wrapping_add(1));
            self.0.as_mut().poll(cx)
        }
    }
}
