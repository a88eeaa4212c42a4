//! The table and its rules: seating, the button and blinds, betting rounds, showdown and payouts.

// Long file: the rules of one hand of poker, from seating to payouts, in the order a hand is
// played; they share the table's state at every step.

use serde::{Deserialize, Serialize};

use super::cards::{Card, shuffled_deck};
use super::error::TableError;
use super::hand::{BestHand, best_hand};
use super::pots::{build_pots, split_pot};
use super::view::{
    ChipsMoved, HandResult, LegalActions, PotResult, PotView, PotWinner, SeatView, ShownHand,
    TableView,
};

/// The number of seats at a table.
pub const MAX_SEATS: usize = 9;

/// The longest allowed player name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// A betting decision by the player to act.
///
/// Serialized as `"fold"`, `"check"`, `"call"` or `{"raise": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Give up the hand.
    Fold,
    /// Pass without betting; only allowed when the player's bet already equals the current bet.
    Check,
    /// Match the current bet (going all-in for less if the stack is short).
    Call,
    /// Raise TO this total bet for the current street (not BY this amount).
    ///
    /// With no bet yet on the street this is an opening bet. The total must be at least the
    /// current bet plus the last full raise (the big blind if there was none), unless the
    /// player is going all-in for less.
    Raise(u64),
}

/// The stage of play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Street {
    /// No hand is in progress.
    Waiting,
    /// Hole cards dealt, blinds posted.
    Preflop,
    /// Three community cards.
    Flop,
    /// Four community cards.
    Turn,
    /// Five community cards.
    River,
    /// Hands were compared (only used in [`HandResult::ended_on`]).
    Showdown,
}

/// Where a seated player stands in the current hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeatStatus {
    /// Seated with chips, waiting for the next hand (between hands, or joined mid-hand).
    Waiting,
    /// In the hand and still able to bet.
    Active,
    /// Folded this hand.
    Folded,
    /// In the hand with no chips left to bet.
    AllIn,
    /// Seated with no chips; not dealt in.
    SittingOut,
}

impl SeatStatus {
    /// True for players dealt into the current hand (active, folded or all-in).
    fn dealt_in(self) -> bool {
        matches!(
            self,
            SeatStatus::Active | SeatStatus::Folded | SeatStatus::AllIn
        )
    }

    /// True for players who can still win chips in the current hand.
    fn contending(self) -> bool {
        matches!(self, SeatStatus::Active | SeatStatus::AllIn)
    }
}

/// A seated player and their part in the current hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seat {
    /// The player's unique name.
    player: String,
    /// Chips in the stack, not counting chips already committed to the pot.
    chips: u64,
    /// Where the player stands in the current hand.
    status: SeatStatus,
    /// The two hole cards while dealt in.
    hole_cards: Vec<Card>,
    /// Chips bet on the current street.
    bet: u64,
    /// Chips committed during the whole hand (including `bet`).
    committed: u64,
    /// Whether the player has voluntarily acted on the current street.
    acted: bool,
    /// Whether the player asked to leave; they are removed when the hand ends.
    leaving: bool,
}

impl Seat {
    fn new(player: &str, chips: u64) -> Seat {
        Seat {
            player: player.to_owned(),
            chips,
            status: SeatStatus::Waiting,
            hole_cards: Vec::new(),
            bet: 0,
            committed: 0,
            acted: false,
            leaving: false,
        }
    }

    /// Moves up to `amount` chips from the stack into the pot; the player is all-in when the stack runs out.
    fn put_in(&mut self, amount: u64) {
        let paid = amount.min(self.chips);
        self.chips -= paid;
        self.bet += paid;
        self.committed += paid;
        if self.chips == 0 {
            self.status = SeatStatus::AllIn;
        }
    }

    /// Clears everything about the previous hand.
    fn reset_for_next_hand(&mut self) {
        self.status = if self.chips > 0 {
            SeatStatus::Waiting
        } else {
            SeatStatus::SittingOut
        };
        self.hole_cards.clear();
        self.bet = 0;
        self.committed = 0;
        self.acted = false;
    }
}

