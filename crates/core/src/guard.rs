//! The panic guard: user code (handlers, hooks, encoders, migrations) runs inside [`guard`],
//! so a panic becomes an error value the runtime can roll back from, never an unwinding task.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs user code, turning a panic into its message.
pub(crate) fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_message)
}

/// A panic's message, from its payload.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
