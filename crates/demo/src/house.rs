//! Kind `house`: a betting house whose payout rule is a closure, chosen when it opens.
//!
//! It shows what a `Journal` kind can keep that no database can: the state holds a
//! `Box<dyn Fn>`, so it has no serde at all. The runtime journals the messages instead and
//! rebuilds the closure by replaying them, after a passivation, a restart or a kill -9.
//!
//! Messages, as JSON:
//! - `{"open": {"rule": "flat", "amount": 5}}`: every bet pays the stake plus 5;
//!   `{"open": {"rule": "percent", "amount": 10}}`: pays the stake plus 10%;
//!   `{"open": {"rule": "double_or_nothing"}}`: a fair coin from `ctx.rng()` at each bet.
//! - `{"bet": 100}`: answers `{"payout": P, "bets": B, "paid": T}`.
//! - `"stats"`: the same, without betting.

use perennial_core::{Ctx, Process, Rejection, Rng};
use serde::{Deserialize, Serialize};

/// A payout rule: from the stake (and the step's randomness) to the payout.
type Rule = Box<dyn Fn(u64, &mut Rng) -> u64 + Send>;

/// The state of a `house` entity. Not serializable: it holds its rule as a closure.
#[derive(Default)]
pub struct House {
    rule: Option<Rule>,
    bets: u64,
    paid: u64,
}

impl std::fmt::Debug for House {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("House")
            .field("open", &self.rule.is_some())
            .field("bets", &self.bets)
            .field("paid", &self.paid)
            .finish()
    }
}

/// How the house pays, chosen when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleName {
    /// The stake plus a fixed amount.
    Flat,
    /// The stake plus a percentage of it.
    Percent,
    /// Twice the stake or nothing, on a fair coin.
    DoubleOrNothing,
}

/// A message to a house.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HouseMsg {
    /// Opens the house with its payout rule.
    Open {
        /// Which rule.
        rule: RuleName,
        /// The rule's amount (`flat`: chips; `percent`: percent). Ignored by the others.
        #[serde(default)]
        amount: u64,
    },
    /// Places a bet of this many chips.
    Bet(u64),
    /// Reads the counts.
    Stats,
}

/// What a house answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HouseReply {
    /// What the last bet paid (0 for other messages).
    pub payout: u64,
    /// Bets placed so far.
    pub bets: u64,
    /// Chips paid out so far.
    pub paid: u64,
}

/// Why a house refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HouseError {
    /// A bet before the house opened.
    #[error("the house is not open: send {{\"open\": {{\"rule\": ...}}}} first")]
    NotOpen,
    /// A second `open`.
    #[error("the house is already open; its rule cannot change")]
    AlreadyOpen,
    /// A payout beyond what a `u64` holds.
    #[error("the payout is too large")]
    Overflow,
}

impl Rejection for HouseError {
    fn code(&self) -> &str {
        match self {
            Self::NotOpen => "not_open",
            Self::AlreadyOpen => "already_open",
            Self::Overflow => "overflow",
        }
    }
}

impl Process for House {
    const KIND: &'static str = "house";
    type Msg = HouseMsg;
    type Reply = HouseReply;
    type Error = HouseError;

    fn handle(&mut self, msg: HouseMsg, ctx: &mut Ctx<'_, Self>) -> Result<HouseReply, HouseError> {
        let payout = match msg {
            HouseMsg::Open { rule, amount } => {
                if self.rule.is_some() {
                    return Err(HouseError::AlreadyOpen);
                }
                self.rule = Some(match rule {
                    RuleName::Flat => Box::new(move |stake, _| stake.saturating_add(amount)),
                    RuleName::Percent => Box::new(move |stake, _| {
                        stake.saturating_add(stake.saturating_mul(amount) / 100)
                    }),
                    RuleName::DoubleOrNothing => Box::new(|stake, rng: &mut Rng| {
                        if rng.below(2) == 1 {
                            stake.saturating_mul(2)
                        } else {
                            0
                        }
                    }),
                });
                0
            }
            HouseMsg::Bet(stake) => {
                let rule = self.rule.as_ref().ok_or(HouseError::NotOpen)?;
                let payout = rule(stake, ctx.rng());
                // Checked before anything changes: a refused step leaves the state as it was.
                let paid = self.paid.checked_add(payout).ok_or(HouseError::Overflow)?;
                self.bets += 1;
                self.paid = paid;
                payout
            }
            HouseMsg::Stats => 0,
        };
        Ok(HouseReply {
            payout,
            bets: self.bets,
            paid: self.paid,
        })
    }

    fn is_read_only(msg: &HouseMsg) -> bool {
        matches!(msg, HouseMsg::Stats)
    }
}

#[cfg(test)]
mod tests {
    use perennial_core::{CallError, Runtime};
    use perennial_storage::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn the_rule_chosen_at_opening_survives_a_restart() {
        let store = MemoryStore::new();
        let start = || async {
            Runtime::builder()
                .store(store.clone())
                .register_journal::<House>()
                .start()
                .await
                .unwrap()
        };
        let rt = start().await;
        let h = rt.get::<House>("h");
        assert!(matches!(
            h.call(HouseMsg::Bet(1)).await,
            Err(CallError::Rejected(HouseError::NotOpen))
        ));
        h.call(HouseMsg::Open {
            rule: RuleName::Percent,
            amount: 10,
        })
        .await
        .unwrap();
        assert_eq!(h.call(HouseMsg::Bet(200)).await.unwrap().payout, 220);
        let coin = rt.get::<House>("coin");
        coin.call(HouseMsg::Open {
            rule: RuleName::DoubleOrNothing,
            amount: 0,
        })
        .await
        .unwrap();
        let mut coins = Vec::new();
        for _ in 0..20 {
            coins.push(coin.call(HouseMsg::Bet(10)).await.unwrap());
        }
        rt.shutdown().await;
        let rt = start().await;
        let h = rt.get::<House>("h");
        let reply = h.call(HouseMsg::Bet(50)).await.unwrap();
        assert_eq!(
            reply,
            HouseReply {
                payout: 55,
                bets: 2,
                paid: 275
            }
        );
        // The coin's past results come back the same: its randomness was journaled.
        let stats = rt.get::<House>("coin").call(HouseMsg::Stats).await.unwrap();
        assert_eq!(stats.paid, coins.last().unwrap().paid);
        assert!(matches!(
            h.call(HouseMsg::Open {
                rule: RuleName::Flat,
                amount: 1
            })
            .await,
            Err(CallError::Rejected(HouseError::AlreadyOpen))
        ));
        rt.shutdown().await;
    }
}