/// The state of the hand being played.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HandState {
    /// The current betting round.
    street: Street,
    /// Community cards dealt so far.
    board: Vec<Card>,
    /// The undealt cards; the next card dealt is the first one.
    deck: Vec<Card>,
    /// The highest total bet on this street.
    current_bet: u64,
    /// The size of the last full raise on this street (the big blind if none); the next raise must be at least this much.
    min_raise: u64,
    /// The seat whose turn it is.
    to_act: Option<usize>,
    /// The seat that posted the small blind.
    small_blind_seat: usize,
    /// The seat that posted the big blind.
    big_blind_seat: usize,
}

impl HandState {
    /// Deals the top card of the deck, if any is left.
    fn draw(&mut self) -> Option<Card> {
        if self.deck.is_empty() {
            None
        } else {
            Some(self.deck.remove(0))
        }
    }
}

/// The validated effect of an action, computed before anything changes.
enum Move {
    Fold,
    Check,
    /// Put this many chips in to call.
    Call(u64),
    /// Raise to this street total.
    RaiseTo(u64),
}

/// A no-limit Texas hold'em table. Its whole state is plain data and round-trips through serde.
///
/// Every method validates completely before changing anything, so an `Err` leaves the table untouched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The small blind.
    small_blind: u64,
    /// The big blind.
    big_blind: u64,
    /// How many hands have been started; the current or last hand's number.
    hand_number: u64,
    /// The dealer button's seat, once a hand has been played.
    button: Option<usize>,
    /// The seats in clockwise order; `null` is an empty seat.
    seats: Vec<Option<Seat>>,
    /// The hand being played, if any.
    current_hand: Option<HandState>,
    /// The outcome of the most recently finished hand.
    last_result: Option<HandResult>,
}

impl Default for Table {
    /// An empty nine-seat table with blinds of 5 and 10.
    fn default() -> Table {
        Table::with_blinds(5, 10)
    }
}

impl Table {
    /// An empty nine-seat table with the given blinds.
    ///
    /// Unusable blinds are adjusted rather than refused: the big blind is raised to at least 1
    /// and the small blind lowered to at most the big blind. Use [`Table::try_with_blinds`] to
    /// get an error instead.
    pub fn with_blinds(small_blind: u64, big_blind: u64) -> Table {
        let big_blind = big_blind.max(1);
        Table {
            small_blind: small_blind.min(big_blind),
            big_blind,
            hand_number: 0,
            button: None,
            seats: vec![None; MAX_SEATS],
            current_hand: None,
            last_result: None,
        }
    }

    /// An empty nine-seat table, or [`TableError::InvalidBlinds`] unless `1 <= big_blind` and `small_blind <= big_blind`.
    pub fn try_with_blinds(small_blind: u64, big_blind: u64) -> Result<Table, TableError> {
        if big_blind == 0 || small_blind > big_blind {
            return Err(TableError::InvalidBlinds);
        }
        Ok(Table::with_blinds(small_blind, big_blind))
    }

    /// The small blind.
    pub fn small_blind(&self) -> u64 {
        self.small_blind
    }

    /// The big blind.
    pub fn big_blind(&self) -> u64 {
        self.big_blind
    }

    /// The number of the current or last hand (0 before the first hand).
    pub fn hand_number(&self) -> u64 {
        self.hand_number
    }

    /// True while a hand is being played.
    pub fn hand_in_progress(&self) -> bool {
        self.current_hand.is_some()
    }

    /// The outcome of the most recently finished hand.
    pub fn last_result(&self) -> Option<&HandResult> {
        self.last_result.as_ref()
    }

    /// The stack of a seated player (not counting chips committed to the current hand).
    pub fn chips_of(&self, player: &str) -> Option<u64> {
        self.seat_of(player)
            .and_then(|index| self.seat(index))
            .map(|seat| seat.chips)
    }

