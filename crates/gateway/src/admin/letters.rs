//! The admin routes about dead letters: list them, show one, retry or discard it.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use perennial_api::admin as api;
use perennial_api::params::LetterPath;
use perennial_core::{AdminError, Runtime};
use perennial_storage::StoredDeadLetter;

use crate::AppState;
use crate::error::ApiError;
use crate::forward::AdminOp;
use crate::ops::{embedded, json_response, run_where_served};

fn letter_row(l: &StoredDeadLetter) -> api::DeadLetterRow {
    api::DeadLetterRow {
        seq: l.seq,
        kind: l.letter.key.kind.to_string(),
        id: l.letter.key.id.to_string(),
        message: embedded(&l.letter.message),
        error: l.letter.error.clone(),
        attempts: l.letter.attempts,
        at_ms: l.letter.at_ms,
    }
}

/// The dead letters, oldest first
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin",
    params(api::LetterQuery),
    responses((status = 200, description = "OK", body = api::DeadLetters)))]
pub(crate) async fn dead_letters(
    State(rt): State<Runtime>,
    filter: Result<Query<api::LetterQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = filter.map_err(ApiError::from_query)?;
    let letters = rt
        .admin()
        .dead_letters(filter.kind.as_deref())
        .await
        .map_err(|e| ApiError::from(AdminError::Store(e)))?;
    let dead_letters = letters.iter().map(letter_row).collect();
    Ok(json_response(&api::DeadLetters { dead_letters }))
}

/// One dead letter: message, panic text, attempts
#[utoipa::path(get, path = "/v1/admin/dead-letters/{seq}", tag = "admin",
    params(LetterPath),
    responses((status = 200, description = "OK", body = api::DeadLetterRow)))]
pub(crate) async fn dead_letter(
    State(rt): State<Runtime>,
    path: Result<Path<LetterPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(LetterPath { seq }) = path.map_err(ApiError::from_path)?;
    let letter = rt
        .admin()
        .dead_letter(seq)
        .await
        .map_err(|e| ApiError::from(AdminError::Store(e)))?
        .ok_or_else(|| ApiError::from(AdminError::NoSuchLetter(seq)))?;
    Ok(json_response(&letter_row(&letter)))
}

/// Apply the letter's message again; the step that applies it deletes it
#[utoipa::path(post, path = "/v1/admin/dead-letters/{seq}/retry", tag = "admin",
    params(LetterPath),
    responses((status = 200, description = "OK", body = api::Retried)))]
pub(crate) async fn retry(
    State(state): State<AppState>,
    path: Result<Path<LetterPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(LetterPath { seq }) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Retry { seq }, &state).await
}

/// Delete the letter unapplied
#[utoipa::path(post, path = "/v1/admin/dead-letters/{seq}/discard", tag = "admin",
    params(LetterPath),
    responses((status = 200, description = "OK", body = api::Discarded)))]
pub(crate) async fn discard(
    State(state): State<AppState>,
    path: Result<Path<LetterPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(LetterPath { seq }) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Discard { seq }, &state).await
}
