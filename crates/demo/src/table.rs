//! Kind `table`: a no-limit Texas hold'em table as a persistent process.
//!
//! The whole table (seats, stacks, the deck, the hand in progress) is the process's state, and
//! each player action is a message. There is no schema and no query: the table is a value, and
//! the runtime keeps it durable. Shuffles use the step's [`Ctx::rng`].
//!
//! Messages, as JSON:
//! - `{"join": {"player": "alice", "chips": 1000}}`
//! - `{"leave": {"player": "alice"}}`
//! - `"start_hand"`
//! - `{"act": {"player": "alice", "action": "fold" | "check" | "call" | {"raise": 40}}}`
//!   (a raise names the total bet for the street: "raise to")
//! - `"view"`, `{"view_for": {"player": "alice"}}`
//! - `{"configure": {"turn_timeout_ms": 30000}}`: how long the player to act has (default
//!   30 s). When it runs out, a durable timer checks for them if checking is free, else
//!   folds them, even if the node restarted in between. The view's `turn_deadline_ms` says
//!   when. (`{"turn_timeout": {"turn": N}}` is the timer's own message.)
//!
//! Every message answers with the table's [`TableView`] as the caller sees it; an illegal
//! action answers with a [`TableError`] (code such as `not_your_turn`) and changes nothing.
//!
//! **Who is playing.** When the node verifies callers (`perennial serve --caller-key`), each
//! call comes from a player ([`Ctx::caller`]): a message that names another player (`join`,
//! `leave`, `act`, `view_for`) is refused with `not_you` (HTTP `403`), and every reply shows
//! only the caller's own hole cards. Without a caller key the table is in *open mode*, for
//! trying it out: calls are anonymous, anyone may act for any player by name, replies show
//! no hole cards, and `view_for` shows a player's cards to whoever asks.
//!
//! The table is a `Journal` kind: each action is journaled, with the seed of the shuffle it
//! drew, and a restart replays them (from the latest snapshot) to the same cards. The journal
//! doubles as the table's hand history.

use std::time::{Duration, SystemTime};

use perennial_core::{Ctx, Process, Refusal, Rejection, TimerId};
use serde::{Deserialize, Serialize};

use crate::poker::{Action, Table, TableError, TableView};

/// A `table` writes a snapshot every this many steps: activation replays fewer.
pub const SNAPSHOT_EVERY: u64 = 64;
/// How many steps of a table's journal stay readable as history behind its snapshot.
pub const HISTORY_STEPS: u64 = 10_000;

/// How long the player to act has, unless the table is configured otherwise.
pub const DEFAULT_TURN_TIMEOUT_MS: u64 = 30_000;

/// The state of a `table` entity: one hold'em table and its turn clock.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PokerTable {
    /// The game.
    #[serde(flatten)]
    pub table: Table,
    /// The turn timer.
    #[serde(default)]
    pub clock: TurnClock,
}

/// The timer that acts for a player who takes too long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnClock {
    /// How long each turn lasts.
    pub timeout_ms: u64,
    /// Counts the turns timed so far; a timer names the turn it was set for.
    pub turn: u64,
    /// The running timer, if a player is to act.
    pub timer: Option<TimerId>,
    /// When the running timer fires, in milliseconds since the Unix epoch.
    pub deadline_ms: Option<i64>,
}

impl Default for TurnClock {
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_TURN_TIMEOUT_MS,
            turn: 0,
            timer: None,
            deadline_ms: None,
        }
    }
}

/// A message to a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableMsg {
    /// A player sits down with chips.
    Join {
        /// The player's name.
        player: String,
        /// The chips they bring.
        chips: u64,
    },
    /// A player leaves (folding first if they are in a hand).
    Leave {
        /// The player's name.
        player: String,
    },
    /// Shuffles, moves the button, posts the blinds and deals.
    StartHand,
    /// The player to act folds, checks, calls or raises.
    Act {
        /// The player's name.
        player: String,
        /// What they do.
        action: Action,
    },
    /// Reads the table as the caller sees it: their own hole cards only (none for an
    /// anonymous caller).
    View,
    /// Reads the table as `player` sees it: other players' hole cards hidden (until a
    /// showdown reveals them in the hand's result). A signed-in caller may read only as
    /// themselves; an anonymous one as anyone (the open mode's honour system).
    ViewFor {
        /// Whose view.
        player: String,
    },
    /// Sets the table's options.
    Configure {
        /// How long the player to act has, in milliseconds.
        turn_timeout_ms: u64,
    },
    /// The turn timer ran out (sent by the table's own timer).
    TurnTimeout {
        /// The turn it was set for; a timer of an earlier turn does nothing.
        turn: u64,
    },
}

