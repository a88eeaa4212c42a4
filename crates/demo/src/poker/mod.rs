//! A pure no-limit Texas hold'em engine: one [`Table`] whose whole state is plain serde data.
//!
//! The engine does no I/O, reads no clock and keeps no global state. Its only source of
//! randomness is the [`rand_core::Rng`] handed to [`Table::start_hand`], which is used solely
//! to shuffle the deck with our own Fisher–Yates shuffle (see [`shuffled_deck`]), so a recorded
//! seed always replays to the same cards.
//!
//! # Playing
//! ```
//! use perennial_demo::poker::{Action, Table};
//! use rand_chacha::ChaCha8Rng;
//! use rand_core::SeedableRng;
//!
//! let mut table = Table::with_blinds(5, 10);
//! table.join("alice", 1_000).unwrap();
//! table.join("bob", 1_000).unwrap();
//! table.start_hand(&mut ChaCha8Rng::seed_from_u64(1)).unwrap();
//! // Heads-up, the button posts the small blind and acts first before the flop.
//! let first = table.view().to_act.unwrap();
//! table.act(&first, Action::Raise(30)).unwrap(); // raise TO 30
//! let err = table.act(&first, Action::Call).unwrap_err();
//! assert_eq!(err.code(), "not_your_turn");
//! ```
//!
//! # Rules in brief
//! - Up to nine seats; blinds are posted left of the button, except heads-up where the
//!   button posts the small blind, acts first before the flop and last after it.
//! - [`Action::Raise`] names the total bet for the street ("raise to"). A raise must add at
//!   least the last full raise (the big blind if none), unless it is an all-in; an all-in for
//!   less does not reopen the betting for players who already acted.
//! - Main and side pots are built from each player's total contribution; ties split evenly
//!   and odd chips go one each to the winners closest to the left of the button.
//! - Every operation validates fully before changing anything: an error leaves the table as it was.
//!
//! # Layout
//! - `cards`: cards, their two-character notation and the deterministic shuffle.
//! - `hand`: ranking the best five-card hand out of seven.
//! - `pots`: main and side pots and splitting them.
//! - `table`: the [`Table`] and its betting rules.
//! - `view`: [`TableView`] snapshots and [`HandResult`] records.
//! - `error`: [`TableError`] and its stable codes.

mod cards;
mod error;
mod hand;
mod pots;
mod table;
mod view;

#[cfg(test)]
mod tests;

pub use cards::{Card, ParseCardError, Rank, Suit, ordered_deck, shuffled_deck, uniform_below};
pub use error::TableError;
pub use hand::{BestHand, HandCategory, HandValue, best_hand, evaluate_five};
pub use table::{Action, MAX_NAME_CHARS, MAX_SEATS, SeatStatus, Street, Table};
pub use view::{
    ChipsMoved, HandResult, LegalActions, PotResult, PotView, PotWinner, SeatView, ShownHand,
    TableView,
};