    /// All chips on the table: every stack plus everything committed to the current hand.
    pub fn total_chips(&self) -> u64 {
        self.occupied()
            .map(|(_, seat)| seat.chips + seat.committed)
            .sum()
    }

    /// The name of the player whose turn it is.
    pub fn to_act(&self) -> Option<&str> {
        let index = self.current_hand.as_ref()?.to_act?;
        self.seat(index).map(|seat| seat.player.as_str())
    }

    /// Seats a new player at the lowest free seat with `chips` in their stack.
    ///
    /// Names must be 1 to 64 characters without control characters, and unique at the table.
    /// Joining during a hand is allowed; the player is dealt in from the next hand.
    pub fn join(&mut self, player: &str, chips: u64) -> Result<(), TableError> {
        let length = player.chars().count();
        if length == 0 || length > MAX_NAME_CHARS || player.chars().any(char::is_control) {
            return Err(TableError::InvalidName);
        }
        // Zero chips, or so many that the table's total would overflow, cannot be brought in.
        if chips == 0 || self.total_chips().checked_add(chips).is_none() {
            return Err(TableError::InvalidChips);
        }
        if self.seat_of(player).is_some() {
            return Err(TableError::AlreadySeated {
                player: player.to_owned(),
            });
        }
        let Some(free) = self.seats.iter().position(Option::is_none) else {
            return Err(TableError::TableFull);
        };
        self.seats[free] = Some(Seat::new(player, chips));
        Ok(())
    }

    /// Removes a player and returns the chips they cash out now.
    ///
    /// A player dealt into the current hand cannot take chips off the table mid-hand: they
    /// fold (if they still could act), `0` is returned, and they are removed with their stack
    /// when the hand ends (see [`HandResult::departed`]). An all-in player has no decision left
    /// to give up, so their hand still plays out. Asking again while already leaving returns `0`.
    pub fn leave(&mut self, player: &str) -> Result<u64, TableError> {
        let Some(index) = self.seat_of(player) else {
            return Err(TableError::UnknownPlayer {
                player: player.to_owned(),
            });
        };
        let in_hand = self.current_hand.is_some()
            && self.seat(index).is_some_and(|seat| seat.status.dealt_in());
        if !in_hand {
            let chips = self.seats[index].take().map_or(0, |seat| seat.chips);
            return Ok(chips);
        }

        let Some(seat) = self.seat_mut(index) else {
            return Ok(0);
        };
        if seat.leaving {
            return Ok(0);
        }
        seat.leaving = true;
        if seat.status == SeatStatus::Active {
            seat.status = SeatStatus::Folded;
            // If it was their turn the action moves on; otherwise the player to act keeps it,
            // unless the fold ended the betting round or the hand.
            let to_act = self.current_hand.as_ref().and_then(|hand| hand.to_act);
            match to_act {
                Some(current) if current != index => self.settle(current, true),
                _ => self.settle(index, false),
            }
        }
        Ok(0)
    }

    /// Starts the next hand: moves the button, posts the blinds, shuffles and deals.
    ///
    /// Every seated player with chips is dealt in; players with no chips sit out. Fails if a
    /// hand is in progress or fewer than two players have chips. If the blinds put everyone
    /// all-in, the whole hand plays out at once.
    pub fn start_hand(&mut self, rng: &mut impl rand_core::Rng) -> Result<(), TableError> {
        self.check_can_start()?;
        // The generator is only touched once the hand is certain to start.
        self.start_with_deck(shuffled_deck(rng))
    }

    /// Refuses to start while a hand is running or with fewer than two players holding chips.
    fn check_can_start(&self) -> Result<(), TableError> {
        if self.current_hand.is_some() {
            return Err(TableError::HandInProgress);
        }
        if self.occupied().filter(|(_, seat)| seat.chips > 0).count() < 2 {
            return Err(TableError::NotEnoughPlayers);
        }
        Ok(())
    }

