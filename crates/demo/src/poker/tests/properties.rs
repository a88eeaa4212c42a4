//! Property tests: long random sequences of legal and illegal operations never panic, never
//! change the table when refused, keep every invariant and conserve chips exactly.

use std::collections::HashSet;

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::*;
use crate::poker::{LegalActions, Street, uniform_below};

const NAMES: [&str; 7] = ["ann", "ben", "cat", "dan", "eve", "fay", "gus"];

/// One step of a random session.
#[derive(Debug, Clone)]
enum Op {
    /// Start a hand with this seed.
    Start(u64),
    /// Let the player to act make a legal move picked by `choice` and `fraction` (or start a hand).
    Legal { choice: u8, fraction: u16 },
    /// Any player tries any action, legal or not.
    Act { player: usize, action: Action },
    /// A player (seated or not) leaves.
    Leave(usize),
    /// A player (seated or not) joins with any amount, zero included.
    Join { player: usize, chips: u64 },
}

fn any_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Fold),
        Just(Action::Check),
        Just(Action::Call),
        (0u64..2500).prop_map(Action::Raise),
        any::<u64>().prop_map(Action::Raise),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<u64>().prop_map(Op::Start),
        12 => (any::<u8>(), any::<u16>()).prop_map(|(choice, fraction)| Op::Legal { choice, fraction }),
        4 => (0..NAMES.len(), any_action()).prop_map(|(player, action)| Op::Act { player, action }),
        1 => (0..NAMES.len()).prop_map(Op::Leave),
        1 => (0..NAMES.len(), 0u64..1500).prop_map(|(player, chips)| Op::Join { player, chips }),
    ]
}

/// Picks a legal action for the player to act from two random numbers.
fn pick_legal(options: &LegalActions, choice: u8, fraction: u16) -> Action {
    let check_or_call = if options.can_check {
        Action::Check
    } else {
        Action::Call
    };
    let raise = options.min_raise_to.zip(options.max_raise_to);
    match (choice % 8, raise) {
        // Folding is rare so that hands reach showdowns.
        (0, _) if !options.can_check => Action::Fold,
        (1, Some((min, _))) => Action::Raise(min),
        (2, Some((min, max))) => {
            let step = u128::from(max - min) * u128::from(fraction) / u128::from(u16::MAX);
            Action::Raise(min + u64::try_from(step).unwrap_or(0))
        }
        (3, Some((_, max))) if fraction.is_multiple_of(4) => Action::Raise(max),
        _ => check_or_call,
    }
}

/// Tracks the chips that entered and left the table, to check conservation.
#[derive(Debug, Default)]
struct Bank {
    /// Chips brought in by joins, minus chips cashed out by leaves and departures.
    expected: u64,
    /// The hand number of the last result already accounted for.
    last_result_seen: u64,
}

impl Bank {
    /// Accounts for players removed at the end of a hand that finished since the last call.
    fn settle_departures(&mut self, table: &Table) {
        if let Some(result) = table.last_result()
            && result.hand != self.last_result_seen
        {
            self.last_result_seen = result.hand;
            let departed: u64 = result.departed.iter().map(|moved| moved.chips).sum();
            self.expected -= departed;
        }
    }
}

/// Applies one operation, checking that refusals change nothing.
fn apply(table: &mut Table, bank: &mut Bank, op: &Op) {
    let before = table.clone();
    let refused = match op {
        Op::Start(seed) => table
            .start_hand(&mut ChaCha8Rng::seed_from_u64(*seed))
            .is_err(),
        Op::Legal { choice, fraction } => match table.legal_actions() {
            Some(options) => {
                let action = pick_legal(&options, *choice, *fraction);
                if let Err(error) = table.act(&options.player, action) {
                    panic!("legal {action:?} refused: {error:?} with {options:?}");
                }
                false
            }
            None => table
                .start_hand(&mut ChaCha8Rng::seed_from_u64(u64::from(*fraction)))
                .is_err(),
        },
        Op::Act { player, action } => table.act(NAMES[*player], *action).is_err(),
        Op::Leave(player) => match table.leave(NAMES[*player]) {
            Ok(chips) => {
                bank.expected -= chips;
                false
            }
            Err(_) => true,
        },
        Op::Join { player, chips } => match table.join(NAMES[*player], *chips) {
            Ok(()) => {
                bank.expected += chips;
                false
            }
            Err(_) => true,
        },
    };
    if refused {
        assert_eq!(*table, before, "refused {op:?} changed the table");
    }
    bank.settle_departures(table);
    assert_eq!(
        table.total_chips(),
        bank.expected,
        "chips not conserved after {op:?}"
    );
    check_invariants(table);
}

