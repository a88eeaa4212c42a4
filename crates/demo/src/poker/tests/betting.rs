//! Tests of blinds, the order of action, and the betting rules (min-raise, reopening, errors).

use super::*;
use crate::poker::Street;

#[test]
fn heads_up_button_posts_small_blind_and_acts_first_preflop_last_after() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    start_rigged(
        &mut table,
        &[("bob", "Kc Kd"), ("alice", "As Ad")],
        "2c 7d 9c 3h 4d",
    );
    let view = table.view();
    assert_eq!(view.hand, 1);
    assert_eq!(view.button, Some(0));
    assert_eq!(view.street, Street::Preflop);
    assert_eq!(
        seat(&table, "alice").bet,
        5,
        "the button posts the small blind"
    );
    assert_eq!(seat(&table, "bob").bet, 10);
    assert_eq!(view.current_bet, 10);
    assert_eq!(view.min_raise_to, 20);
    assert_eq!(view.pot, 15);
    assert_eq!(to_act(&table), "alice", "the button acts first preflop");

    act(&mut table, "alice", Action::Call);
    // The big blind has the option to raise even though the bets are matched.
    let options = table.legal_actions().unwrap();
    assert_eq!(options.player, "bob");
    assert!(options.can_check);
    assert_eq!(options.min_raise_to, Some(20));
    act(&mut table, "bob", Action::Check);

    for street in [Street::Flop, Street::Turn, Street::River] {
        assert_eq!(table.view().street, street);
        assert_eq!(
            to_act(&table),
            "bob",
            "the big blind acts first after the flop"
        );
        act(&mut table, "bob", Action::Check);
        assert_eq!(to_act(&table), "alice");
        act(&mut table, "alice", Action::Check);
    }
    let view = table.view();
    assert_eq!(view.street, Street::Waiting);
    assert_eq!(view.to_act, None);
    let result = view.last_result.unwrap();
    assert_eq!(result.ended_on, Street::Showdown);
    assert_eq!(result.pots[0].winners[0].player, "alice");
    assert_eq!(table.chips_of("alice"), Some(1010));
    assert_eq!(table.chips_of("bob"), Some(990));

    // The button moves to bob, who now posts the small blind and acts first.
    table.start_with_deck(ordered_deck()).unwrap();
    assert_eq!(table.view().button, Some(1));
    assert_eq!(seat(&table, "bob").bet, 5);
    assert_eq!(seat(&table, "alice").bet, 10);
    assert_eq!(to_act(&table), "bob");
}

#[test]
fn three_players_preflop_order_and_big_blind_option() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    start_rigged(
        &mut table,
        &[("bob", "2c 3c"), ("carol", "4d 5d"), ("alice", "6s 7s")],
        "",
    );
    assert_eq!(table.view().button, Some(0));
    assert_eq!(seat(&table, "bob").bet, 5, "small blind left of the button");
    assert_eq!(seat(&table, "carol").bet, 10, "big blind next");
    assert_eq!(
        to_act(&table),
        "alice",
        "first to act is left of the big blind"
    );

    act(&mut table, "alice", Action::Call);
    assert_eq!(to_act(&table), "bob");
    act(&mut table, "bob", Action::Call);
    // Everyone limped: the big blind still gets the option.
    assert_eq!(to_act(&table), "carol");
    let options = table.legal_actions().unwrap();
    assert!(options.can_check);
    assert_eq!(options.call_amount, 0);
    assert_eq!(options.min_raise_to, Some(20));
    assert_eq!(options.max_raise_to, Some(1000));
    act(&mut table, "carol", Action::Raise(40));

    // The raise reopens the action for everyone.
    assert_eq!(to_act(&table), "alice");
    let options = table.legal_actions().unwrap();
    assert_eq!(options.call_amount, 30);
    assert_eq!(options.min_raise_to, Some(70));
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Call);

    let view = table.view();
    assert_eq!(view.street, Street::Flop);
    assert_eq!(view.board.len(), 3);
    assert_eq!(view.pot, 120);
    assert_eq!(view.pots.len(), 1);
    assert_eq!(view.pots[0].amount, 120);
    assert_eq!(
        view.pots[0].eligible,
        ["bob", "carol", "alice"],
        "listed from left of the button"
    );
    assert_eq!(view.current_bet, 0);
    assert_eq!(
        view.min_raise_to, 10,
        "the smallest bet after the flop is the big blind"
    );
    assert_eq!(
        to_act(&table),
        "bob",
        "the small blind acts first after the flop"
    );
}

#[test]
fn big_blind_check_closes_preflop() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Call);
    act(&mut table, "carol", Action::Check);
    let view = table.view();
    assert_eq!(view.street, Street::Flop);
    assert_eq!(view.pot, 30);
    assert!(
        view.seats
            .iter()
            .all(|seat| seat.bet == 0 && seat.committed == 10)
    );
}