    /// Starts a hand dealing from `deck` (top card first). Tests use it to deal chosen cards.
    pub(super) fn start_with_deck(&mut self, deck: Vec<Card>) -> Result<(), TableError> {
        self.check_can_start()?;
        let eligible: Vec<usize> = self
            .occupied()
            .filter(|(_, seat)| seat.chips > 0)
            .map(|(index, _)| index)
            .collect();
        let Some(&first_eligible) = eligible.first() else {
            return Err(TableError::NotEnoughPlayers);
        };

        // From here on nothing can fail.
        let seat_count = self.seats.len();
        let next_eligible = |from: usize| -> usize {
            (1..=seat_count)
                .map(|step| (from + step) % seat_count)
                .find(|index| eligible.contains(index))
                .unwrap_or(from)
        };
        let button = self.button.map_or(first_eligible, next_eligible);
        // Heads-up the button posts the small blind; otherwise the two seats after it post.
        let small_blind_seat = if eligible.len() == 2 {
            button
        } else {
            next_eligible(button)
        };
        let big_blind_seat = next_eligible(small_blind_seat);

        self.hand_number += 1;
        self.button = Some(button);
        for (index, slot) in self.seats.iter_mut().enumerate() {
            if let Some(seat) = slot {
                seat.reset_for_next_hand();
                if eligible.contains(&index) {
                    seat.status = SeatStatus::Active;
                }
            }
        }

        let mut hand = HandState {
            street: Street::Preflop,
            board: Vec::new(),
            deck,
            current_bet: self.big_blind,
            min_raise: self.big_blind,
            to_act: None,
            small_blind_seat,
            big_blind_seat,
        };
        // Deal one card at a time, starting left of the button, twice around.
        let deal_order: Vec<usize> = self
            .clockwise_after(button)
            .filter(|i| eligible.contains(i))
            .collect();
        for _ in 0..2 {
            for &index in &deal_order {
                if let (Some(card), Some(seat)) = (hand.draw(), self.seat_mut(index)) {
                    seat.hole_cards.push(card);
                }
            }
        }
        self.current_hand = Some(hand);

        // Short stacks post what they have and are all-in.
        let (small_blind, big_blind) = (self.small_blind, self.big_blind);
        if let Some(seat) = self.seat_mut(small_blind_seat) {
            seat.put_in(small_blind);
        }
        if let Some(seat) = self.seat_mut(big_blind_seat) {
            seat.put_in(big_blind);
        }
        // Preflop action starts left of the big blind (heads-up: the button, who posted the small blind).
        self.settle(big_blind_seat, false);
        Ok(())
    }

    /// Applies the action of `player`, who must be the player to act.
    ///
    /// `Action::Raise(n)` raises to a street total of `n`; see [`Action::Raise`].
    pub fn act(&mut self, player: &str, action: Action) -> Result<(), TableError> {
        let Some(hand) = &self.current_hand else {
            return Err(TableError::NoHandInProgress);
        };
        let Some(index) = self.seat_of(player) else {
            return Err(TableError::UnknownPlayer {
                player: player.to_owned(),
            });
        };
        if hand.to_act != Some(index) {
            return Err(TableError::NotYourTurn {
                player: player.to_owned(),
            });
        }
        let planned = self.validate(index, action)?;

        // The action is legal: apply it.
        let Some(hand) = self.current_hand.as_mut() else {
            return Err(TableError::NoHandInProgress);
        };
        let Some(seat) = self.seats.get_mut(index).and_then(Option::as_mut) else {
            return Err(TableError::UnknownPlayer {
                player: player.to_owned(),
            });
        };
        match planned {
            Move::Fold => seat.status = SeatStatus::Folded,
            Move::Check => {}
            Move::Call(amount) => seat.put_in(amount),
            Move::RaiseTo(total) => {
                seat.put_in(total.saturating_sub(seat.bet));
                // Only a full raise changes the minimum raise; an all-in for less just lifts the bet.
                let raise = total.saturating_sub(hand.current_bet);
                if raise >= hand.min_raise {
                    hand.min_raise = raise;
                }
                hand.current_bet = total;
            }
        }
        seat.acted = true;
        self.settle(index, false);
        Ok(())
    }

