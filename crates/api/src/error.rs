//! The body of every error answer of the HTTP API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": {"code": …, "message": …}}`: what every `4xx` and `5xx` answer carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error: a stable code to match on, and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, `snake_case` name, such as `not_owner` or a kind's own rejection code.
    #[schema(example = "unknown_kind")]
    pub code: String,
    /// What happened, and what to do about it.
    pub message: String,
}
