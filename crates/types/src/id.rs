//! Entity ids and keys: validated once at the edge, then cheap to clone everywhere.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id, in bytes of UTF-8, that an entity may have.
pub const MAX_ID_LEN: usize = 256;

/// The id of one entity within its kind: a non-empty UTF-8 string of at most
/// [`MAX_ID_LEN`] bytes, without control characters.
///
/// Cloning is cheap (a reference count), because the id travels with every step
/// from the mailbox to the commit pipeline.
///
/// ```
/// use perennial_types::EntityId;
///
/// let id = EntityId::new("table-42").unwrap();
/// assert_eq!(id.as_str(), "table-42");
/// assert!(EntityId::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityId(Arc<str>);

/// Why a string is not a valid [`EntityId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidId {
    /// The id is the empty string.
    #[error("an entity id must not be empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("an entity id must be at most {MAX_ID_LEN} bytes, this one has {0}")]
    TooLong(usize),
    /// The id contains a control character (such as NUL or a newline).
    #[error("an entity id must not contain control characters")]
    ControlCharacter,
}

impl EntityId {
    /// Validates `id` and makes it an entity id.
    pub fn new(id: &str) -> Result<Self, InvalidId> {
        if id.is_empty() {
            return Err(InvalidId::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(InvalidId::TooLong(id.len()));
        }
        if id.chars().any(char::is_control) {
            return Err(InvalidId::ControlCharacter);
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string behind the id.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for EntityId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for EntityId {
    type Error = InvalidId;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for EntityId {
    type Error = InvalidId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl AsRef<str> for EntityId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for EntityId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EntityId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The address of one entity: its kind's name and its id.
///
/// ```
/// use perennial_types::{EntityId, EntityKey};
///
/// let key = EntityKey::new("counter", EntityId::new("c1").unwrap());
/// assert_eq!(key.to_string(), "counter/c1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityKey {
    /// The name of the entity's kind, such as `"table"`.
    pub kind: Arc<str>,
    /// The entity's id within its kind.
    pub id: EntityId,
}

impl EntityKey {
    /// Makes a key from a kind name and an id.
    pub fn new(kind: impl Into<Arc<str>>, id: EntityId) -> Self {
        Self {
            kind: kind.into(),
            id,
        }
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert_eq!(EntityId::new(""), Err(InvalidId::Empty));
        assert_eq!(EntityId::new("a\0b"), Err(InvalidId::ControlCharacter));
        assert_eq!(
            EntityId::new(&"x".repeat(257)),
            Err(InvalidId::TooLong(257))
        );
        assert!(EntityId::new(&"x".repeat(256)).is_ok());
        assert!(EntityId::new("joueur-été/42").is_ok());
    }

    #[test]
    fn ids_round_trip_through_json_and_refuse_invalid_ones() {
        let id = EntityId::new("t1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"t1\"");
        assert_eq!(serde_json::from_str::<EntityId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<EntityId>("\"\"").is_err());
        assert!(serde_json::from_str::<EntityId>("3").is_err());
        // Escaped characters need an owned string to decode into.
        let escaped: EntityId = serde_json::from_str(r#""t\u00e9\"1""#).unwrap();
        assert_eq!(escaped.as_str(), "té\"1");
    }
}