    /// What the player to act may do, or `None` between hands.
    pub fn legal_actions(&self) -> Option<LegalActions> {
        let hand = self.current_hand.as_ref()?;
        let index = hand.to_act?;
        let seat = self.seat(index)?;
        let to_call = hand.current_bet.saturating_sub(seat.bet);
        let raise = self.raise_range(index);
        Some(LegalActions {
            player: seat.player.clone(),
            can_check: to_call == 0,
            call_amount: to_call.min(seat.chips),
            min_raise_to: raise.map(|(min, _)| min),
            max_raise_to: raise.map(|(_, max)| max),
        })
    }

    /// A snapshot of the table with every player's hole cards visible.
    pub fn view(&self) -> TableView {
        self.build_view(None)
    }

    /// A snapshot as seen by `viewer`: other players' hole cards are hidden (left empty).
    ///
    /// Cards revealed at showdown remain visible in [`TableView::last_result`].
    pub fn view_for(&self, viewer: &str) -> TableView {
        self.build_view(Some(viewer))
    }

    fn build_view(&self, viewer: Option<&str>) -> TableView {
        let hand = self.current_hand.as_ref();
        let seats = self
            .occupied()
            .map(|(index, seat)| {
                let visible = viewer.is_none_or(|name| name == seat.player);
                SeatView {
                    seat: index,
                    player: seat.player.clone(),
                    chips: seat.chips,
                    bet: seat.bet,
                    committed: seat.committed,
                    status: seat.status,
                    hole_cards: if visible {
                        seat.hole_cards.clone()
                    } else {
                        Vec::new()
                    },
                    leaving: seat.leaving,
                }
            })
            .collect();
        // Pots hold what earlier streets collected; this street's bets are still in front of the players.
        let pots = if hand.is_some() {
            let collected: Vec<(usize, u64)> = self
                .occupied()
                .map(|(index, seat)| (index, seat.committed.saturating_sub(seat.bet)))
                .collect();
            build_pots(&collected, &self.contenders())
                .into_iter()
                .map(|pot| PotView {
                    amount: pot.amount,
                    eligible: self.names(&pot.eligible),
                })
                .collect()
        } else {
            Vec::new()
        };
        TableView {
            hand: self.hand_number,
            street: hand.map_or(Street::Waiting, |hand| hand.street),
            button: self.button,
            small_blind: self.small_blind,
            big_blind: self.big_blind,
            seats,
            board: hand.map(|hand| hand.board.clone()).unwrap_or_default(),
            pot: self.occupied().map(|(_, seat)| seat.committed).sum(),
            pots,
            to_act: self.to_act().map(str::to_owned),
            current_bet: hand.map_or(0, |hand| hand.current_bet),
            min_raise_to: hand.map_or(0, |hand| hand.current_bet.saturating_add(hand.min_raise)),
            legal_actions: self.legal_actions(),
            last_result: self.last_result.clone(),
            turn_deadline_ms: None,
        }
    }

    // ----- Validation -----

    /// Checks `action` for the player at `index` (who is to act) without changing anything.
    fn validate(&self, index: usize, action: Action) -> Result<Move, TableError> {
        let (Some(hand), Some(seat)) = (self.current_hand.as_ref(), self.seat(index)) else {
            return Err(TableError::NoHandInProgress);
        };
        let to_call = hand.current_bet.saturating_sub(seat.bet);
        match action {
            Action::Fold => Ok(Move::Fold),
            Action::Check if to_call == 0 => Ok(Move::Check),
            Action::Check => Err(TableError::CannotCheck { to_call }),
            Action::Call if to_call == 0 => Err(TableError::NothingToCall),
            Action::Call => Ok(Move::Call(to_call.min(seat.chips))),
            Action::Raise(total) => {
                let Some((min_total, max_total)) = self.raise_range(index) else {
                    return Err(TableError::RaiseNotAllowed);
                };
                if total > max_total {
                    Err(TableError::InsufficientChips {
                        max_raise_to: max_total,
                    })
                } else if total < min_total {
                    Err(TableError::RaiseTooSmall {
                        min_raise_to: min_total,
                    })
                } else {
                    Ok(Move::RaiseTo(total))
                }
            }
        }
    }

