//! The demo kinds that `perennial serve` hosts, and that the benchmark drives.
//!
//! # Layout
//! - [`counter`]: kind `counter`, an `i64` that messages add to.
//! - [`table`]: kind `table`, a no-limit Texas hold'em table as a persistent process.
//! - [`poker`]: the pure hold'em engine behind `table` (cards, hand ranking, betting, pots),
//!   with no knowledge of the runtime.

pub mod counter;
pub mod poker;
pub mod table;

pub use counter::Counter;
pub use table::PokerTable;
