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
//! - `"view"`
//!
//! Every message answers with the table's [`TableView`]; an illegal action answers with a
//! [`TableError`] (code such as `not_your_turn`) and changes nothing.
//!
//! The table is a `Journal` kind: each action is journaled, with the seed of the shuffle it
//! drew, and a restart replays them (from the latest snapshot) to the same cards. The journal
//! doubles as the table's hand history.

use perennial_core::{Ctx, Process, Rejection};
use serde::{Deserialize, Serialize};

use crate::poker::{Action, Table, TableError, TableView};

/// A `table` writes a snapshot every this many steps: activation replays fewer.
pub const SNAPSHOT_EVERY: u64 = 64;
/// How many steps of a table's journal stay readable as history behind its snapshot.
pub const HISTORY_STEPS: u64 = 10_000;

/// The state of a `table` entity: one hold'em table.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PokerTable(pub Table);

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
    /// Reads the table.
    View,
}

impl Rejection for TableError {
    fn code(&self) -> &str {
        TableError::code(self)
    }
}

impl Process for PokerTable {
    const KIND: &'static str = "table";
    type Msg = TableMsg;
    type Reply = TableView;
    type Error = TableError;

    fn handle(&mut self, msg: TableMsg, ctx: &mut Ctx<'_, Self>) -> Result<TableView, TableError> {
        let table = &mut self.0;
        match msg {
            TableMsg::Join { player, chips } => table.join(&player, chips)?,
            TableMsg::Leave { player } => {
                table.leave(&player)?;
            }
            TableMsg::StartHand => table.start_hand(ctx.rng())?,
            TableMsg::Act { player, action } => table.act(&player, action)?,
            TableMsg::View => {}
        }
        Ok(table.view())
    }

    fn is_read_only(msg: &TableMsg) -> bool {
        matches!(msg, TableMsg::View)
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

    #[tokio::test]
    async fn a_hand_played_through_the_runtime_survives_a_restart() {
        let store = MemoryStore::new();
        let start = || async {
            crate::register(Runtime::builder().store(store.clone()))
                .start()
                .await
                .unwrap()
        };
        let rt = start().await;
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
        let rt = start().await;
        let again = rt
            .get::<PokerTable>("t1")
            .call(TableMsg::View)
            .await
            .unwrap();
        assert_eq!(again, dealt);
        rt.shutdown().await;
    }
}
