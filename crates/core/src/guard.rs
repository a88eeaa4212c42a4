//! The panic guard: user code (handlers, hooks, encoders, migrations) runs inside [`guard`],
//! so a panic becomes an error value the runtime can roll back from, never an unwinding task.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs user code, turning a panic into its message.
pub(crate) fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic without a message".to_owned()
        }
    })
}
