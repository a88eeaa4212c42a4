//! Hand ranking: the category and strength of the best five-card hand out of seven cards.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::cards::{Card, Rank};

/// The category of a five-card poker hand, weakest first.
///
/// A royal flush is simply the highest [`HandCategory::StraightFlush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandCategory {
    /// No pair: five unrelated cards.
    HighCard,
    /// One pair.
    Pair,
    /// Two pairs.
    TwoPair,
    /// Three cards of one rank.
    ThreeOfAKind,
    /// Five consecutive ranks (the wheel A-2-3-4-5 is the lowest).
    Straight,
    /// Five cards of one suit.
    Flush,
    /// Three of a kind plus a pair.
    FullHouse,
    /// Four cards of one rank.
    FourOfAKind,
    /// A straight whose cards all share one suit.
    StraightFlush,
}

/// The strength of a five-card hand; larger values are better hands and equal values tie.
///
/// Ordering compares the category first, then the tie-break ranks in order of significance
/// (for example trips then pair for a full house, or all five ranks for a flush).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandValue {
    category: HandCategory,
    /// Tie-break ranks from most to least significant, padded with zeros.
    tiebreak: [u8; 5],
}

impl HandValue {
    /// The hand's category.
    pub fn category(&self) -> HandCategory {
        self.category
    }
}

/// The best five-card hand found among some cards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestHand {
    /// The hand's strength, for comparisons.
    pub value: HandValue,
    /// The five cards making the hand, most significant first (the wheel lists its ace last).
    pub cards: [Card; 5],
}

/// Evaluates exactly five cards.
pub fn evaluate_five(cards: [Card; 5]) -> BestHand {
    // How many cards share each rank value (indices 2 to 14 are used).
    let mut rank_counts = [0usize; 15];
    for card in cards {
        rank_counts[usize::from(card.rank().value())] += 1;
    }
    let count_of = |rank: Rank| rank_counts[usize::from(rank.value())];
    let distinct_ranks = rank_counts.iter().filter(|&&count| count > 0).count();

    // Group the cards by rank: bigger groups first, then higher ranks first.
    let mut ordered = cards;
    ordered.sort_by(|a, b| {
        count_of(b.rank())
            .cmp(&count_of(a.rank()))
            .then(b.rank().cmp(&a.rank()))
            .then(b.suit().cmp(&a.suit()))
    });

    let is_flush = cards.iter().all(|card| card.suit() == cards[0].suit());
    let highest = ordered[0].rank();
    let lowest = ordered[4].rank();
    let is_wheel = distinct_ranks == 5 && highest == Rank::ACE && ordered[1].rank() == Rank::FIVE;
    let is_straight = distinct_ranks == 5 && (highest.value() - lowest.value() == 4 || is_wheel);

    if is_straight {
        // In the wheel the ace plays low: show it last and rank the straight by its five.
        let top = if is_wheel {
            ordered.rotate_left(1);
            Rank::FIVE
        } else {
            highest
        };
        let category = if is_flush {
            HandCategory::StraightFlush
        } else {
            HandCategory::Straight
        };
        let value = HandValue {
            category,
            tiebreak: [top.value(), 0, 0, 0, 0],
        };
        return BestHand {
            value,
            cards: ordered,
        };
    }

    let first_group = count_of(ordered[0].rank());
    // `get` keeps even a nonsensical input (five copies of one card) from panicking.
    let second_group = ordered
        .get(first_group)
        .map_or(0, |card| count_of(card.rank()));
    let category = match (first_group, second_group) {
        (4.., _) => HandCategory::FourOfAKind,
        (3, 2) => HandCategory::FullHouse,
        _ if is_flush => HandCategory::Flush,
        (3, _) => HandCategory::ThreeOfAKind,
        (2, 2) => HandCategory::TwoPair,
        (2, _) => HandCategory::Pair,
        _ => HandCategory::HighCard,
    };
    // The distinct ranks in group order are exactly the tie-breaks, e.g. [pair, kicker, kicker, kicker].
    let mut tiebreak = [0u8; 5];
    let mut filled = 0;
    for card in ordered {
        let rank = card.rank().value();
        if filled == 0 || tiebreak[filled - 1] != rank {
            tiebreak[filled] = rank;
            filled += 1;
        }
    }
    BestHand {
        value: HandValue { category, tiebreak },
        cards: ordered,
    }
}

