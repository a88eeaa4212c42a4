//! The admin routes about one entity: its durable state, journal, past states and pending
//! rows; pausing, resuming, releasing and passivating it; and the paused and quarantined
//! entities of the node.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use perennial_api::admin as api;
use perennial_api::params::{EntityPath, StepPath, page_size};
use perennial_core::Runtime;
use perennial_storage::PendingClass;

use crate::AppState;
use crate::error::ApiError;
use crate::forward::AdminOp;
use crate::ops::{embedded, json_response, run_where_served};

/// The most pending rows one answer lists.
const MAX_PENDING: usize = 1000;

/// The entity's latest durable state
#[utoipa::path(get, path = "/v1/admin/entities/{kind}/{id}", tag = "admin",
    params(EntityPath),
    responses((status = 200, description = "OK", body = api::DurableState)))]
pub(crate) async fn state(
    State(rt): State<Runtime>,
    path: Result<Path<EntityPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    let state = rt.admin().durable_state(&kind, &id).await?;
    Ok(json_response(&api::DurableState {
        kind,
        id,
        state: embedded(&state),
    }))
}

/// The entity's journal (Journal kinds)
#[utoipa::path(get, path = "/v1/admin/entities/{kind}/{id}/history", tag = "admin",
    params(EntityPath, api::StepsQuery),
    responses((status = 200, description = "OK", body = api::History)))]
pub(crate) async fn history(
    State(rt): State<Runtime>,
    path: Result<Path<EntityPath>, PathRejection>,
    steps: Result<Query<api::StepsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    let Query(steps) = steps.map_err(ApiError::from_query)?;
    let history = rt
        .admin()
        .history(&kind, &id, steps.after.unwrap_or(0), page_size(steps.limit))
        .await?
        .into_iter()
        .map(|entry| api::Step {
            step: entry.step,
            at_us: entry.at_us,
            message: entry.message,
            recorded: entry.recorded,
        })
        .collect();
    Ok(json_response(&api::History { kind, id, history }))
}

/// The entity's state as of a step (Journal kinds)
#[utoipa::path(get, path = "/v1/admin/entities/{kind}/{id}/at/{step}", tag = "admin",
    params(StepPath),
    responses((status = 200, description = "OK", body = api::StateAt)))]
pub(crate) async fn state_at(
    State(rt): State<Runtime>,
    path: Result<Path<StepPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(StepPath { kind, id, step }) = path.map_err(ApiError::from_path)?;
    let state = rt.admin().state_at(&kind, &id, step).await?;
    Ok(json_response(&api::StateAt {
        kind,
        id,
        step,
        state: embedded(&state),
    }))
}

/// The entity's timers, messages and effects not applied yet, by number
#[utoipa::path(get, path = "/v1/admin/entities/{kind}/{id}/pending", tag = "admin",
    params(EntityPath),
    responses((status = 200, description = "OK", body = api::Pending)))]
pub(crate) async fn pending(
    State(rt): State<Runtime>,
    path: Result<Path<EntityPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    let rows = rt.admin().pending_of(&kind, &id, MAX_PENDING).await?;
    let retrying: std::collections::HashMap<u64, perennial_core::Retrying> =
        rt.admin().retrying(&kind, &id)?.into_iter().collect();
    let pending = rows
        .iter()
        .map(|p| api::PendingRow {
            failed_attempts: retrying.get(&p.seq).map(|r| r.failed_attempts),
            last_error: retrying.get(&p.seq).map(|r| r.last_error.clone()),
            seq: p.seq,
            class: match p.class {
                PendingClass::Timer => api::PendingClass::Timer,
                PendingClass::Message => api::PendingClass::Message,
                PendingClass::Effect => api::PendingClass::Effect,
                PendingClass::Ask => api::PendingClass::Ask,
            },
            due_ms: p.due_ms,
            target: api::EntityRef {
                kind: p.target.kind.to_string(),
                id: p.target.id.to_string(),
            },
            body: embedded(&p.body),
        })
        .collect();
    Ok(json_response(&api::Pending { kind, id, pending }))
}

/// Delete the entity: its state, journal and rows to itself; its next message starts it afresh
#[utoipa::path(delete, path = "/v1/admin/entities/{kind}/{id}", tag = "admin",
    params(EntityPath, api::DeleteQuery),
    responses((status = 200, description = "Deleted, durably", body = api::Deleted)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    path: Result<Path<EntityPath>, PathRejection>,
    query: Result<Query<api::DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    let Query(api::DeleteQuery { force }) = query.map_err(ApiError::from_query)?;
    run_where_served(AdminOp::Delete { kind, id, force }, &state).await
}

/// Pause the entity durably: calls get 409 paused, timers and messages wait
#[utoipa::path(post, path = "/v1/admin/entities/{kind}/{id}/pause", tag = "admin",
    params(EntityPath),
    responses((status = 200, description = "OK", body = api::PauseState)))]
pub(crate) async fn pause(
    State(state): State<AppState>,
    path: Result<Path<EntityPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Pause { kind, id }, &state).await
}

/// Resume the entity; what waited is delivered in order
#[utoipa::path(post, path = "/v1/admin/entities/{kind}/{id}/resume", tag = "admin",
    params(EntityPath),
    responses((status = 200, description = "OK", body = api::PauseState)))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    path: Result<Path<EntityPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Resume { kind, id }, &state).await
}

/// Release a quarantined entity once its stored bytes are fixed; its next message activates it again
#[utoipa::path(post, path = "/v1/admin/entities/{kind}/{id}/release", tag = "admin",
    params(EntityPath),
    responses((status = 200, description = "OK", body = api::Released)))]
pub(crate) async fn release(
    State(state): State<AppState>,
    path: Result<Path<EntityPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Release { kind, id }, &state).await
}

/// Passivate the entity now, if idle
#[utoipa::path(post, path = "/v1/admin/entities/{kind}/{id}/passivate", tag = "admin",
    params(EntityPath),
    responses((status = 200, description = "OK", body = api::Passivated)))]
pub(crate) async fn passivate(
    State(state): State<AppState>,
    path: Result<Path<EntityPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Passivate { kind, id }, &state).await
}

/// The paused entities
#[utoipa::path(get, path = "/v1/admin/paused", tag = "admin",
    responses((status = 200, description = "OK", body = api::Paused)))]
pub(crate) async fn paused(State(rt): State<Runtime>) -> Response {
    let paused = rt
        .admin()
        .paused()
        .iter()
        .map(|k| api::EntityRef {
            kind: k.kind.to_string(),
            id: k.id.to_string(),
        })
        .collect();
    json_response(&api::Paused { paused })
}

/// The quarantined entities (stored bytes that cannot be read back), with why and since when
#[utoipa::path(get, path = "/v1/admin/quarantined", tag = "admin",
    responses((status = 200, description = "OK", body = api::Quarantine)))]
pub(crate) async fn quarantined(State(rt): State<Runtime>) -> Response {
    let quarantined = rt
        .admin()
        .quarantined()
        .iter()
        .map(|q| api::QuarantinedRow {
            kind: q.key.kind.to_string(),
            id: q.key.id.to_string(),
            code: q.code.to_string(),
            reason: q.reason.clone(),
            since_ms: q.since_ms,
        })
        .collect();
    json_response(&api::Quarantine { quarantined })
}
