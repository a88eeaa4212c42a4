//! The one mapping from errors to HTTP responses.
//!
//! Runtime errors keep their stable code. Messages for `4xx` say what was wrong with the
//! request; messages for `5xx` say what happened without internal detail (panic text, storage
//! errors and paths are logged, not sent).

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use perennial_api::error::{ErrorBody, ErrorDetail};
use perennial_core::{AdminError, CallError, FeedError, JsonRejection, Refusal};

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    /// An error with a status, a stable code and a message for the client.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The response's body: `{"error": {"code": …, "message": …}}`.
    pub(crate) fn body(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.clone(),
                message: self.message.clone(),
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    pub(crate) fn from_path(rejection: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    }

    pub(crate) fn from_body(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the message is larger than this gateway accepts",
            )
        } else {
            Self::new(StatusCode::BAD_REQUEST, "bad_body", rejection.body_text())
        }
    }
}

impl From<CallError> for ApiError {
    fn from(error: CallError) -> Self {
        Self::from(error.map_rejection(|never| -> JsonRejection { match never {} }))
    }
}

impl From<CallError<JsonRejection>> for ApiError {
    fn from(error: CallError<JsonRejection>) -> Self {
        let code = error.code().to_owned();
        let (status, message) = match &error {
            CallError::Rejected(r) => {
                let status = match r.refusal {
                    Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
                    Refusal::Forbidden => StatusCode::FORBIDDEN,
                    _ => StatusCode::BAD_REQUEST,
                };
                (status, r.message.clone())
            }
            CallError::BadMessage { .. }
            | CallError::InvalidId(_)
            | CallError::InvalidIdempotencyKey(_) => (StatusCode::BAD_REQUEST, error.to_string()),
            CallError::UnknownKind(_) => (StatusCode::NOT_FOUND, error.to_string()),
            CallError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
            CallError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
            CallError::Panicked { key, .. } => {
                tracing::warn!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the handler of {key} panicked; nothing changed"),
                )
            }
            CallError::DeadLettered { key, attempts, .. } => {
                tracing::warn!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "the message to {key} failed {attempts} times and was set aside as a dead letter"
                    ),
                )
            }
            CallError::CorruptState { key, .. } => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the stored state of {key} cannot be decoded; it was left untouched"),
                )
            }
            // An old node meeting state written by a newer one (a rolling upgrade, a
            // rollback): the newer build serves it.
            CallError::StateTooNew {
                key,
                schema,
                supported,
            } => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the stored state of {key} has schema version {schema}, newer than this \
                         node's {supported}: it was left untouched; a node running the newer \
                         build serves it"
                    ),
                )
            }
            CallError::MigrationFailed { key, from, .. } => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "the stored state of {key} cannot be migrated from schema version \
                         {from} (see the node's log); it was left untouched and quarantined"
                    ),
                )
            }
            CallError::Unencodable { key, .. } => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the new state of {key} cannot be encoded; nothing changed"),
                )
            }
            CallError::UnencodableReply { key, .. } => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "the step for {key} was applied, but its reply cannot be encoded as JSON; do not retry"
                    ),
                )
            }
            CallError::Storage { key, .. } if code == "storage_corrupt" => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("stored data for {key} is corrupt"),
                )
            }
            // The runtime logs failed batches; a line per call would flood the log.
            CallError::Storage { key, .. } if code == "storage_full" => {
                tracing::debug!(%error, "call failed");
                (
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "the node's storage is full, so the step for {key} was not applied; \
                         free space on the node, then retry"
                    ),
                )
            }
            CallError::Storage { key, .. } if code == "storage_io" => {
                tracing::debug!(%error, "call failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the step for {key} could not be made durable (a disk I/O error) and \
                         may or may not have been applied; retry with the same Idempotency-Key"
                    ),
                )
            }
            CallError::Storage { key, .. } => {
                tracing::debug!(%error, "call failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the step for {key} could not be made durable and may not have been applied; retry later"
                    ),
                )
            }
            CallError::ReplayDiverged { key, step, .. } => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "{key} cannot be activated: replaying its journal diverged at step {step} \
                         (see the node's log); its journal was left untouched"
                    ),
                )
            }
            CallError::NoHistory { .. } => (StatusCode::NOT_FOUND, error.to_string()),
            CallError::Paused(_) => (StatusCode::CONFLICT, error.to_string()),
            CallError::Internal(_) => (StatusCode::FORBIDDEN, error.to_string()),
            CallError::Quarantined(key) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{key} is quarantined: its stored bytes cannot be read back, and are kept as \
                     they are; an operator can see why (GET /v1/admin/quarantined), fix them, \
                     and release it"
                ),
            ),
            CallError::NotWatchable(_) => (StatusCode::BAD_REQUEST, error.to_string()),
            CallError::NotOwner { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{error}; retry, or call a node that serves it"),
            ),
            CallError::Fenced { key, .. } => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("this node no longer owns {key}; nothing changed, retry later"),
                )
            }
            _ => {
                tracing::error!(%error, "call failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the call failed".to_owned(),
                )
            }
        };
        Self {
            status,
            code,
            message,
        }
    }
}

impl From<FeedError> for ApiError {
    fn from(error: FeedError) -> Self {
        let status = match &error {
            FeedError::UnknownKind(_) => StatusCode::NOT_FOUND,
            FeedError::NoFeed(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%error, "a change feed read failed");
            return Self::new(status, error.code(), "storage is unavailable; retry later");
        }
        Self::new(status, error.code(), error.to_string())
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        let code = error.code().to_owned();
        let (status, message) = match &error {
            AdminError::Entity(e) => return Self::from(e.clone()),
            AdminError::UnknownKind(_)
            | AdminError::NoSuchLetter(_)
            | AdminError::NoSuchEntity(_) => (StatusCode::NOT_FOUND, error.to_string()),
            AdminError::InvalidId(_)
            | AdminError::NotStored(_)
            | AdminError::NotIndexable(_)
            | AdminError::Store(perennial_storage::Error::Invalid(_)) => {
                (StatusCode::BAD_REQUEST, error.to_string())
            }
            AdminError::LetterBusy(_) | AdminError::Busy(_) => {
                (StatusCode::CONFLICT, error.to_string())
            }
            AdminError::NotOwner { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{error}; retry, or call a node that serves it"),
            ),
            AdminError::Store(_) => {
                tracing::error!(%error, "admin request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage is unavailable; retry later".to_owned(),
                )
            }
            _ => {
                tracing::error!(%error, "admin request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the request failed".to_owned(),
                )
            }
        };
        Self {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
