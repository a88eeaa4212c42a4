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
/// An inbox that only its first caller may write to:
///
/// ```
/// use perennial_core::{Ctx, Process, Refusal, Rejection};
///
/// #[derive(Default)]
/// struct Inbox {
///     owner: Option<String>,
///     notes: Vec<String>,
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("only the inbox's owner may write to it")]
/// struct NotYours;
///
/// impl Rejection for NotYours {
///     fn code(&self) -> &str {
///         "not_yours"
///     }
///     fn refusal(&self) -> Refusal {
///         Refusal::Forbidden
///     }
/// }
///
/// impl Process for Inbox {
///     const KIND: &'static str = "inbox";
///     type Msg = String;
///     type Reply = usize;
///     type Error = NotYours;
///
///     fn handle(&mut self, note: String, ctx: &mut Ctx<'_, Self>) -> Result<usize, NotYours> {
///         let caller = ctx.caller().ok_or(NotYours)?.subject().to_owned();
///         if *self.owner.get_or_insert_with(|| caller.clone()) != caller {
///             return Err(NotYours);
///         }
///         self.notes.push(note);
///         Ok(self.notes.len())
///     }
/// }
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
