//! Read-only snapshots of a table ([`TableView`]) and the record of a finished hand ([`HandResult`]).

use serde::{Deserialize, Serialize};

use super::cards::Card;
use super::hand::HandCategory;
use super::table::{SeatStatus, Street};

/// Everything visible about a table at one moment, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableView {
    /// The number of the current (or last) hand; 0 before the first hand.
    pub hand: u64,
    /// The current street, or `waiting` between hands.
    pub street: Street,
    /// The seat holding the dealer button, if a hand has been played.
    pub button: Option<usize>,
    /// The small blind.
    pub small_blind: u64,
    /// The big blind.
    pub big_blind: u64,
    /// The occupied seats, ordered by seat index.
    pub seats: Vec<SeatView>,
    /// The community cards dealt so far in the current hand.
    pub board: Vec<Card>,
    /// Every chip committed in the current hand, including the bets of the current street.
    pub pot: u64,
    /// The main pot followed by side pots, collected from the streets already completed
    /// (the current street's bets are still in each seat's `bet`).
    pub pots: Vec<PotView>,
    /// The player whose turn it is, if any.
    pub to_act: Option<String>,
    /// The highest total bet on the current street.
    pub current_bet: u64,
    /// The smallest legal "raise to" total on the current street (0 between hands).
    pub min_raise_to: u64,
    /// What the player to act may do, if someone is to act.
    pub legal_actions: Option<LegalActions>,
    /// The outcome of the most recently finished hand.
    pub last_result: Option<HandResult>,
    /// When the player to act runs out of time (milliseconds since the Unix epoch), if a turn
    /// timer runs: set by the `table` process, not by the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_deadline_ms: Option<i64>,
}

/// One occupied seat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatView {
    /// The seat index, from 0.
    pub seat: usize,
    /// The player's name.
    pub player: String,
    /// Chips in the player's stack (not counting chips already bet).
    pub chips: u64,
    /// Chips bet on the current street.
    pub bet: u64,
    /// Chips committed in total during the current hand.
    pub committed: u64,
    /// Whether the player is in the hand, folded, all-in, waiting or sitting out.
    pub status: SeatStatus,
    /// The player's hole cards (empty when not dealt in, or hidden from this viewer).
    pub hole_cards: Vec<Card>,
    /// True if the player asked to leave and will be removed when the current hand ends.
    pub leaving: bool,
}

/// A pot and the players who can still win it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PotView {
    /// Chips in the pot.
    pub amount: u64,
    /// Players still contending for it.
    pub eligible: Vec<String>,
}

/// The choices open to the player to act. `raise` amounts are totals for the street ("raise to").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalActions {
    /// The player these choices belong to.
    pub player: String,
    /// True if the player may check (nothing to call).
    pub can_check: bool,
    /// Chips a call would add to the player's bet (capped at their stack); 0 if they can check.
    pub call_amount: u64,
    /// The smallest legal raise-to total, or `None` if the player may not raise.
    pub min_raise_to: Option<u64>,
    /// The largest raise-to total (the player's all-in), or `None` if the player may not raise.
    pub max_raise_to: Option<u64>,
}

/// What happened in a finished hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandResult {
    /// The hand number.
    pub hand: u64,
    /// `showdown` if cards were compared, otherwise the street on which everyone else folded.
    pub ended_on: Street,
    /// The community cards dealt.
    pub board: Vec<Card>,
    /// A bet nobody called, returned to its owner before the pots were built.
    pub uncalled_bet: Option<ChipsMoved>,
    /// Each pot, main pot first, and who won it.
    pub pots: Vec<PotResult>,
    /// The hands shown at showdown (empty if the hand ended with folds).
    pub showdown: Vec<ShownHand>,
    /// Players who left during the hand and were removed at its end, with the chips they took.
    pub departed: Vec<ChipsMoved>,
}

/// A number of chips that went to one player.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipsMoved {
    /// The player.
    pub player: String,
    /// The chips.
    pub chips: u64,
}

/// One awarded pot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PotResult {
    /// Chips in the pot.
    pub amount: u64,
    /// Players who could win this pot.
    pub eligible: Vec<String>,
    /// The winners and their shares, from the first seat left of the button clockwise.
    pub winners: Vec<PotWinner>,
    /// The winning hand's category, or `None` if the pot was won without a showdown.
    pub category: Option<HandCategory>,
}

/// One winner's share of a pot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PotWinner {
    /// The winning player.
    pub player: String,
    /// The chips they received from this pot.
    pub chips: u64,
    /// Their best five cards (empty if the pot was won without a showdown).
    pub best_cards: Vec<Card>,
}

/// A hand revealed at showdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownHand {
    /// The player.
    pub player: String,
    /// Their seat.
    pub seat: usize,
    /// Their two hole cards.
    pub hole_cards: Vec<Card>,
    /// The category of their best hand.
    pub category: HandCategory,
    /// Their best five cards, most significant first.
    pub best_cards: Vec<Card>,
}