    /// The legal raise-to totals `(min, max)` for the player at `index`, or `None` if they may not raise.
    ///
    /// A player may raise when all of these hold:
    /// - another player could still respond (someone else is active and not all-in);
    /// - their stack covers more than a call;
    /// - the betting is open to them: they have not acted on this street yet, or the bet has
    ///   grown by at least a full raise since they last acted. An all-in for less than a full
    ///   raise therefore does not reopen the betting for players who already acted.
    ///
    /// The minimum is the current bet plus the last full raise, or the player's whole stack if that is less.
    fn raise_range(&self, index: usize) -> Option<(u64, u64)> {
        let hand = self.current_hand.as_ref()?;
        let seat = self.seat(index)?;
        if seat.status != SeatStatus::Active {
            return None;
        }
        let opponent_can_respond = self
            .occupied()
            .any(|(other, s)| other != index && s.status == SeatStatus::Active);
        let max_total = seat.bet.saturating_add(seat.chips);
        // Since a player's bet only changes when they act, `seat.bet` is the level they last acted at.
        let reopened = !seat.acted || hand.current_bet.saturating_sub(seat.bet) >= hand.min_raise;
        if !opponent_can_respond || max_total <= hand.current_bet || !reopened {
            return None;
        }
        let min_total = hand
            .current_bet
            .saturating_add(hand.min_raise)
            .min(max_total);
        Some((min_total, max_total))
    }

    // ----- Flow of the hand -----

    /// Moves the hand forward after something changed: ends it if one player is left, passes
    /// the action to the next player who owes a decision, or closes the betting round and deals
    /// the next street (repeatedly, running out the board when nobody can bet any more).
    ///
    /// The search for the next player starts at `from` (included if `inclusive`) and goes clockwise.
    fn settle(&mut self, mut from: usize, mut inclusive: bool) {
        loop {
            let Some(street) = self.current_hand.as_ref().map(|hand| hand.street) else {
                return;
            };
            if self.contenders().len() <= 1 {
                self.end_hand();
                return;
            }
            if let Some(next) = self.next_to_act(from, inclusive) {
                if let Some(hand) = self.current_hand.as_mut() {
                    hand.to_act = Some(next);
                }
                return;
            }
            // The betting round is over.
            if street == Street::River {
                self.end_hand();
                return;
            }
            self.deal_next_street();
            // After the flop the first active player left of the button acts first.
            from = self.button.unwrap_or(0);
            inclusive = false;
        }
    }

    /// The first seat clockwise from `from` that still owes a decision this street, or `None`
    /// if the betting round is complete.
    fn next_to_act(&self, from: usize, inclusive: bool) -> Option<usize> {
        let hand = self.current_hand.as_ref()?;
        let active: Vec<usize> = self
            .occupied()
            .filter(|(_, seat)| seat.status == SeatStatus::Active)
            .map(|(index, _)| index)
            .collect();
        if let [only] = active.as_slice() {
            // A lone player who can still bet has nobody to bet against: once they have matched
            // every all-in, nothing is left to decide.
            let highest_other = self
                .occupied()
                .filter(|&(index, seat)| index != *only && seat.status.contending())
                .map(|(_, seat)| seat.bet)
                .max()
                .unwrap_or(0);
            if self
                .seat(*only)
                .is_some_and(|seat| seat.bet >= highest_other)
            {
                return None;
            }
        }
        let start = if inclusive { from } else { from + 1 };
        (0..self.seats.len())
            .map(|step| (start + step) % self.seats.len())
            .find(|&index| {
                self.seat(index).is_some_and(|seat| {
                    seat.status == SeatStatus::Active
                        && (!seat.acted || seat.bet < hand.current_bet)
                })
            })
    }