impl Rejection for TableError {
    fn code(&self) -> &str {
        TableError::code(self)
    }

    fn refusal(&self) -> Refusal {
        match self {
            TableError::NotYou { .. } => Refusal::Forbidden,
            _ => Refusal::Invalid,
        }
    }
}

impl Process for PokerTable {
    const KIND: &'static str = "table";
    // The deck and every player's hole cards: watchers learn only that the table changed.
    const WATCH_SHOWS_STATE: bool = false;
    type Msg = TableMsg;
    type Reply = TableView;
    type Error = TableError;

    fn handle(&mut self, msg: TableMsg, ctx: &mut Ctx<'_, Self>) -> Result<TableView, TableError> {
        let caller = ctx.caller().map(|c| c.subject().to_owned());
        if let (Some(caller), Some(player)) = (&caller, msg.player())
            && caller != player
        {
            return Err(TableError::NotYou {
                player: player.to_owned(),
                caller: caller.clone(),
            });
        }
        let before = self.turn_owner();
        let table = &mut self.table;
        // Whether the turn passed on (even back to the same player, on a new street).
        let moved = match msg {
            TableMsg::Join { player, chips } => {
                table.join(&player, chips)?;
                false
            }
            TableMsg::Leave { player } => {
                table.leave(&player)?;
                false
            }
            TableMsg::StartHand => {
                table.start_hand(ctx.rng())?;
                true
            }
            TableMsg::Act { player, action } => {
                table.act(&player, action)?;
                true
            }
            TableMsg::View => false,
            TableMsg::ViewFor { player } => return Ok(self.view_for(&player)),
            TableMsg::Configure { turn_timeout_ms } => {
                if !(1..=86_400_000).contains(&turn_timeout_ms) {
                    return Err(TableError::InvalidTurnTimeout);
                }
                self.clock.timeout_ms = turn_timeout_ms;
                false
            }
            TableMsg::TurnTimeout { turn } => self.time_out(turn)?,
        };
        if moved || self.turn_owner() != before {
            self.rearm(ctx);
        }
        Ok(self.view_as(caller.as_deref()))
    }

    fn is_read_only(msg: &TableMsg) -> bool {
        matches!(msg, TableMsg::View | TableMsg::ViewFor { .. })
    }
}

impl TableMsg {
    /// The player the message acts for or reads as, if it names one.
    fn player(&self) -> Option<&str> {
        match self {
            TableMsg::Join { player, .. }
            | TableMsg::Leave { player }
            | TableMsg::Act { player, .. }
            | TableMsg::ViewFor { player } => Some(player),
            _ => None,
        }
    }
}

impl PokerTable {
    /// The table as `caller` sees it: their own hole cards only, or none for an anonymous
    /// caller (cards shown at a showdown stay in the hand's result).
    pub fn view_as(&self, caller: Option<&str>) -> TableView {
        let mut view = self.view();
        match caller {
            Some(caller) => view = self.view_for(caller),
            None => view
                .seats
                .iter_mut()
                .for_each(|seat| seat.hole_cards.clear()),
        }
        view
    }

    /// The table's view with every player's hole cards, with the turn's deadline: for the
    /// table's own code and tests, never a reply.
    pub fn view(&self) -> TableView {
        let mut view = self.table.view();
        view.turn_deadline_ms = self.clock.deadline_ms;
        view
    }

    /// The table as `player` sees it, with the turn's deadline.
    pub fn view_for(&self, player: &str) -> TableView {
        let mut view = self.table.view_for(player);
        view.turn_deadline_ms = self.clock.deadline_ms;
        view
    }

    /// Who is to act in which hand, if anyone.
    fn turn_owner(&self) -> Option<(u64, String)> {
        let player = self.table.to_act()?;
        Some((self.table.hand_number(), player.to_owned()))
    }

