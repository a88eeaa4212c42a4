//! The parameters in the public API's paths (`{kind}`, `{id}`, `{step}`, `{seq}`), and the
//! patterns and rules the parameters and bodies of several routes share.

use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

/// The most rows one page holds.
pub const MAX_PAGE: u64 = 1000;

/// The rows a page holds when its query says `limit`: 100 if it says nothing, and never
/// fewer than 1 or more than [`MAX_PAGE`].
pub fn page_size(limit: Option<u64>) -> usize {
    // MAX_PAGE fits any usize.
    usize::try_from(limit.unwrap_or(100).clamp(1, MAX_PAGE)).unwrap_or(1)
}

/// `/…/{kind}`: a registered kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KindPath {
    /// A registered kind's name.
    #[param(example = "counter")]
    pub kind: String,
}

/// `/…/{kind}/indexes/{path}`: one index of a kind, by its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IndexPathParams {
    /// A registered kind's name.
    #[param(example = "counter")]
    pub kind: String,
    /// The indexed path, such as `owner` or `seats[0].player` (percent-encoded).
    #[param(
        min_length = 1,
        pattern = r"^(?!(?:[Aa][Nn][Dd]|[Oo][Rr]|[Nn][Oo][Tt]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Nn][Uu][Ll][Ll])\b)[A-Za-z_][A-Za-z0-9_]{0,15}(?:\.[A-Za-z_][A-Za-z0-9_]{0,15}|\[(?:0|[1-9][0-9]{0,5})\]){0,3}$",
        example = "owner"
    )]
    pub path: String,
}

/// `/…/{kind}/{id}`: an entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EntityPath {
    /// A registered kind's name.
    #[param(example = "counter")]
    pub kind: String,
    /// The entity's id: 1 to 256 bytes of UTF-8, no control characters.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$",
        example = "c1"
    )]
    pub id: String,
}

/// `/…/{kind}/{id}/at/{step}`: an entity's journal step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct StepPath {
    /// A registered kind's name.
    #[param(example = "counter")]
    pub kind: String,
    /// The entity's id: 1 to 256 bytes of UTF-8, no control characters.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$",
        example = "c1"
    )]
    pub id: String,
    /// A journal step.
    #[param(
        minimum = 1,
        maximum = 18_446_744_073_709_551_615_u64,
        format = "uint64"
    )]
    pub step: u64,
}

/// `/v1/admin/dead-letters/{seq}`: a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LetterPath {
    /// A dead letter's number.
    #[param(
        minimum = 1,
        maximum = 18_446_744_073_709_551_615_u64,
        format = "uint64"
    )]
    pub seq: u64,
}

/// A JSON integer that may be absent or null, also when written with a zero fraction
/// (`64.0`): JSON Schema's `integer`, which the API's document promises, admits both.
///
/// # Errors
/// A fraction, a negative number, a number past `u64`, or anything but a number or null.
pub fn integer<'de, D: serde::Deserializer<'de>>(input: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(input)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_u64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        // `u64::MAX as f64` is 2^64, one past the largest u64.
        #[allow(clippy::cast_precision_loss)]
        Some(x) if x.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&x) =>
        {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(Some(x as u64))
        }
        _ => Err(D::Error::custom(format!(
            "invalid value: {number}, expected a non-negative integer"
        ))),
    }
}
