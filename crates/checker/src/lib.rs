//! Perennial's history checker: what clients asked of probe entities and what they got,
//! held to the contract (nothing acknowledged lost, nothing applied twice, one timeline per
//! entity, real-time order, idempotent replies, timers and messages exactly once).
//!
//! The histories are about `probe` entities (`perennial_demo::probe`): append-only lists of
//! tokens whose every reply is the whole list, so checking is linear (Elle's list-append).
//! - [`Recorder`] ([`history`]): records invocations and completions from many clients, as
//!   JSONL with Jepsen's field names.
//! - [`check`]: reads a history and each probe's final list and returns a [`Report`]: a count
//!   per rule and the first counter-example of each.
//!
//! ```
//! use std::collections::BTreeMap;
//! use perennial_checker::{Invocation, Op, Recorder, Type, check};
//!
//! let history = Recorder::new();
//! let call = history.invoke(Invocation {
//!     process: 1,
//!     f: Op::Append,
//!     entity: "p1".into(),
//!     token: Some("t1".into()),
//!     to: None,
//!     ms: None,
//!     key: Some("t1".into()),
//! });
//! history.complete(call, Type::Ok, Some(vec!["t1".into()]));
//! let finals = BTreeMap::from([("p1".to_owned(), vec!["t1".to_owned()])]);
//! assert!(check(&history.events(), &finals).is_valid());
//! // Had the probe lost t1, the checker would say so.
//! let lost = BTreeMap::from([("p1".to_owned(), vec![])]);
//! assert_eq!(check(&history.events(), &lost).lost, 1);
//! ```

mod check;
pub mod history;

pub use check::{Report, check};
pub use history::{Event, Invocation, Op, Recorder, Type, from_jsonl, to_jsonl};
