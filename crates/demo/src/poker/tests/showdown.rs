//! Tests of how hands end: folds, run-outs, showdowns, side pots, split pots and odd chips.

use super::*;
use crate::poker::{ChipsMoved, HandCategory, Street};

#[test]
fn everyone_folds_to_a_raise() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "alice", Action::Raise(30));
    act(&mut table, "bob", Action::Fold);
    assert!(table.hand_in_progress());
    act(&mut table, "carol", Action::Fold);

    assert!(!table.hand_in_progress());
    let result = table.last_result().unwrap().clone();
    assert_eq!(result.hand, 1);
    assert_eq!(result.ended_on, Street::Preflop);
    assert!(
        result.showdown.is_empty(),
        "nobody shows without a showdown"
    );
    assert!(result.board.is_empty());
    assert_eq!(
        result.uncalled_bet,
        Some(ChipsMoved {
            player: "alice".into(),
            chips: 20
        })
    );
    assert_eq!(result.pots.len(), 1);
    assert_eq!(result.pots[0].amount, 25);
    assert_eq!(result.pots[0].winners.len(), 1);
    assert_eq!(result.pots[0].winners[0].player, "alice");
    assert_eq!(result.pots[0].winners[0].chips, 25);
    assert_eq!(result.pots[0].category, None);
    assert_eq!(table.chips_of("alice"), Some(1015));
    assert_eq!(table.chips_of("bob"), Some(995));
    assert_eq!(table.chips_of("carol"), Some(990));
    assert_eq!(table.total_chips(), 3000);
    assert!(
        table
            .view()
            .seats
            .iter()
            .all(|seat| seat.status == SeatStatus::Waiting)
    );
}

#[test]
fn fold_after_the_flop_ends_the_hand_on_that_street() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Check);
    act(&mut table, "bob", Action::Raise(50));
    act(&mut table, "alice", Action::Fold);
    let result = table.last_result().unwrap();
    assert_eq!(result.ended_on, Street::Flop);
    assert_eq!(result.board.len(), 3);
    assert_eq!(result.pots[0].amount, 20);
    assert_eq!(table.chips_of("bob"), Some(1010));
}

#[test]
fn side_pots_with_three_all_in_players_of_different_stacks() {
    let mut table = table_with(&[("ann", 100), ("ben", 250), ("cat", 500), ("dan", 1000)]);
    // The shortest stack has the best hand, the next shortest the next best, and so on.
    start_rigged(
        &mut table,
        &[
            ("ben", "Ks Kh"),
            ("cat", "Qs Qh"),
            ("dan", "Js Jh"),
            ("ann", "As Ah"),
        ],
        "2c 7d 9c 3h 4d",
    );
    assert_eq!(to_act(&table), "dan");
    act(&mut table, "dan", Action::Raise(1000));
    act(&mut table, "ann", Action::Call);
    act(&mut table, "ben", Action::Call);
    act(&mut table, "cat", Action::Call);

    assert!(
        !table.hand_in_progress(),
        "everyone is all-in: the board runs out"
    );
    let result = table.last_result().unwrap().clone();
    assert_eq!(result.ended_on, Street::Showdown);
    assert_eq!(text(&result.board), "2c 7d 9c 3h 4d");
    assert_eq!(
        result.uncalled_bet,
        Some(ChipsMoved {
            player: "dan".into(),
            chips: 500
        })
    );

    let pots: Vec<(u64, Vec<String>, String)> = result
        .pots
        .iter()
        .map(|pot| {
            (
                pot.amount,
                pot.eligible.clone(),
                pot.winners[0].player.clone(),
            )
        })
        .collect();
    assert_eq!(
        pots,
        vec![
            (
                400,
                vec!["ben".into(), "cat".into(), "dan".into(), "ann".into()],
                "ann".into()
            ),
            (
                450,
                vec!["ben".into(), "cat".into(), "dan".into()],
                "ben".into()
            ),
            (500, vec!["cat".into(), "dan".into()], "cat".into()),
        ]
    );
    assert!(
        result
            .pots
            .iter()
            .all(|pot| pot.category == Some(HandCategory::Pair))
    );
    assert_eq!(
        text(&result.pots[0].winners[0].best_cards),
        "As Ah 9c 7d 4d"
    );
    assert_eq!(result.showdown.len(), 4);

    assert_eq!(table.chips_of("ann"), Some(400));
    assert_eq!(table.chips_of("ben"), Some(450));
    assert_eq!(table.chips_of("cat"), Some(500));
    assert_eq!(table.chips_of("dan"), Some(500));
    assert_eq!(table.total_chips(), 1850);
}