#[test]
fn min_raise_follows_the_last_full_raise() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();

    // Preflop the minimum raise is to twice the big blind.
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("alice", Action::Raise(15))
    });
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("alice", Action::Raise(10))
    });
    assert_eq!(
        table.act("alice", Action::Raise(19)),
        Err(TableError::RaiseTooSmall { min_raise_to: 20 })
    );
    act(&mut table, "alice", Action::Raise(20));

    // A raise of 10 lets the next raise be to 30; raising by 30 sets the next minimum to 80.
    assert_eq!(table.view().min_raise_to, 30);
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("bob", Action::Raise(25))
    });
    act(&mut table, "bob", Action::Raise(50));
    assert_eq!(table.view().min_raise_to, 80);
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("alice", Action::Raise(79))
    });
    assert_eq!(
        table.act("alice", Action::Raise(1001)),
        Err(TableError::InsufficientChips { max_raise_to: 1000 })
    );
    act(&mut table, "alice", Action::Call);

    // After the flop the smallest bet is the big blind, and a raise must at least double it.
    assert_eq!(to_act(&table), "bob");
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("bob", Action::Raise(5))
    });
    act(&mut table, "bob", Action::Raise(10));
    act(&mut table, "alice", Action::Raise(20));
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("bob", Action::Raise(29))
    });
    act(&mut table, "bob", Action::Raise(30));
    assert_eq!(seat(&table, "bob").bet, 30);
    assert_eq!(seat(&table, "bob").committed, 80);
}

#[test]
fn all_in_for_less_than_a_min_raise_is_allowed() {
    let mut table = table_with(&[("alice", 1000), ("bob", 25)]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "alice", Action::Raise(20));
    // Bob has 25 in total: the full minimum would be 30, so his only raise is all-in to 25.
    let options = table.legal_actions().unwrap();
    assert_eq!(options.min_raise_to, Some(25));
    assert_eq!(options.max_raise_to, Some(25));
    assert_refused(&mut table, "raise_too_small", |t| {
        t.act("bob", Action::Raise(24))
    });
    assert_refused(&mut table, "insufficient_chips", |t| {
        t.act("bob", Action::Raise(30))
    });
    act(&mut table, "bob", Action::Raise(25));
    assert_eq!(status(&table, "bob"), SeatStatus::AllIn);

    // Alice can only call or fold: nobody is left to respond to a raise.
    let options = table.legal_actions().unwrap();
    assert_eq!(options.player, "alice");
    assert_eq!(options.call_amount, 5);
    assert_eq!(options.min_raise_to, None);
    assert_refused(&mut table, "raise_not_allowed", |t| {
        t.act("alice", Action::Raise(100))
    });
    act(&mut table, "alice", Action::Call);
    assert!(
        !table.hand_in_progress(),
        "the board is run out once nobody can bet"
    );
    assert_eq!(table.total_chips(), 1025);
}

#[test]
fn short_all_in_does_not_reopen_betting() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 160)]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Call);
    act(&mut table, "carol", Action::Check);

    // Flop: bob bets 100, carol moves all-in for 150, which is less than a full raise.
    act(&mut table, "bob", Action::Raise(100));
    act(&mut table, "carol", Action::Raise(150));
    assert_eq!(status(&table, "carol"), SeatStatus::AllIn);
    let view = table.view();
    assert_eq!(view.current_bet, 150);
    assert_eq!(
        view.min_raise_to, 250,
        "the minimum raise is still 100 on top"
    );

    // Alice has not acted on this street yet, so she may raise.
    let options = table.legal_actions().unwrap();
    assert_eq!(options.player, "alice");
    assert_eq!(options.call_amount, 150);
    assert_eq!(options.min_raise_to, Some(250));
    act(&mut table, "alice", Action::Call);

    // Bob already acted on the full bet: he may only call or fold.
    let options = table.legal_actions().unwrap();
    assert_eq!(options.player, "bob");
    assert_eq!(options.call_amount, 50);
    assert_eq!(options.min_raise_to, None);
    assert_eq!(
        table.act("bob", Action::Raise(300)),
        Err(TableError::RaiseNotAllowed)
    );
    assert_refused(&mut table, "raise_not_allowed", |t| {
        t.act("bob", Action::Raise(250))
    });
    act(&mut table, "bob", Action::Call);

    let view = table.view();
    assert_eq!(view.street, Street::Turn);
    assert_eq!(view.pot, 480);
    assert_eq!(view.pots.len(), 1);
    assert_eq!(view.pots[0].amount, 480);
    assert_eq!(to_act(&table), "bob", "carol is all-in, so bob acts first");
}

