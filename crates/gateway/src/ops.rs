//! Operators' requests about one entity (pause, resume, passivate, release, delete, retry or
//! discard a dead letter): only the node that serves the entity can carry one out, so in a cluster
//! another node forwards it there ([`AdminOp`] on the internal route).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use perennial_api::admin as api;
use perennial_core::{AdminError, CallError, Passivation, Runtime};
use perennial_types::{ShardId, shard_of};
use serde::Serialize;
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;
use crate::forward::{AdminOp, Request};

/// What running a request on this node gave.
pub(crate) enum Here {
    /// The answer.
    Answer(Result<Response, ApiError>),
    /// This node does not serve the entity's shard (or lost it during the step): nothing was
    /// applied.
    NotServed,
}

pub(crate) fn json_response(value: &impl Serialize) -> Response {
    axum::Json(value).into_response()
}

/// JSON text as a value; text that is not JSON (which the runtime never stores) as a string.
pub(crate) fn embedded(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Runs an operator's request here, or on the node that serves its entity.
pub(crate) async fn run_where_served(op: AdminOp, state: &AppState) -> Result<Response, ApiError> {
    let rt = &state.rt;
    let Some(router) = &state.router else {
        return match run_here(&op, rt).await {
            Here::Answer(answer) => answer,
            Here::NotServed => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_owner",
                "this node does not serve the entity now; retry",
            )),
        };
    };
    let shard = shard_of_op(&op, rt).await?;
    // Applying a dead letter again could apply it twice; the others may be repeated.
    let safe_to_repeat = !matches!(op, AdminOp::Retry { .. });
    router
        .route(
            shard,
            safe_to_repeat,
            || run_here(&op, rt),
            || Request::Admin(op.clone()),
        )
        .await
}

/// The shard of the entity a request is about.
async fn shard_of_op(op: &AdminOp, rt: &Runtime) -> Result<ShardId, ApiError> {
    match op {
        AdminOp::Pause { kind, id }
        | AdminOp::Resume { kind, id }
        | AdminOp::Passivate { kind, id }
        | AdminOp::Release { kind, id }
        | AdminOp::Delete { kind, id, .. } => Ok(shard_of(kind, id)),
        AdminOp::Retry { seq } | AdminOp::Discard { seq } => {
            let letter = rt
                .admin()
                .dead_letter(*seq)
                .await
                .map_err(|e| ApiError::from(AdminError::Store(e)))?
                .ok_or_else(|| ApiError::from(AdminError::NoSuchLetter(*seq)))?;
            let key = &letter.letter.key;
            Ok(shard_of(&key.kind, key.id.as_str()))
        }
    }
}

/// Runs an operator's request on this node.
pub(crate) async fn run_here(op: &AdminOp, rt: &Runtime) -> Here {
    let admin = rt.admin();
    let result = match op {
        AdminOp::Pause { kind, id } => admin.pause(kind, id).await.map(|changed| {
            json_response(&api::PauseState {
                paused: true,
                changed,
            })
        }),
        AdminOp::Resume { kind, id } => admin.resume(kind, id).await.map(|changed| {
            json_response(&api::PauseState {
                paused: false,
                changed,
            })
        }),
        AdminOp::Passivate { kind, id } => admin.passivate(kind, id).map(|outcome| {
            let outcome = match outcome {
                Passivation::Passivated => api::Passivation::Passivated,
                Passivation::Busy => api::Passivation::Busy,
                Passivation::NotResident => api::Passivation::NotResident,
            };
            json_response(&api::Passivated { outcome })
        }),
        AdminOp::Release { kind, id } => admin
            .release(kind, id)
            .map(|released| json_response(&api::Released { released })),
        AdminOp::Delete { kind, id, force } => admin.delete(kind, id, *force).await.map(|()| {
            json_response(&api::Deleted {
                kind: kind.clone(),
                id: id.clone(),
                deleted: true,
            })
        }),
        AdminOp::Retry { seq } => admin.retry_dead_letter(*seq).await.map(|reply| {
            json_response(&api::Retried {
                reply: embedded(&reply),
            })
        }),
        AdminOp::Discard { seq } => match admin.discard_dead_letter(*seq).await {
            Ok(true) => Ok(json_response(&api::Discarded { discarded: *seq })),
            Ok(false) => Err(AdminError::NoSuchLetter(*seq)),
            Err(e) => Err(e),
        },
    };
    match result {
        Err(e) if not_served(&e) => Here::NotServed,
        answer => Here::Answer(answer.map_err(ApiError::from)),
    }
}

/// Whether this node did not carry out an entity's request because it does not serve the
/// entity (now, or any more): the node that does can.
fn not_served(error: &AdminError) -> bool {
    matches!(
        error,
        AdminError::NotOwner { .. }
            | AdminError::Entity(CallError::NotOwner { .. } | CallError::Fenced { .. })
    )
}
