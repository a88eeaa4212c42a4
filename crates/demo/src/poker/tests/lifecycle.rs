//! Tests of seating, leaving, refused operations, serde shapes and deterministic dealing.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::*;
use crate::poker::{ChipsMoved, MAX_SEATS, Street, TableView};

#[test]
fn default_table_is_empty_with_blinds_5_10_and_nine_seats() {
    let table = Table::default();
    assert_eq!(table.small_blind(), 5);
    assert_eq!(table.big_blind(), 10);
    assert_eq!(table, Table::with_blinds(5, 10));
    let view = table.view();
    assert_eq!(view.hand, 0);
    assert_eq!(view.street, Street::Waiting);
    assert_eq!(view.button, None);
    assert!(view.seats.is_empty());
    assert_eq!(view.to_act, None);
    assert_eq!(view.legal_actions, None);
    assert_eq!(view.last_result, None);
    let mut table = table;
    for index in 0..MAX_SEATS {
        table.join(&format!("p{index}"), 100).unwrap();
    }
    assert_refused(&mut table, "table_full", |t| t.join("late", 100));
}

#[test]
fn blinds_are_validated_or_normalized() {
    assert_eq!(
        Table::try_with_blinds(10, 5),
        Err(TableError::InvalidBlinds)
    );
    assert_eq!(Table::try_with_blinds(0, 0), Err(TableError::InvalidBlinds));
    assert_eq!(Table::try_with_blinds(1, 2), Ok(Table::with_blinds(1, 2)));
    let normalized = Table::with_blinds(10, 0);
    assert_eq!((normalized.small_blind(), normalized.big_blind()), (1, 1));
}

#[test]
fn join_validates_names_chips_and_seats() {
    let mut table = table_with(&[("alice", 1000)]);
    assert_refused(&mut table, "invalid_name", |t| t.join("", 100));
    assert_refused(&mut table, "invalid_name", |t| t.join(&"x".repeat(65), 100));
    assert_refused(&mut table, "invalid_name", |t| t.join("line\nbreak", 100));
    assert_refused(&mut table, "invalid_chips", |t| t.join("bob", 0));
    assert_refused(&mut table, "invalid_chips", |t| t.join("bob", u64::MAX));
    assert_refused(&mut table, "already_seated", |t| t.join("alice", 100));
    // Exactly 64 characters (not bytes) is fine.
    let long_name = "é".repeat(64);
    table.join(&long_name, 100).unwrap();
    assert_eq!(seat(&table, &long_name).seat, 1);
}

#[test]
fn join_takes_the_lowest_free_seat() {
    let mut table = table_with(&[("alice", 100), ("bob", 100), ("carol", 100)]);
    assert_eq!(table.leave("bob"), Ok(100));
    table.join("dave", 50).unwrap();
    assert_eq!(seat(&table, "dave").seat, 1);
    table.join("erin", 50).unwrap();
    assert_eq!(seat(&table, "erin").seat, 3);
}

#[test]
fn joining_during_a_hand_waits_for_the_next_one() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    table.join("carol", 500).unwrap();
    assert_eq!(status(&table, "carol"), SeatStatus::Waiting);
    assert!(seat(&table, "carol").hole_cards.is_empty());
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Check);
    assert_ne!(to_act(&table), "carol");
    while table.hand_in_progress() {
        let next = to_act(&table);
        act(&mut table, &next, Action::Check);
    }
    table.start_with_deck(ordered_deck()).unwrap();
    assert_eq!(status(&table, "carol"), SeatStatus::Active);
    assert_eq!(seat(&table, "carol").hole_cards.len(), 2);
}

#[test]
fn start_hand_needs_two_players_with_chips_and_no_hand_running() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut table = Table::default();
    assert_refused(&mut table, "not_enough_players", |t| t.start_hand(&mut rng));
    table.join("alice", 100).unwrap();
    assert_refused(&mut table, "not_enough_players", |t| t.start_hand(&mut rng));
    table.join("bob", 100).unwrap();
    table.start_hand(&mut rng).unwrap();
    assert_refused(&mut table, "hand_in_progress", |t| t.start_hand(&mut rng));
}

#[test]
fn refused_start_does_not_consume_randomness() {
    let mut table = table_with(&[("alice", 100)]);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut untouched = rng.clone();
    assert!(table.start_hand(&mut rng).is_err());
    assert_eq!(rng.next_u64(), untouched.next_u64());
}

#[test]
fn leave_between_hands_cashes_out() {
    let mut table = table_with(&[("alice", 1000), ("bob", 700)]);
    assert_refused(&mut table, "unknown_player", |t| t.leave("nobody"));
    assert_eq!(table.leave("bob"), Ok(700));
    assert_eq!(table.view().seats.len(), 1);
    assert_eq!(table.chips_of("bob"), None);
}

