//! The test kit (feature `testing`), in two parts.
//!
//! **Unit tests of a kind's handler without a runtime**: [`Handler`] runs
//! `handle` on a state you hold, in a step context with a time and a random seed you choose,
//! and gives back the reply and what the step asked for ([`Step`]): the timers it scheduled
//! and cancelled, the messages it told, the asks it made (and the message an answer would
//! become), the effects it started, whether it deleted its entity.
//!
//! Nothing is stored and nothing runs: a timer does not fire, a message is not delivered, an
//! effect does not start. Feed the messages they would bring to `handle` yourself, or test
//! the whole flow on a [`TestRuntime`].
//!
//! **Whole flows on a runtime whose clock the test moves**: [`TestRuntime`] is a runtime on
//! a memory store where time stands still until [`advance`](TestRuntime::advance) moves it,
//! firing in order what falls due (durable timers, idle timeouts, effects' retries and
//! timeouts, asks' deadlines), and where [`restart`](TestRuntime::restart) drops everything
//! in memory as a kill -9 would and activates from storage again.
//!
//! ```
//! use std::time::Duration;
//!
//! use perennial_core::testing::Handler;
//! use perennial_core::{Ctx, Process, TimerId};
//! use serde::{Deserialize, Serialize};
//!
//! /// A cart that empties itself an hour after its last change.
//! #[derive(Default, Serialize, Deserialize)]
//! struct Cart {
//!     items: Vec<String>,
//!     expiry: Option<TimerId>,
//! }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum CartMsg {
//!     Add(String),
//!     Expire,
//! }
//!
//! impl Process for Cart {
//!     const KIND: &'static str = "cart";
//!     type Msg = CartMsg;
//!     type Reply = usize;
//!     type Error = std::convert::Infallible;
//!
//!     fn handle(&mut self, msg: CartMsg, ctx: &mut Ctx<'_, Self>) -> Result<usize, Self::Error> {
//!         match msg {
//!             CartMsg::Add(item) => {
//!                 self.items.push(item);
//!                 if let Some(old) = self.expiry.take() {
//!                     ctx.cancel(old);
//!                 }
//!                 self.expiry = Some(ctx.schedule(Duration::from_secs(3600), CartMsg::Expire));
//!             }
//!             CartMsg::Expire => self.items.clear(),
//!         }
//!         Ok(self.items.len())
//!     }
//! }
//!
//! let mut cart = Cart::default();
//! let mut handler = Handler::<Cart>::new("c1");
//! let first = handler.handle(&mut cart, CartMsg::Add("tea".into()));
//! assert_eq!(first.reply.unwrap(), 1);
//! let timers = first.timers();
//! assert_eq!(timers.len(), 1);
//! assert_eq!(timers[0].at, handler.now() + Duration::from_secs(3600));
//! assert_eq!(timers[0].msg, CartMsg::Expire);
//!
//! // Ten minutes later another item moves the expiry: the first timer is cancelled.
//! handler.advance(Duration::from_secs(600));
//! let second = handler.handle(&mut cart, CartMsg::Add("jam".into()));
//! assert!(second.cancels_timer(timers[0].id));
//! // The timer's message, handled as the runtime would when it fires.
//! assert_eq!(handler.handle(&mut cart, CartMsg::Expire).reply.unwrap(), 0);
//! ```

mod handler;
mod runtime;

pub use handler::{Handler, START, Step, Timer};
pub use runtime::TestRuntime;