    /// Ends the betting round and deals the flop, turn or river (burning a card first).
    fn deal_next_street(&mut self) {
        for seat in self.seats.iter_mut().flatten() {
            seat.bet = 0;
            seat.acted = false;
        }
        let big_blind = self.big_blind;
        let Some(hand) = self.current_hand.as_mut() else {
            return;
        };
        let (next_street, cards) = match hand.street {
            Street::Preflop => (Street::Flop, 3),
            Street::Flop => (Street::Turn, 1),
            _ => (Street::River, 1),
        };
        let _burned = hand.draw();
        for _ in 0..cards {
            if let Some(card) = hand.draw() {
                hand.board.push(card);
            }
        }
        hand.street = next_street;
        hand.current_bet = 0;
        hand.min_raise = big_blind;
        hand.to_act = None;
    }

    /// Finishes the hand: returns any uncalled bet, awards every pot (comparing hands if two or
    /// more players remain), records the result, removes departing players and resets the seats.
    fn end_hand(&mut self) {
        let Some(hand) = self.current_hand.take() else {
            return;
        };
        let uncalled_bet = self.return_uncalled_bet();

        // With two or more players left, everyone still in shows their best hand.
        let contenders = self.contenders();
        let is_showdown = contenders.len() >= 2;
        let best_hands = if is_showdown {
            self.best_hands(&contenders, &hand.board)
        } else {
            Vec::new()
        };
        let pots = self.award_pots(&contenders, &best_hands);
        let showdown = self.shown_hands(&best_hands);
        let departed = self.remove_departing_players();
        for seat in self.seats.iter_mut().flatten() {
            seat.reset_for_next_hand();
        }

        self.last_result = Some(HandResult {
            hand: self.hand_number,
            ended_on: if is_showdown {
                Street::Showdown
            } else {
                hand.street
            },
            board: hand.board,
            uncalled_bet,
            pots,
            showdown,
            departed,
        });
    }

    /// The best five-card hand of each of `seats`, using their hole cards and the board.
    fn best_hands(&self, seats: &[usize], board: &[Card]) -> Vec<(usize, BestHand)> {
        seats
            .iter()
            .filter_map(|&index| {
                let seat = self.seat(index)?;
                let cards: Vec<Card> = seat.hole_cards.iter().chain(board).copied().collect();
                best_hand(&cards).map(|best| (index, best))
            })
            .collect()
    }

    /// Builds the pots from everyone's contribution and pays each one out.
    ///
    /// Each pot goes to the best hand among its eligible players, split evenly on a tie. With
    /// no hands to compare (everyone else folded) the single contender wins every pot.
    fn award_pots(
        &mut self,
        contenders: &[usize],
        best_hands: &[(usize, BestHand)],
    ) -> Vec<PotResult> {
        let best_of = |index: usize| {
            best_hands
                .iter()
                .find(|(seat, _)| *seat == index)
                .map(|(_, best)| best)
        };
        let contributions: Vec<(usize, u64)> = self
            .occupied()
            .map(|(index, seat)| (index, seat.committed))
            .collect();

        let mut results = Vec::new();
        for pot in build_pots(&contributions, contenders) {
            let top = pot
                .eligible
                .iter()
                .filter_map(|&index| best_of(index))
                .map(|best| best.value)
                .max();
            // `eligible` is ordered from the left of the button, so `winners` is too.
            let winners: Vec<usize> = pot
                .eligible
                .iter()
                .copied()
                .filter(|&index| match top {
                    Some(top) => best_of(index).is_some_and(|best| best.value == top),
                    None => true,
                })
                .collect();
            let mut pot_winners = Vec::new();
            for (index, chips) in split_pot(pot.amount, &winners) {
                if let Some(seat) = self.seat_mut(index) {
                    seat.chips = seat.chips.saturating_add(chips);
                }
                pot_winners.push(PotWinner {
                    player: self.name(index),
                    chips,
                    best_cards: best_of(index)
                        .map(|best| best.cards.to_vec())
                        .unwrap_or_default(),
                });
            }
            results.push(PotResult {
                amount: pot.amount,
                eligible: self.names(&pot.eligible),
                winners: pot_winners,
                category: top.map(|value| value.category()),
            });
        }
        results
    }