#[test]
fn leave_on_your_turn_folds_and_passes_the_action() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    assert_eq!(to_act(&table), "alice");
    assert_eq!(table.leave("alice"), Ok(0));
    assert_eq!(status(&table, "alice"), SeatStatus::Folded);
    assert!(seat(&table, "alice").leaving);
    assert_eq!(to_act(&table), "bob");
    // Asking again changes nothing.
    let before = table.clone();
    assert_eq!(table.leave("alice"), Ok(0));
    assert_eq!(table, before);

    act(&mut table, "bob", Action::Call);
    act(&mut table, "carol", Action::Check);
    act(&mut table, "bob", Action::Fold);
    assert!(!table.hand_in_progress());
    let result = table.last_result().unwrap();
    assert_eq!(
        result.departed,
        [ChipsMoved {
            player: "alice".into(),
            chips: 1000
        }]
    );
    assert_eq!(table.chips_of("alice"), None);
    assert_eq!(table.view().seats.len(), 2);
    assert_eq!(table.chips_of("carol"), Some(1010));
}

#[test]
fn leave_out_of_turn_keeps_the_action_where_it_was() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    assert_eq!(table.leave("bob"), Ok(0));
    assert_eq!(status(&table, "bob"), SeatStatus::Folded);
    assert_eq!(to_act(&table), "alice");
    act(&mut table, "alice", Action::Call);
    // Bob's small blind stays in the pot; carol closes the action with her option.
    assert_eq!(to_act(&table), "carol");
    act(&mut table, "carol", Action::Check);
    assert_eq!(table.view().street, Street::Flop);
    assert_eq!(table.view().pot, 25);
    assert_eq!(to_act(&table), "carol");
}

#[test]
fn leave_that_leaves_one_player_ends_the_hand() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    assert_eq!(to_act(&table), "alice");
    assert_eq!(table.leave("bob"), Ok(0));
    assert!(!table.hand_in_progress());
    let result = table.last_result().unwrap();
    assert_eq!(result.pots[0].winners[0].player, "alice");
    assert_eq!(
        result.departed,
        [ChipsMoved {
            player: "bob".into(),
            chips: 990
        }]
    );
    assert_eq!(table.chips_of("alice"), Some(1010));
    assert_eq!(table.view().seats.len(), 1);
}

#[test]
fn leaving_all_in_player_keeps_their_hand_and_leaves_with_winnings() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 50)]);
    start_rigged(
        &mut table,
        &[("bob", "Ks Kh"), ("carol", "As Ah"), ("alice", "Qs Qh")],
        "2c 7d 9c 3h 4d",
    );
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Call);
    act(&mut table, "carol", Action::Raise(50));
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Call);
    assert_eq!(table.view().street, Street::Flop);

    assert_eq!(table.leave("carol"), Ok(0));
    assert_eq!(
        status(&table, "carol"),
        SeatStatus::AllIn,
        "an all-in hand still plays out"
    );
    while table.hand_in_progress() {
        let next = to_act(&table);
        act(&mut table, &next, Action::Check);
    }
    let result = table.last_result().unwrap();
    assert_eq!(result.pots[0].winners[0].player, "carol");
    assert_eq!(
        result.departed,
        [ChipsMoved {
            player: "carol".into(),
            chips: 150
        }]
    );
    assert_eq!(table.total_chips(), 1900);
}

#[test]
fn leave_of_a_player_waiting_for_the_next_hand_cashes_out_at_once() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    table.join("carol", 300).unwrap();
    assert_eq!(table.leave("carol"), Ok(300));
    assert!(table.hand_in_progress());
}

#[test]
fn refused_actions_leave_the_table_unchanged() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    assert_refused(&mut table, "no_hand_in_progress", |t| {
        t.act("alice", Action::Check)
    });
    table.start_with_deck(ordered_deck()).unwrap();
    assert_refused(&mut table, "unknown_player", |t| t.act("zed", Action::Fold));
    assert_refused(&mut table, "not_your_turn", |t| t.act("bob", Action::Fold));
    assert_refused(&mut table, "cannot_check", |t| {
        t.act("alice", Action::Check)
    });
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("alice", Action::Raise(0))
    });
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("alice", Action::Raise(19))
    });
    assert_refused(&mut table, "insufficient_chips", |t| {
        t.act("alice", Action::Raise(u64::MAX))
    });
    assert_refused(&mut table, "already_seated", |t| t.join("carol", 5));
    assert_refused(&mut table, "hand_in_progress", |t| {
        t.start_with_deck(ordered_deck())
    });
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Call);
    assert_refused(&mut table, "nothing_to_call", |t| {
        t.act("carol", Action::Call)
    });
}