#[test]
fn side_pot_is_won_by_a_different_player_than_the_main_pot() {
    // The all-in short stack wins the main pot; the side pot goes to the best of the others.
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 100)]);
    start_rigged(
        &mut table,
        &[("bob", "Ks Kh"), ("carol", "As Ah"), ("alice", "Qs Qh")],
        "2c 7d 9c 3h 4d",
    );
    act(&mut table, "alice", Action::Raise(300));
    act(&mut table, "bob", Action::Call);
    act(&mut table, "carol", Action::Call);
    // Alice and bob check it down.
    while table.hand_in_progress() {
        let next = to_act(&table);
        act(&mut table, &next, Action::Check);
    }
    let result = table.last_result().unwrap();
    assert_eq!(result.pots.len(), 2);
    assert_eq!(result.pots[0].amount, 300);
    assert_eq!(result.pots[0].winners[0].player, "carol");
    assert_eq!(result.pots[1].amount, 400);
    assert_eq!(
        result.pots[1].eligible,
        ["bob", "alice"],
        "listed from left of the button"
    );
    assert_eq!(result.pots[1].winners[0].player, "bob");
    assert_eq!(table.chips_of("carol"), Some(300));
    assert_eq!(table.chips_of("bob"), Some(1100));
    assert_eq!(table.chips_of("alice"), Some(700));
}

#[test]
fn split_pot_gives_the_odd_chip_left_of_the_button() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    // The board is a royal flush, so every player's best hand is the board.
    start_rigged(
        &mut table,
        &[("bob", "2c 3c"), ("carol", "4d 5d"), ("alice", "6s 7s")],
        "Ah Kh Qh Jh Th",
    );
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Fold);
    act(&mut table, "carol", Action::Check);
    while table.hand_in_progress() {
        let next = to_act(&table);
        act(&mut table, &next, Action::Check);
    }
    let result = table.last_result().unwrap();
    assert_eq!(result.pots.len(), 1);
    let pot = &result.pots[0];
    assert_eq!(pot.amount, 25);
    assert_eq!(pot.category, Some(HandCategory::StraightFlush));
    // Carol sits closer to the left of the button (seat 0) than alice, so she gets the odd chip.
    let shares: Vec<(&str, u64)> = pot
        .winners
        .iter()
        .map(|winner| (winner.player.as_str(), winner.chips))
        .collect();
    assert_eq!(shares, [("carol", 13), ("alice", 12)]);
    assert_eq!(text(&pot.winners[0].best_cards), "Ah Kh Qh Jh Th");
    assert_eq!(table.chips_of("alice"), Some(1002));
    assert_eq!(table.chips_of("bob"), Some(995));
    assert_eq!(table.chips_of("carol"), Some(1003));
}

#[test]
fn kicker_decides_at_showdown() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    start_rigged(
        &mut table,
        &[("bob", "Qh 4d"), ("alice", "Kh 3d")],
        "Ac Ad 7h 8s 2c",
    );
    act(&mut table, "alice", Action::Call);
    while table.hand_in_progress() {
        let next = to_act(&table);
        act(&mut table, &next, Action::Check);
    }
    let result = table.last_result().unwrap();
    assert_eq!(result.pots[0].winners.len(), 1);
    assert_eq!(result.pots[0].winners[0].player, "alice");
    assert_eq!(
        text(&result.pots[0].winners[0].best_cards),
        "Ad Ac Kh 8s 7h"
    );
    // Both hands are shown, with their categories.
    let shown: Vec<(&str, HandCategory, String)> = result
        .showdown
        .iter()
        .map(|hand| (hand.player.as_str(), hand.category, text(&hand.hole_cards)))
        .collect();
    assert_eq!(
        shown,
        [
            ("bob", HandCategory::Pair, "Qh 4d".to_owned()),
            ("alice", HandCategory::Pair, "Kh 3d".to_owned())
        ]
    );
}

