//! [`Caller`]: who sent the message a step handles, as the code in front of the runtime
//! authenticated them.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Who sent a call, as authenticated by whoever let the call in: the HTTP gateway (the
/// subject of a verified caller token), or your own code through
/// [`EntityRef::as_caller`](crate::EntityRef::as_caller). A handler reads it with
/// [`Ctx::caller`](crate::Ctx::caller).
///
/// The runtime trusts it as given: it does not authenticate anyone itself. Messages that do
/// not come from a call (timers, messages and asks from other entities, effects' results,
/// retried dead letters) have no caller.
///
/// ```
/// use perennial_core::Caller;
///
/// let alice = Caller::new("alice");
/// assert_eq!(alice.subject(), "alice");
/// assert_eq!(alice.to_string(), "alice");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Caller(Arc<str>);

impl Caller {
    /// A caller known by `subject` (a user id, a service's name: whatever your
    /// authentication names them by).
    pub fn new(subject: impl AsRef<str>) -> Self {
        Self(Arc::from(subject.as_ref()))
    }

    /// The name the caller was authenticated as.
    pub fn subject(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Caller").field(&&*self.0).finish()
    }
}