/// Checks everything that must hold between any two operations.
fn check_invariants(table: &Table) {
    let view = table.view();
    let committed: u64 = view.seats.iter().map(|seat| seat.committed).sum();
    let bets: u64 = view.seats.iter().map(|seat| seat.bet).sum();
    let pots: u64 = view.pots.iter().map(|pot| pot.amount).sum();
    assert_eq!(view.pot, committed);
    assert_eq!(
        pots + bets,
        view.pot,
        "pots plus bets must be the whole pot"
    );
    assert!(view.seats.len() <= 9);
    let names: HashSet<&str> = view.seats.iter().map(|seat| seat.player.as_str()).collect();
    assert_eq!(names.len(), view.seats.len(), "names are unique");

    if !table.hand_in_progress() {
        assert_eq!(view.street, Street::Waiting);
        assert_eq!(view.to_act, None);
        assert_eq!(view.pot, 0);
        for seat in &view.seats {
            let expected = if seat.chips > 0 {
                SeatStatus::Waiting
            } else {
                SeatStatus::SittingOut
            };
            assert_eq!(seat.status, expected);
            assert!(seat.hole_cards.is_empty() && !seat.leaving);
        }
        if let Some(result) = &view.last_result {
            assert!(result.pots.iter().all(|pot| !pot.winners.is_empty()));
            let won: u64 = result
                .pots
                .iter()
                .flat_map(|pot| &pot.winners)
                .map(|w| w.chips)
                .sum();
            let total: u64 = result.pots.iter().map(|pot| pot.amount).sum();
            assert_eq!(won, total, "every pot is fully paid out");
            if result.ended_on == Street::Showdown {
                assert_eq!(result.board.len(), 5);
            }
        }
        return;
    }

    let board_size = match view.street {
        Street::Preflop => 0,
        Street::Flop => 3,
        Street::Turn => 4,
        Street::River => 5,
        other => panic!("unexpected street {other:?} during a hand"),
    };
    assert_eq!(view.board.len(), board_size);
    let to_act = view
        .to_act
        .as_deref()
        .expect("someone is to act during a hand");
    let actor = view
        .seats
        .iter()
        .find(|seat| seat.player == to_act)
        .expect("actor is seated");
    assert_eq!(actor.status, SeatStatus::Active);
    let options = view
        .legal_actions
        .as_ref()
        .expect("legal actions during a hand");
    assert_eq!(options.player, to_act);
    if let (Some(min), Some(max)) = (options.min_raise_to, options.max_raise_to) {
        assert!(view.current_bet < min && min <= max);
        assert_eq!(max, actor.bet + actor.chips);
    }

    let mut seen: HashSet<Card> = view.board.iter().copied().collect();
    assert_eq!(seen.len(), view.board.len());
    let mut contenders = 0;
    for seat in &view.seats {
        assert!(seat.bet <= seat.committed);
        match seat.status {
            SeatStatus::Active | SeatStatus::AllIn | SeatStatus::Folded => {
                assert_eq!(seat.hole_cards.len(), 2);
                for card in &seat.hole_cards {
                    assert!(seen.insert(*card), "card {card} dealt twice");
                }
                if seat.status == SeatStatus::AllIn {
                    assert_eq!(seat.chips, 0);
                } else {
                    assert!(seat.status == SeatStatus::Folded || seat.chips > 0);
                }
                if seat.status != SeatStatus::Folded {
                    contenders += 1;
                }
            }
            SeatStatus::Waiting | SeatStatus::SittingOut => {
                assert!(seat.hole_cards.is_empty());
                assert_eq!(seat.committed, 0);
            }
        }
    }
    assert!(
        contenders >= 2,
        "a hand with one contender should have ended"
    );
}

/// Seats the starting players and returns the bank that tracks their chips.
fn seat_players(table: &mut Table, stacks: &[u64]) -> Bank {
    let mut bank = Bank::default();
    for (name, &chips) in NAMES.iter().zip(stacks) {
        table.join(name, chips).expect("join");
        bank.expected += chips;
    }
    bank
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_sessions_conserve_chips_and_never_panic(
        stacks in proptest::collection::vec(1u64..2000, 2..=6),
        big_blind in 1u64..50,
        ops in proptest::collection::vec(any_op(), 1..400),
    ) {
        let mut table = Table::with_blinds(big_blind / 2, big_blind);
        let mut bank = seat_players(&mut table, &stacks);
        for op in &ops {
            apply(&mut table, &mut bank, op);
            // Every state must survive being stored and loaded.
            let restored: Table = serde_json::from_str(&serde_json::to_string(&table).unwrap()).unwrap();
            prop_assert_eq!(&restored, &table);
        }
    }
}

/// Plays many complete hands with random legal decisions, topping up busted players.
#[test]
fn many_random_hands_keep_every_invariant() {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let mut table = Table::with_blinds(5, 10);
    let mut bank = seat_players(&mut table, &[500, 800, 1000, 300, 1500, 50]);
    let mut showdowns = 0;
    let mut split_pots = 0;
    let mut side_pots = 0;
    for round in 0..1500u64 {
        let hands_before = table.hand_number();
        apply(&mut table, &mut bank, &Op::Start(round));
        if table.hand_number() > hands_before {
            let mut steps = 0;
            while table.hand_in_progress() {
                let choice = u8::try_from(uniform_below(&mut rng, 256)).unwrap_or(0);
                let fraction = u16::try_from(uniform_below(&mut rng, 65_536)).unwrap_or(0);
                apply(&mut table, &mut bank, &Op::Legal { choice, fraction });
                steps += 1;
                assert!(steps < 500, "a hand must finish");
            }
            let result = table.last_result().unwrap();
            showdowns += usize::from(result.ended_on == Street::Showdown);
            split_pots += result
                .pots
                .iter()
                .filter(|pot| pot.winners.len() > 1)
                .count();
            side_pots += usize::from(result.pots.len() > 1);
        }
        // Busted players leave, and absent players sometimes come back with a fresh stack.
        for (player, name) in NAMES.iter().enumerate() {
            if table.chips_of(name) == Some(0) {
                apply(&mut table, &mut bank, &Op::Leave(player));
            }
            if table.chips_of(name).is_none() && rng.next_u32().is_multiple_of(3) {
                let chips = 100 + uniform_below(&mut rng, 1000);
                apply(&mut table, &mut bank, &Op::Join { player, chips });
            }
        }
    }
    // The random play really exercised the interesting paths.
    assert!(showdowns > 100, "{showdowns} showdowns");
    assert!(split_pots > 0, "no split pot seen");
    assert!(side_pots > 10, "{side_pots} hands with side pots");
}
