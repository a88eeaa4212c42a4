//! Scenario and property tests for the poker engine, with shared helpers for dealing chosen cards.

mod betting;
mod lifecycle;
mod properties;
mod showdown;

use std::collections::HashSet;

use super::table::Table;
use super::{Action, Card, SeatStatus, SeatView, TableError, ordered_deck};

/// Parses space-separated cards such as `"As Kd"`.
fn cards(text: &str) -> Vec<Card> {
    text.split_whitespace()
        .map(|card| card.parse().expect("valid card"))
        .collect()
}

/// Formats cards as space-separated text.
fn text(cards: &[Card]) -> String {
    cards
        .iter()
        .map(Card::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A 5/10 table with these players seated in order (seat 0, 1, ...).
fn table_with(players: &[(&str, u64)]) -> Table {
    let mut table = Table::with_blinds(5, 10);
    for (name, chips) in players {
        table.join(name, *chips).expect("join");
    }
    table
}

/// Starts a hand whose cards are chosen: `holes` lists each dealt-in player with their two
/// cards in dealing order (starting left of the button), and `board` gives up to five
/// community cards. The deck is laid out exactly as the engine deals: one card to each player,
/// a second round, then burn, flop, burn, turn, burn, river. Unused cards fill the gaps.
fn start_rigged(table: &mut Table, holes: &[(&str, &str)], board: &str) {
    let hole_cards: Vec<Vec<Card>> = holes.iter().map(|(_, text)| cards(text)).collect();
    let board = cards(board);
    let mut used: HashSet<Card> = hole_cards.iter().flatten().copied().collect();
    used.extend(board.iter().copied());
    let mut spare = ordered_deck()
        .into_iter()
        .filter(|card| !used.contains(card));
    let mut filler = || spare.next().expect("enough spare cards");

    let mut deck = Vec::new();
    for round in 0..2 {
        for hole in &hole_cards {
            deck.push(hole[round]);
        }
    }
    let mut board_cards = board.into_iter();
    for street_size in [3, 1, 1] {
        deck.push(filler()); // The burn card.
        for _ in 0..street_size {
            let next = board_cards.next().unwrap_or_else(&mut filler);
            deck.push(next);
        }
    }
    deck.extend(spare);
    assert_eq!(deck.len(), 52);
    table.start_with_deck(deck).expect("start hand");

    // Check that the dealing order assumed by the test is the engine's. If the blinds already
    // ended the hand, the cards are found in the showdown instead.
    for (name, hole) in holes {
        let dealt = if table.hand_in_progress() {
            seat(table, name).hole_cards
        } else {
            let result = table.last_result().expect("a finished hand");
            let shown = result.showdown.iter().find(|shown| shown.player == *name);
            shown
                .map(|shown| shown.hole_cards.clone())
                .unwrap_or_default()
        };
        assert_eq!(text(&dealt), *hole, "hole cards of {name}");
    }
}

/// The view of one player's seat.
fn seat(table: &Table, name: &str) -> SeatView {
    table
        .view()
        .seats
        .into_iter()
        .find(|seat| seat.player == name)
        .unwrap_or_else(|| panic!("{name} is not seated"))
}

/// Acts and panics with context if the engine refuses.
fn act(table: &mut Table, name: &str, action: Action) {
    if let Err(error) = table.act(name, action) {
        panic!("{name} {action:?} refused: {error:?}\n{:#?}", table.view());
    }
}

/// Asserts that an operation fails with `code` and leaves the table exactly as it was.
fn assert_refused<T: std::fmt::Debug>(
    table: &mut Table,
    code: &str,
    operation: impl FnOnce(&mut Table) -> Result<T, TableError>,
) {
    let before = table.clone();
    let result = operation(table);
    match result {
        Err(error) => assert_eq!(error.code(), code, "{error:?}"),
        Ok(value) => panic!("expected {code}, got Ok({value:?})"),
    }
    assert_eq!(*table, before, "a refused operation changed the table");
}

/// The player to act, as a string.
fn to_act(table: &Table) -> String {
    table.view().to_act.unwrap_or_default()
}

/// The status of one player's seat.
fn status(table: &Table, name: &str) -> SeatStatus {
    seat(table, name).status
}
