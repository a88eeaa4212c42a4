//! Main and side pots built from each seat's contribution, and the even split of a pot.

/// One pot: an amount of chips and the seats that can win it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pot {
    /// Chips in this pot.
    pub(crate) amount: u64,
    /// Seats still contending for this pot, in the order the contenders were given.
    pub(crate) eligible: Vec<usize>,
}

/// Builds the main pot and any side pots from `(seat, chips contributed)` pairs.
///
/// `contenders` are the seats that have not folded, in the order winners should later be
/// listed. Every contribution counts, including those of folded players, but only contenders
/// who paid into a layer are eligible for it. Layers are cut at each distinct contribution
/// level; neighbouring layers with the same eligible seats are merged into one pot, and a
/// layer nobody can win (only folded players paid into it) is added to the pot below it.
/// The amounts of the returned pots always add up to the total contributed.
pub(crate) fn build_pots(contributions: &[(usize, u64)], contenders: &[usize]) -> Vec<Pot> {
    let mut levels: Vec<u64> = contributions
        .iter()
        .map(|&(_, amount)| amount)
        .filter(|&amount| amount > 0)
        .collect();
    levels.sort_unstable();
    levels.dedup();

    let contributed = |seat: usize| -> u64 {
        contributions
            .iter()
            .filter(|&&(s, _)| s == seat)
            .map(|&(_, amount)| amount)
            .sum()
    };

    let mut pots: Vec<Pot> = Vec::new();
    let mut previous_level = 0;
    for level in levels {
        // Every contributor pays the slice of their contribution that lies between the two levels.
        let amount: u64 = contributions
            .iter()
            .map(|&(_, paid)| paid.min(level) - paid.min(previous_level))
            .sum();
        let eligible: Vec<usize> = contenders
            .iter()
            .copied()
            .filter(|&seat| contributed(seat) >= level)
            .collect();
        previous_level = level;

        match pots.last_mut() {
            // Same contenders as the pot below: it is really the same pot.
            Some(last) if last.eligible == eligible => last.amount += amount,
            // Nobody can win this layer on its own, so it belongs to the pot below.
            Some(last) if eligible.is_empty() => last.amount += amount,
            // The lowest layer always has a contender in a real hand; if not, every contender may win it.
            None if eligible.is_empty() => {
                pots.push(Pot {
                    amount,
                    eligible: contenders.to_vec(),
                });
            }
            _ => pots.push(Pot { amount, eligible }),
        }
    }
    pots
}

/// Splits `amount` evenly between `winners`, who must be listed from the first seat left of the
/// button clockwise: the odd chips go one each to the first winners in that order.
pub(crate) fn split_pot(amount: u64, winners: &[usize]) -> Vec<(usize, u64)> {
    let Ok(count) = u64::try_from(winners.len()) else {
        return Vec::new();
    };
    if count == 0 {
        return Vec::new();
    }
    let share = amount / count;
    let odd_chips = amount % count;
    winners
        .iter()
        .zip(0u64..)
        .map(|(&seat, position)| (seat, share + u64::from(position < odd_chips)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_pot_when_everyone_matches() {
        let pots = build_pots(&[(0, 100), (1, 100), (2, 100)], &[0, 1, 2]);
        assert_eq!(
            pots,
            vec![Pot {
                amount: 300,
                eligible: vec![0, 1, 2]
            }]
        );
    }

    #[test]
    fn three_all_ins_of_different_sizes_make_side_pots() {
        let pots = build_pots(&[(0, 50), (1, 150), (2, 300), (3, 300)], &[0, 1, 2, 3]);
        assert_eq!(
            pots,
            vec![
                Pot {
                    amount: 200,
                    eligible: vec![0, 1, 2, 3]
                },
                Pot {
                    amount: 300,
                    eligible: vec![1, 2, 3]
                },
                Pot {
                    amount: 300,
                    eligible: vec![2, 3]
                },
            ]
        );
    }

    #[test]
    fn folded_chips_count_but_are_not_eligible() {
        // Seat 0 folded after putting in 80; seat 1 is all-in for 50; seat 2 covers everyone.
        let pots = build_pots(&[(0, 80), (1, 50), (2, 120)], &[1, 2]);
        assert_eq!(
            pots,
            vec![
                Pot {
                    amount: 150,
                    eligible: vec![1, 2]
                },
                Pot {
                    amount: 100,
                    eligible: vec![2]
                },
            ]
        );
        let total: u64 = pots.iter().map(|pot| pot.amount).sum();
        assert_eq!(total, 250);
    }

    #[test]
    fn layer_paid_only_by_folded_players_joins_the_pot_below() {
        let pots = build_pots(&[(0, 100), (1, 40)], &[1]);
        assert_eq!(
            pots,
            vec![Pot {
                amount: 140,
                eligible: vec![1]
            }]
        );
    }

    #[test]
    fn split_gives_odd_chips_to_the_first_winners() {
        assert_eq!(split_pot(101, &[4, 1]), vec![(4, 51), (1, 50)]);
        assert_eq!(split_pot(100, &[4, 1, 2]), vec![(4, 34), (1, 33), (2, 33)]);
        assert_eq!(split_pot(5, &[7]), vec![(7, 5)]);
        assert!(split_pot(5, &[]).is_empty());
    }
}