    /// Stops the running turn timer and, if someone is to act, starts one for them.
    fn rearm(&mut self, ctx: &mut Ctx<'_, Self>) {
        if let Some(timer) = self.clock.timer.take() {
            ctx.cancel(timer);
        }
        self.clock.deadline_ms = None;
        if self.table.to_act().is_none() {
            return;
        }
        self.clock.turn += 1;
        let timeout = Duration::from_millis(self.clock.timeout_ms);
        let fire = TableMsg::TurnTimeout {
            turn: self.clock.turn,
        };
        self.clock.timer = Some(ctx.schedule(timeout, fire));
        let deadline = ctx.now() + timeout;
        self.clock.deadline_ms = deadline
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok());
    }

    /// The timer of `turn` ran out: the player to act checks if that is free, else folds.
    /// Returns whether the turn moved on (a stale timer changes nothing).
    fn time_out(&mut self, turn: u64) -> Result<bool, TableError> {
        if turn != self.clock.turn {
            return Ok(false);
        }
        self.clock.timer = None;
        let Some(legal) = self.table.legal_actions() else {
            return Ok(false);
        };
        let action = if legal.can_check {
            Action::Check
        } else {
            Action::Fold
        };
        self.table.act(&legal.player, action)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use perennial_core::{CallError, Runtime};
    use perennial_storage::MemoryStore;

    use super::*;

    #[test]
    fn messages_have_the_documented_json_shapes() {
        let join: TableMsg =
            serde_json::from_str(r#"{"join": {"player": "alice", "chips": 1000}}"#).unwrap();
        assert_eq!(
            join,
            TableMsg::Join {
                player: "alice".into(),
                chips: 1000
            }
        );
        let act: TableMsg =
            serde_json::from_str(r#"{"act": {"player": "bob", "action": {"raise": 40}}}"#).unwrap();
        assert_eq!(
            act,
            TableMsg::Act {
                player: "bob".into(),
                action: Action::Raise(40)
            }
        );
        assert_eq!(
            serde_json::from_str::<TableMsg>(r#""start_hand""#).unwrap(),
            TableMsg::StartHand
        );
    }

    /// A runtime with the demo's kinds on `store`.
    async fn started(store: &MemoryStore) -> Runtime {
        crate::register(Runtime::builder().store(store.clone()))
            .start()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_hand_played_through_the_runtime_survives_a_restart() {
        let store = MemoryStore::new();
        let rt = started(&store).await;
        let t = rt.get::<PokerTable>("t1");
        for player in ["alice", "bob"] {
            let msg = TableMsg::Join {
                player: player.into(),
                chips: 1000,
            };
            t.call(msg).await.unwrap();
        }
        let dealt = t.call(TableMsg::StartHand).await.unwrap();
        let to_act = dealt.to_act.clone().unwrap();
        // An illegal action is refused and changes nothing.
        let other = if to_act == "alice" { "bob" } else { "alice" };
        let refused = t
            .call(TableMsg::Act {
                player: other.into(),
                action: Action::Call,
            })
            .await;
        assert!(matches!(&refused, Err(CallError::Rejected(e)) if e.code() == "not_your_turn"));
        rt.shutdown().await;
        // After a restart, the same cards, the same turn.
        let rt = started(&store).await;
        let again = rt
            .get::<PokerTable>("t1")
            .call(TableMsg::View)
            .await
            .unwrap();
        assert_eq!(again, dealt);
        rt.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_turn_timer_folds_a_slow_player_even_across_a_restart() {
        let store = MemoryStore::new();
        let rt = started(&store).await;
        let t = rt.get::<PokerTable>("slow");
        let configure = TableMsg::Configure {
            turn_timeout_ms: 300,
        };
        t.call(configure).await.unwrap();
        for player in ["alice", "bob"] {
            let msg = TableMsg::Join {
                player: player.into(),
                chips: 1000,
            };
            t.call(msg).await.unwrap();
        }
        let dealt = t.call(TableMsg::StartHand).await.unwrap();
        let slow = dealt.to_act.clone().unwrap();
        assert!(dealt.turn_deadline_ms.is_some());
        // The node stops before the timer fires; the next one folds the slow player.
        rt.shutdown().await;
        drop(rt);
        let rt = started(&store).await;
        let t = rt.get::<PokerTable>("slow");
        let mut view = t.call(TableMsg::View).await.unwrap();
        for _ in 0..300 {
            if view.hand == 1 && view.to_act.is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            view = t.call(TableMsg::View).await.unwrap();
        }
        // Heads-up, the first to act faces the big blind: no free check, so a fold.
        let result = view.last_result.expect("the hand ended");
        assert_eq!(result.ended_on, crate::poker::Street::Preflop, "{result:?}");
        let winners: Vec<&str> = result
            .pots
            .iter()
            .flat_map(|p| p.winners.iter().map(|w| w.player.as_str()))
            .collect();
        assert!(
            !winners.contains(&slow.as_str()),
            "{slow} folded: {result:?}"
        );
        assert_eq!(view.turn_deadline_ms, None, "no one to act, no timer");
        assert!(
            t.call(TableMsg::Configure { turn_timeout_ms: 0 })
                .await
                .is_err()
        );
        rt.shutdown().await;
    }
}