/// Finds the best five-card hand among five to seven cards by trying every five-card subset.
///
/// Returns `None` if fewer than five cards are given. With more than seven cards only the
/// first seven are considered (hold'em never has more).
pub fn best_hand(cards: &[Card]) -> Option<BestHand> {
    let cards = &cards[..cards.len().min(7)];
    let left_out = cards.len().checked_sub(5)?;
    let mut best: Option<BestHand> = None;
    // Choose which cards to leave out: every subset of exactly `left_out` positions.
    for skip_mask in 0u32..(1 << cards.len()) {
        if skip_mask.count_ones() as usize != left_out {
            continue;
        }
        let mut five = Vec::with_capacity(5);
        for (index, card) in cards.iter().enumerate() {
            if skip_mask & (1 << index) == 0 {
                five.push(*card);
            }
        }
        let Ok(five) = <[Card; 5]>::try_from(five) else {
            continue;
        };
        let candidate = evaluate_five(five);
        let better = match &best {
            None => true,
            Some(current) => candidate.value.cmp(&current.value) == Ordering::Greater,
        };
        if better {
            best = Some(candidate);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cards(text: &str) -> Vec<Card> {
        text.split_whitespace()
            .map(|card| card.parse().unwrap())
            .collect()
    }

    fn best(text: &str) -> BestHand {
        best_hand(&cards(text)).unwrap()
    }

    fn shown(hand: &BestHand) -> String {
        hand.cards
            .iter()
            .map(Card::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn recognizes_every_category() {
        let cases = [
            ("2c 5d 9h Js Kc 3d 7h", HandCategory::HighCard),
            ("2c 2d 9h Js Kc 3d 7h", HandCategory::Pair),
            ("2c 2d 9h 9s Kc 3d 7h", HandCategory::TwoPair),
            ("2c 2d 2h 9s Kc 3d 7h", HandCategory::ThreeOfAKind),
            ("4c 5d 6h 7s 8c Kd 2h", HandCategory::Straight),
            ("2h 5h 9h Jh Kh 3d 7c", HandCategory::Flush),
            ("2c 2d 2h 9s 9c 3d 7h", HandCategory::FullHouse),
            ("2c 2d 2h 2s Kc 3d 7h", HandCategory::FourOfAKind),
            ("4h 5h 6h 7h 8h Kd 2c", HandCategory::StraightFlush),
            ("Th Jh Qh Kh Ah 2d 3c", HandCategory::StraightFlush),
        ];
        for (text, category) in cases {
            assert_eq!(best(text).value.category(), category, "{text}");
        }
    }

    #[test]
    fn categories_are_ordered() {
        let ladder = [
            "2c 5d 9h Js Kc 3d 7h",
            "2c 2d 9h Js Kc 3d 7h",
            "2c 2d 9h 9s Kc 3d 7h",
            "2c 2d 2h 9s Kc 3d 7h",
            "Ac 2d 3h 4s 5c 9d Jh",
            "2h 5h 9h Jh Kh 3d 7c",
            "2c 2d 2h 9s 9c 3d 7h",
            "2c 2d 2h 2s Kc 3d 7h",
            "Ah 2h 3h 4h 5h Kd 9c",
        ];
        for pair in ladder.windows(2) {
            assert!(
                best(pair[0]).value < best(pair[1]).value,
                "{} < {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn wheel_is_the_lowest_straight() {
        let wheel = best("Ac 2d 3h 4s 5c 9d Jh");
        let six_high = best("2d 3h 4s 5c 6c 9d Jh");
        assert_eq!(wheel.value.category(), HandCategory::Straight);
        assert_eq!(six_high.value.category(), HandCategory::Straight);
        assert!(wheel.value < six_high.value);
        // The ace plays low, so it is listed last.
        assert_eq!(shown(&wheel), "5c 4s 3h 2d Ac");
        // A broadway straight beats everything below it.
        assert!(best("Ac Kd Qh Js Tc 2d 3h").value > six_high.value);
        // A-K-Q-J plus 2 is not a straight.
        assert_eq!(
            best("Ac Kd Qh Js 2c 7d 8h").value.category(),
            HandCategory::HighCard
        );
    }

    #[test]
    fn steel_wheel_is_the_lowest_straight_flush() {
        let steel = best("Ah 2h 3h 4h 5h 6c 9d");
        assert_eq!(steel.value.category(), HandCategory::StraightFlush);
        assert!(steel.value < best("2h 3h 4h 5h 6h 9c Td").value);
    }

    #[test]
    fn flush_beats_straight_and_picks_the_top_five_suited() {
        let both = best("4h 5h 6c 7h 8d Kh 2h");
        assert_eq!(both.value.category(), HandCategory::Flush);
        assert_eq!(shown(&both), "Kh 7h 5h 4h 2h");
        let six_flush = best("2h 3h 4h 5h 7h 8h 9h");
        assert_eq!(shown(&six_flush), "9h 8h 7h 5h 4h");
    }

    #[test]
    fn straight_uses_the_highest_run() {
        let hand = best("3c 4d 5h 6s 7c 8d 9h");
        assert_eq!(shown(&hand), "9h 8d 7c 6s 5h");
    }

    #[test]
    fn kickers_break_ties() {
        // Same pair, better kicker wins.
        assert!(best("Ac Ad Kh 7s 5c 3d 2h").value > best("Ac Ad Qh 7s 5c 3d 2h").value);
        // Same two pair, kicker decides.
        assert!(best("Kc Kd 9h 9s Ac 3d 2h").value > best("Kc Kd 9h 9s Qc 3d 2h").value);
        // Higher top pair beats more pairs below it.
        assert!(best("Ac Ad 3h 3s Kc 8d 2h").value > best("Kc Kd Qh Qs Ac 8d 2h").value);
        // Full houses compare trips first.
        assert!(best("3c 3d 3h 2s 2c 8d 9h").value > best("2c 2d 2h As Ac 8d 9h").value);
        // Quads with a better kicker.
        assert!(best("9c 9d 9h 9s Ac 2d 3h").value > best("9c 9d 9h 9s Kc 2d 3h").value);
        // High card compares down to the fifth card.
        assert!(best("Ac Qd 9h 7s 4c 3d 2h").value > best("Ac Qd 9h 7s 3c 2d").value);
        // Only five cards play: a sixth-card difference does not matter.
        assert_eq!(
            best("Ac Kd Qh 9s 7c 4d 2h").value,
            best("Ac Kd Qh 9s 7c 3d 2h").value
        );
    }

    #[test]
    fn two_pair_from_three_pairs_uses_best_kicker() {
        let hand = best("Ac Ad Kh Ks Qc Qd 2h");
        assert_eq!(hand.value.category(), HandCategory::TwoPair);
        assert_eq!(shown(&hand), "Ad Ac Ks Kh Qd");
    }

    #[test]
    fn full_house_from_two_trips() {
        let hand = best("Ac Ad Ah Ks Kc Kd 2h");
        assert_eq!(hand.value.category(), HandCategory::FullHouse);
        assert_eq!(hand.cards[0].rank(), Rank::ACE);
        assert_eq!(hand.cards[4].rank().value(), 13);
    }

    #[test]
    fn board_plays_and_ties() {
        let board = "Ac Kd Qh Js Tc";
        let first = best(&format!("{board} 2c 3d"));
        let second = best(&format!("{board} 4h 5s"));
        assert_eq!(first.value, second.value);
        assert_eq!(first.value.category(), HandCategory::Straight);
    }

    /// Every one of the 2,598,960 five-card hands, counted by category, must match the
    /// well-known totals; this checks the evaluator against an independent source.
    #[test]
    fn all_five_card_hands_have_the_textbook_category_counts() {
        let deck = crate::poker::ordered_deck();
        let mut counts = [0u32; 9];
        for a in 0..52 {
            for b in a + 1..52 {
                for c in b + 1..52 {
                    for d in c + 1..52 {
                        for e in d + 1..52 {
                            let hand = evaluate_five([deck[a], deck[b], deck[c], deck[d], deck[e]]);
                            counts[hand.value.category() as usize] += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(
            counts,
            [
                1_302_540, 1_098_240, 123_552, 54_912, 10_200, 5_108, 3_744, 624, 40
            ]
        );
    }

    proptest::proptest! {
        /// The best hand does not depend on the order of the cards, and uses only given cards.
        #[test]
        fn best_hand_is_order_independent(seed in proptest::prelude::any::<u64>()) {
            use rand_core::SeedableRng;
            let deck = crate::poker::shuffled_deck(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let seven = &deck[..7];
            let mut reversed = seven.to_vec();
            reversed.reverse();
            let forward = best_hand(seven).unwrap();
            let backward = best_hand(&reversed).unwrap();
            proptest::prop_assert_eq!(forward.value, backward.value);
            proptest::prop_assert!(forward.cards.iter().all(|card| seven.contains(card)));
            proptest::prop_assert_eq!(evaluate_five(forward.cards).value, forward.value);
        }
    }

    #[test]
    fn needs_at_least_five_cards() {
        assert!(best_hand(&cards("Ac Kd Qh Js")).is_none());
        assert_eq!(
            best_hand(&cards("Ac Kd Qh Js 9c"))
                .unwrap()
                .value
                .category(),
            HandCategory::HighCard
        );
    }
}
