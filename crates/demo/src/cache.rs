//! Kind `cache`: a hot cache, a state of megabytes updated by tiny messages.
//!
//! As a `Journal` kind, a step costs the same however big the cache is: the journal gets the
//! small message, not the state. (As a `Snapshot` kind, every step would write the whole
//! state; `perennial bench --only journal` measures both.)
//!
//! Messages, as JSON:
//! - `{"put": {"key": "k", "value": "v"}}` → `{"entries": N, "bytes": B}`
//! - `{"get": "k"}` → `{"value": "v"}` or `{"value": null}`
//! - `{"fill": {"entries": 1000, "value_bytes": 1000}}`: adds generated entries (to build a
//!   big cache in one step) → `{"entries": N, "bytes": B}`
//! - `"size"` → `{"entries": N, "bytes": B}`

use std::collections::BTreeMap;

use perennial_core::{Ctx, Process, Rejection};
use serde::{Deserialize, Serialize};

/// A `cache` writes a snapshot every this many steps: rarely, since a snapshot writes the
/// whole state (its cost, spread over the steps, is the state's size divided by this).
pub const SNAPSHOT_EVERY: u64 = 10_000;

/// The state of a `cache` entity.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    entries: BTreeMap<String, String>,
    /// Bytes of keys and values.
    bytes: u64,
}

/// A message to a cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMsg {
    /// Sets a key.
    Put {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// Reads a key.
    Get(String),
    /// Adds `entries` generated entries of `value_bytes` bytes each.
    Fill {
        /// How many entries.
        entries: u32,
        /// How long each value is.
        value_bytes: u32,
    },
    /// Reads the cache's size.
    Size,
}

/// What a cache answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CacheReply {
    /// The cache's size.
    Size {
        /// Entries held.
        entries: u64,
        /// Bytes of keys and values.
        bytes: u64,
    },
    /// A value read.
    Value {
        /// The value, if the key is set.
        value: Option<String>,
    },
}

/// Why a cache refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// A fill beyond [`MAX_FILL_BYTES`].
    #[error("a fill may add at most {MAX_FILL_BYTES} bytes")]
    TooBig,
}

/// The most bytes one `fill` may add.
pub const MAX_FILL_BYTES: u64 = 256 << 20;

impl Rejection for CacheError {
    fn code(&self) -> &str {
        match self {
            Self::TooBig => "too_big",
        }
    }
}

impl Cache {
    fn set(&mut self, key: String, value: String) {
        let added = (key.len() + value.len()) as u64;
        if let Some(old) = self.entries.get(&key) {
            self.bytes -= (key.len() + old.len()) as u64;
        }
        self.bytes += added;
        self.entries.insert(key, value);
    }

    fn size(&self) -> CacheReply {
        CacheReply::Size {
            entries: self.entries.len() as u64,
            bytes: self.bytes,
        }
    }
}

impl Process for Cache {
    const KIND: &'static str = "cache";
    type Msg = CacheMsg;
    type Reply = CacheReply;
    type Error = CacheError;

    fn handle(
        &mut self,
        msg: CacheMsg,
        _ctx: &mut Ctx<'_, Self>,
    ) -> Result<CacheReply, CacheError> {
        match msg {
            CacheMsg::Put { key, value } => self.set(key, value),
            CacheMsg::Get(key) => {
                return Ok(CacheReply::Value {
                    value: self.entries.get(&key).cloned(),
                });
            }
            CacheMsg::Fill {
                entries,
                value_bytes,
            } => {
                if u64::from(entries) * u64::from(value_bytes) > MAX_FILL_BYTES {
                    return Err(CacheError::TooBig);
                }
                let start = self.entries.len();
                for i in start..start + entries as usize {
                    let value = char::from(b'a' + (i % 26) as u8)
                        .to_string()
                        .repeat(value_bytes as usize);
                    self.set(format!("k{i:09}"), value);
                }
            }
            CacheMsg::Size => {}
        }
        Ok(self.size())
    }

    fn is_read_only(msg: &CacheMsg) -> bool {
        matches!(msg, CacheMsg::Get(_) | CacheMsg::Size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_fills_and_sizes_add_up() {
        let mut cache = Cache::default();
        cache.set("a".into(), "xyz".into());
        cache.set("a".into(), "x".into());
        assert_eq!(cache.bytes, 2);
        assert_eq!(
            cache.size(),
            CacheReply::Size {
                entries: 1,
                bytes: 2
            }
        );
    }
}