    /// What each player at the showdown revealed.
    fn shown_hands(&self, best_hands: &[(usize, BestHand)]) -> Vec<ShownHand> {
        best_hands
            .iter()
            .filter_map(|(index, best)| {
                let seat = self.seat(*index)?;
                Some(ShownHand {
                    player: seat.player.clone(),
                    seat: *index,
                    hole_cards: seat.hole_cards.clone(),
                    category: best.value.category(),
                    best_cards: best.cards.to_vec(),
                })
            })
            .collect()
    }

    /// Removes the players who asked to leave during the hand; they take their whole stack.
    fn remove_departing_players(&mut self) -> Vec<ChipsMoved> {
        let mut departed = Vec::new();
        for slot in &mut self.seats {
            if slot.as_ref().is_some_and(|seat| seat.leaving)
                && let Some(seat) = slot.take()
            {
                departed.push(ChipsMoved {
                    player: seat.player,
                    chips: seat.chips,
                });
            }
        }
        departed
    }

    /// Gives back the part of the largest contribution that nobody matched, if its owner is
    /// still in the hand (chips of a player who folded stay in the pot).
    fn return_uncalled_bet(&mut self) -> Option<ChipsMoved> {
        let mut contributions: Vec<(usize, u64)> = self
            .occupied()
            .map(|(index, seat)| (index, seat.committed))
            .collect();
        contributions.sort_by_key(|&(_, amount)| std::cmp::Reverse(amount));
        let (top_index, top) = *contributions.first()?;
        let second = contributions.get(1).map_or(0, |&(_, amount)| amount);
        let excess = top - second;
        let seat = self.seat_mut(top_index)?;
        if excess == 0 || !seat.status.contending() {
            return None;
        }
        seat.committed -= excess;
        seat.bet = seat.bet.saturating_sub(excess);
        seat.chips += excess;
        Some(ChipsMoved {
            player: seat.player.clone(),
            chips: excess,
        })
    }

    // ----- Small helpers -----

    fn seat(&self, index: usize) -> Option<&Seat> {
        self.seats.get(index).and_then(Option::as_ref)
    }

    fn seat_mut(&mut self, index: usize) -> Option<&mut Seat> {
        self.seats.get_mut(index).and_then(Option::as_mut)
    }

    fn seat_of(&self, player: &str) -> Option<usize> {
        self.occupied()
            .find(|(_, seat)| seat.player == player)
            .map(|(index, _)| index)
    }

    fn occupied(&self) -> impl Iterator<Item = (usize, &Seat)> {
        self.seats
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.as_ref().map(|seat| (index, seat)))
    }

    /// Every seat index, starting with the one after `index` and ending with `index` itself.
    fn clockwise_after(&self, index: usize) -> impl Iterator<Item = usize> + use<> {
        let count = self.seats.len();
        (1..=count).map(move |step| (index + step) % count)
    }

    /// Seats still contending for the pot (active or all-in), clockwise from the first seat
    /// left of the button: the order in which split pots hand out odd chips.
    fn contenders(&self) -> Vec<usize> {
        self.clockwise_after(self.button.unwrap_or(0))
            .filter(|&index| {
                self.seat(index)
                    .is_some_and(|seat| seat.status.contending())
            })
            .collect()
    }

    fn name(&self, index: usize) -> String {
        self.seat(index)
            .map(|seat| seat.player.clone())
            .unwrap_or_default()
    }

    fn names(&self, indices: &[usize]) -> Vec<String> {
        indices.iter().map(|&index| self.name(index)).collect()
    }
}