#[test]
fn all_in_preflop_runs_out_the_board() {
    let mut table = table_with(&[("alice", 1000), ("bob", 500)]);
    start_rigged(
        &mut table,
        &[("bob", "As Ad"), ("alice", "Kc Kd")],
        "2c 7d 9c 3h 4d",
    );
    act(&mut table, "alice", Action::Raise(1000));
    act(&mut table, "bob", Action::Call);
    assert!(!table.hand_in_progress());
    let result = table.last_result().unwrap();
    assert_eq!(result.ended_on, Street::Showdown);
    assert_eq!(result.board.len(), 5);
    assert_eq!(
        result.uncalled_bet,
        Some(ChipsMoved {
            player: "alice".into(),
            chips: 500
        })
    );
    assert_eq!(result.pots[0].amount, 1000);
    assert_eq!(table.chips_of("bob"), Some(1000));
    assert_eq!(table.chips_of("alice"), Some(500));
}

#[test]
fn all_in_on_a_later_street_runs_out_the_rest() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Check);
    act(&mut table, "bob", Action::Raise(990));
    act(&mut table, "alice", Action::Call);
    assert!(!table.hand_in_progress());
    let result = table.last_result().unwrap();
    assert_eq!(result.board.len(), 5);
    assert_eq!(result.pots.iter().map(|pot| pot.amount).sum::<u64>(), 2000);
    assert_eq!(table.total_chips(), 2000);
}

#[test]
fn blinds_that_put_everyone_all_in_play_the_hand_at_once() {
    let mut table = table_with(&[("alice", 1000), ("bob", 3)]);
    start_rigged(
        &mut table,
        &[("bob", "As Ad"), ("alice", "Kc Kd")],
        "2c 7d 9c 3h 4d",
    );
    // Bob's big blind of 3 is all-in; alice's small blind of 5 already covers it.
    assert!(!table.hand_in_progress());
    let result = table.last_result().unwrap();
    assert_eq!(result.ended_on, Street::Showdown);
    assert_eq!(
        result.uncalled_bet,
        Some(ChipsMoved {
            player: "alice".into(),
            chips: 2
        })
    );
    assert_eq!(result.pots[0].amount, 6);
    assert_eq!(table.chips_of("bob"), Some(6));
    assert_eq!(table.chips_of("alice"), Some(997));
}

#[test]
fn busted_player_sits_out_and_the_button_skips_them() {
    let mut table = table_with(&[("alice", 1000), ("bob", 20), ("carol", 1000)]);
    start_rigged(
        &mut table,
        &[("bob", "2c 3d"), ("carol", "As Ad"), ("alice", "Kc Kd")],
        "7s 8s Jc Qd 9h",
    );
    act(&mut table, "alice", Action::Fold);
    act(&mut table, "bob", Action::Raise(20));
    act(&mut table, "carol", Action::Call);
    assert!(!table.hand_in_progress());
    assert_eq!(table.chips_of("bob"), Some(0));
    assert_eq!(status(&table, "bob"), SeatStatus::SittingOut);

    // Bob (seat 1) is skipped: the button moves from seat 0 to carol at seat 2, heads-up.
    table.start_with_deck(ordered_deck()).unwrap();
    let view = table.view();
    assert_eq!(view.button, Some(2));
    assert_eq!(status(&table, "bob"), SeatStatus::SittingOut);
    assert!(seat(&table, "bob").hole_cards.is_empty());
    assert_eq!(
        seat(&table, "carol").bet,
        5,
        "heads-up the button posts the small blind"
    );
    assert_eq!(seat(&table, "alice").bet, 10);
}

#[test]
fn button_rotates_clockwise() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    for expected_button in [0, 1, 2, 0] {
        table.start_with_deck(ordered_deck()).unwrap();
        assert_eq!(table.view().button, Some(expected_button));
        while table.hand_in_progress() {
            let next = to_act(&table);
            act(&mut table, &next, Action::Fold);
        }
    }
    assert_eq!(table.hand_number(), 4);
    assert_eq!(table.total_chips(), 3000);
}
