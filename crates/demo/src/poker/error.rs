//! The errors a table operation can return, each with a stable snake_case code.

use serde::{Deserialize, Serialize};

/// Why a table operation was refused. A refused operation never changes the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum TableError {
    /// The blinds are unusable: the big blind must be at least 1 and the small blind at most the big blind.
    #[error(
        "invalid blinds: the big blind must be at least 1 and the small blind at most the big blind"
    )]
    InvalidBlinds,
    /// Every seat is taken.
    #[error("the table is full")]
    TableFull,
    /// A player with this name is already seated.
    #[error("player {player:?} is already seated")]
    AlreadySeated {
        /// The name that is already taken.
        player: String,
    },
    /// The player name is empty or longer than 64 characters.
    #[error("player names must be 1 to 64 characters long")]
    InvalidName,
    /// The chip amount is zero.
    #[error("a player must bring more than zero chips")]
    InvalidChips,
    /// No player with this name is seated.
    #[error("no player {player:?} at this table")]
    UnknownPlayer {
        /// The name that was not found.
        player: String,
    },
    /// A hand is being played, so a new one cannot start.
    #[error("a hand is already in progress")]
    HandInProgress,
    /// Fewer than two seated players have chips.
    #[error("at least two players with chips are needed to start a hand")]
    NotEnoughPlayers,
    /// There is no hand being played, so there is nothing to act on.
    #[error("no hand is in progress")]
    NoHandInProgress,
    /// Someone else is to act (or this player is not in the hand at all).
    #[error("it is not {player:?}'s turn")]
    NotYourTurn {
        /// The player who tried to act.
        player: String,
    },
    /// Checking is not possible while facing a bet.
    #[error("cannot check: there is a bet of {to_call} to call")]
    CannotCheck {
        /// The chips needed to call.
        to_call: u64,
    },
    /// Calling is not possible when there is no bet to call; check instead.
    #[error("nothing to call: check instead")]
    NothingToCall,
    /// The raise-to amount is below the minimum (and is not an all-in).
    #[error("raise too small: the minimum raise is to {min_raise_to}")]
    RaiseTooSmall {
        /// The smallest legal raise-to amount.
        min_raise_to: u64,
    },
    /// Raising is not allowed now: the betting was not reopened to this player, no opponent
    /// could respond, or the player cannot cover more than a call.
    #[error("raising is not allowed now; call or fold")]
    RaiseNotAllowed,
    /// The bet needs more chips than the player has.
    #[error("insufficient chips: at most {max_raise_to} can be bet this street")]
    InsufficientChips {
        /// The largest total bet the player can make this street (their all-in).
        max_raise_to: u64,
    },
    /// The turn timeout is outside 1 ms to 24 hours.
    #[error("the turn timeout must be 1 to 86,400,000 milliseconds")]
    InvalidTurnTimeout,
    /// An authenticated caller named another player: a player acts only as themselves.
    #[error("you are signed in as {caller:?}, not {player:?}: a player acts only as themselves")]
    NotYou {
        /// The player the message named.
        player: String,
        /// Who sent it.
        caller: String,
    },
}

impl TableError {
    /// A stable snake_case code for this error, suitable for APIs and tests (e.g. `"not_your_turn"`).
    pub fn code(&self) -> &'static str {
        match self {
            TableError::InvalidBlinds => "invalid_blinds",
            TableError::TableFull => "table_full",
            TableError::AlreadySeated { .. } => "already_seated",
            TableError::InvalidName => "invalid_name",
            TableError::InvalidChips => "invalid_chips",
            TableError::UnknownPlayer { .. } => "unknown_player",
            TableError::HandInProgress => "hand_in_progress",
            TableError::NotEnoughPlayers => "not_enough_players",
            TableError::NoHandInProgress => "no_hand_in_progress",
            TableError::NotYourTurn { .. } => "not_your_turn",
            TableError::CannotCheck { .. } => "cannot_check",
            TableError::NothingToCall => "nothing_to_call",
            TableError::RaiseTooSmall { .. } => "raise_too_small",
            TableError::RaiseNotAllowed => "raise_not_allowed",
            TableError::InsufficientChips { .. } => "insufficient_chips",
            TableError::InvalidTurnTimeout => "invalid_turn_timeout",
            TableError::NotYou { .. } => "not_you",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_serde_tag() {
        let errors = [
            TableError::InvalidBlinds,
            TableError::TableFull,
            TableError::AlreadySeated { player: "a".into() },
            TableError::InvalidName,
            TableError::InvalidChips,
            TableError::UnknownPlayer { player: "a".into() },
            TableError::HandInProgress,
            TableError::NotEnoughPlayers,
            TableError::NoHandInProgress,
            TableError::NotYourTurn { player: "a".into() },
            TableError::NotYou {
                player: "a".into(),
                caller: "b".into(),
            },
            TableError::CannotCheck { to_call: 5 },
            TableError::NothingToCall,
            TableError::RaiseTooSmall { min_raise_to: 20 },
            TableError::RaiseNotAllowed,
            TableError::InsufficientChips { max_raise_to: 100 },
            TableError::InvalidTurnTimeout,
        ];
        for error in errors {
            let json = serde_json::to_value(&error).unwrap();
            assert_eq!(json["code"], error.code());
            assert_eq!(serde_json::from_value::<TableError>(json).unwrap(), error);
            assert!(!error.to_string().is_empty());
        }
    }
}