#[test]
fn full_all_in_raise_reopens_betting() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000), ("carol", 260)]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Call);
    act(&mut table, "carol", Action::Check);

    act(&mut table, "bob", Action::Raise(100));
    // Carol's all-in to 250 raises by 150, a full raise.
    act(&mut table, "carol", Action::Raise(250));
    assert_eq!(table.view().min_raise_to, 400);
    act(&mut table, "alice", Action::Call);
    let options = table.legal_actions().unwrap();
    assert_eq!(options.player, "bob");
    assert_eq!(options.min_raise_to, Some(400));
    act(&mut table, "bob", Action::Raise(400));
    assert_eq!(to_act(&table), "alice");
}

#[test]
fn short_all_ins_that_add_up_to_a_full_raise_reopen_betting() {
    let mut table = table_with(&[
        ("alice", 1000),
        ("bob", 1000),
        ("carol", 160),
        ("dave", 220),
    ]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "dave", Action::Call);
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Call);
    act(&mut table, "carol", Action::Check);

    act(&mut table, "bob", Action::Raise(100));
    act(&mut table, "carol", Action::Raise(150)); // All-in, raising by 50.
    act(&mut table, "dave", Action::Raise(210)); // All-in, raising by 60.
    act(&mut table, "alice", Action::Call);
    // Bob acted at 100 and now faces 110 more, at least a full raise of 100.
    let options = table.legal_actions().unwrap();
    assert_eq!(options.player, "bob");
    assert_eq!(options.min_raise_to, Some(310));
}

#[test]
fn check_and_call_need_the_right_situation() {
    let mut table = table_with(&[("alice", 1000), ("bob", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    assert_eq!(
        table.act("alice", Action::Check),
        Err(TableError::CannotCheck { to_call: 5 })
    );
    assert_refused(&mut table, "cannot_check", |t| {
        t.act("alice", Action::Check)
    });
    act(&mut table, "alice", Action::Call);
    assert_refused(&mut table, "nothing_to_call", |t| {
        t.act("bob", Action::Call)
    });
    act(&mut table, "bob", Action::Check);
    assert_eq!(table.view().street, Street::Flop);
}

#[test]
fn action_skips_folded_and_all_in_players() {
    let mut table = table_with(&[
        ("alice", 1000),
        ("bob", 1000),
        ("carol", 1000),
        ("dave", 50),
    ]);
    table.start_with_deck(ordered_deck()).unwrap();
    assert_eq!(to_act(&table), "dave");
    act(&mut table, "dave", Action::Raise(50));
    assert_eq!(status(&table, "dave"), SeatStatus::AllIn);
    act(&mut table, "alice", Action::Fold);
    act(&mut table, "bob", Action::Call);
    act(&mut table, "carol", Action::Call);

    assert_eq!(table.view().street, Street::Flop);
    assert_eq!(to_act(&table), "bob");
    act(&mut table, "bob", Action::Check);
    assert_eq!(to_act(&table), "carol", "dave is all-in and alice folded");
    act(&mut table, "carol", Action::Check);
    assert_eq!(table.view().street, Street::Turn);
    assert_eq!(to_act(&table), "bob");
    assert_refused(&mut table, "not_your_turn", |t| {
        t.act("alice", Action::Check)
    });
    assert_refused(&mut table, "not_your_turn", |t| {
        t.act("dave", Action::Check)
    });
}

#[test]
fn raising_is_refused_when_every_opponent_is_all_in() {
    let mut table = table_with(&[("alice", 1000), ("bob", 100)]);
    table.start_with_deck(ordered_deck()).unwrap();
    act(&mut table, "alice", Action::Call);
    act(&mut table, "bob", Action::Raise(100));
    assert_eq!(status(&table, "bob"), SeatStatus::AllIn);
    assert_eq!(table.legal_actions().unwrap().min_raise_to, None);
    assert_refused(&mut table, "raise_not_allowed", |t| {
        t.act("alice", Action::Raise(300))
    });
    act(&mut table, "alice", Action::Call);
    assert!(!table.hand_in_progress());
    assert_eq!(table.last_result().unwrap().board.len(), 5);
}

#[test]
fn short_small_blind_posts_what_it_has() {
    let mut table = table_with(&[("alice", 1000), ("bob", 3), ("carol", 1000)]);
    table.start_with_deck(ordered_deck()).unwrap();
    assert_eq!(seat(&table, "bob").bet, 3);
    assert_eq!(status(&table, "bob"), SeatStatus::AllIn);
    assert_eq!(to_act(&table), "alice");
    assert_eq!(table.legal_actions().unwrap().call_amount, 10);
    act(&mut table, "alice", Action::Call);
    // Bob is all-in, so the big blind is next.
    assert_eq!(to_act(&table), "carol");
}