#[test]
fn table_round_trips_through_json_mid_hand() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    table
        .start_hand(&mut ChaCha8Rng::seed_from_u64(11))
        .unwrap();
    act(&mut table, "alice", Action::Raise(30));
    table.join("dave", 400).unwrap();
    let json = serde_json::to_string(&table).unwrap();
    let mut restored: Table = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, table);

    // The stored JSON is readable: named fields, cards as strings.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["small_blind"], 5);
    assert_eq!(value["seats"][0]["player"], "alice");
    assert_eq!(value["seats"][0]["status"], "active");
    assert_eq!(value["seats"][3]["status"], "waiting");
    assert!(value["seats"][4].is_null());
    assert_eq!(value["current_hand"]["street"], "preflop");
    assert_eq!(
        value["current_hand"]["deck"].as_array().unwrap().len(),
        52 - 6
    );
    assert_eq!(
        value["seats"][1]["hole_cards"][0].as_str().unwrap().len(),
        2
    );

    // Both copies keep playing identically.
    for copy in [&mut table, &mut restored] {
        act(copy, "bob", Action::Call);
        act(copy, "carol", Action::Fold);
        act(copy, "bob", Action::Check);
        act(copy, "alice", Action::Raise(60));
        act(copy, "bob", Action::Fold);
    }
    assert_eq!(restored, table);
    let after: Table = serde_json::from_str(&serde_json::to_string(&table).unwrap()).unwrap();
    assert_eq!(after, table);
}

#[test]
fn action_json_shape() {
    let cases = [
        (Action::Fold, r#""fold""#),
        (Action::Check, r#""check""#),
        (Action::Call, r#""call""#),
        (Action::Raise(40), r#"{"raise":40}"#),
    ];
    for (action, json) in cases {
        assert_eq!(serde_json::to_string(&action).unwrap(), json);
        assert_eq!(serde_json::from_str::<Action>(json).unwrap(), action);
    }
    assert!(serde_json::from_str::<Action>(r#""bet""#).is_err());
    assert!(serde_json::from_str::<Action>(r#"{"raise":-1}"#).is_err());
}

#[test]
fn view_json_shape() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    table.start_hand(&mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    act(&mut table, "alice", Action::Call);
    let view = table.view();
    let value = serde_json::to_value(&view).unwrap();
    for key in [
        "hand",
        "street",
        "button",
        "small_blind",
        "big_blind",
        "seats",
        "board",
        "pot",
        "pots",
        "to_act",
        "current_bet",
        "min_raise_to",
        "legal_actions",
        "last_result",
    ] {
        assert!(value.get(key).is_some(), "missing {key}");
    }
    assert_eq!(value["street"], "preflop");
    assert_eq!(value["to_act"], "bob");
    assert_eq!(value["hand"], 1);
    let seat = &value["seats"][0];
    for key in [
        "seat",
        "player",
        "chips",
        "bet",
        "committed",
        "status",
        "hole_cards",
        "leaving",
    ] {
        assert!(seat.get(key).is_some(), "missing seat {key}");
    }
    let cards = seat["hole_cards"].as_array().unwrap();
    assert_eq!(cards.len(), 2);
    assert!(
        cards
            .iter()
            .all(|card| card.as_str().is_some_and(|text| text.len() == 2))
    );
    let restored: TableView = serde_json::from_value(value).unwrap();
    assert_eq!(restored, view);
}

#[test]
fn result_json_shape() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    start_rigged(
        &mut table,
        &[("bob", "Kc Kd"), ("alice", "As Ad")],
        "Ah 7d 7c 3h 4d",
    );
    act(&mut table, "alice", Action::Call);
    while table.hand_in_progress() {
        let next = to_act(&table);
        act(&mut table, &next, Action::Check);
    }
    let value = serde_json::to_value(table.view()).unwrap();
    let result = &value["last_result"];
    assert_eq!(result["ended_on"], "showdown");
    assert_eq!(result["pots"][0]["amount"], 20);
    assert_eq!(result["pots"][0]["category"], "full_house");
    assert_eq!(result["pots"][0]["winners"][0]["player"], "alice");
    assert_eq!(
        result["pots"][0]["winners"][0]["best_cards"],
        serde_json::json!(["As", "Ah", "Ad", "7d", "7c"])
    );
    assert_eq!(result["showdown"][0]["category"], "two_pair");
    assert_eq!(value["street"], "waiting");
}

#[test]
fn same_seed_deals_the_same_cards() {
    let deal = |seed: u64| {
        let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        table.start_hand(&mut rng).unwrap();
        while table.hand_in_progress() {
            let next = to_act(&table);
            let options = table.legal_actions().unwrap();
            let action = if options.can_check {
                Action::Check
            } else {
                Action::Call
            };
            act(&mut table, &next, action);
        }
        table
    };
    assert_eq!(deal(42), deal(42));
    assert_ne!(deal(42).last_result(), deal(43).last_result());
}

#[test]
fn view_for_hides_other_players_hole_cards() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    table.start_hand(&mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let view = table.view_for("alice");
    let alice = view
        .seats
        .iter()
        .find(|seat| seat.player == "alice")
        .unwrap();
    let bob = view.seats.iter().find(|seat| seat.player == "bob").unwrap();
    assert_eq!(alice.hole_cards.len(), 2);
    assert!(bob.hole_cards.is_empty());
    assert_eq!(view.seats.len(), 2);
    let spectator = table.view_for("someone else");
    assert!(
        spectator
            .seats
            .iter()
            .all(|seat| seat.hole_cards.is_empty())
    );
}
