//! The admin API, under `/v1/admin`: what operators do to a running node. Every route needs
//! the admin token (see [`Options::admin`](crate::Options::admin)).
//!
//! - `GET  /v1/admin/kinds`: the registered kinds with the entities each has stored and
//!   resident, and their counters.
//! - `GET  /v1/admin/kinds/{kind}/entities?after=ID&limit=N`: a page of the kind's entities
//!   (at most 1,000, default 100) in id order, with `resident`, `state_version`, `last_step`
//!   and `updated_at_ms`; `next` is the `after` of the next page, or `null` at the end.
//! - `GET  /v1/admin/kinds/{kind}/query?filter=F&after=ID&limit=N`: a page of the kind's
//!   stored entities whose state matches the filter (`pot > 100`,
//!   `players[*].name = 'alice'`; see [`perennial_storage::filter`]), with their states.
//! - `GET  /v1/admin/kinds/{kind}/indexes`: the paths the kind's states are indexed by.
//! - `POST /v1/admin/kinds/{kind}/indexes` with `{"path": "owner"}`: indexes them by a path
//!   (`201`); queries comparing that path no longer read every state.
//! - `DELETE /v1/admin/kinds/{kind}/indexes?path=P`: drops an index.
//! - `POST /v1/admin/kinds/{kind}/passivate`: passivates every idle entity of the kind now.
//! - `POST|GET /v1/admin/kinds/{kind}/migrate`: starts a migration pass in the background,
//!   and follows it (see [`crate::migrations`]).
//! - `GET  /v1/admin/entities/{kind}/{id}`: the entity's latest durable state.
//! - `GET  /v1/admin/entities/{kind}/{id}/history?after=STEP&limit=N`: its journal.
//! - `GET  /v1/admin/entities/{kind}/{id}/at/{step}`: its state as of a step.
//! - `GET  /v1/admin/entities/{kind}/{id}/pending`: its timers, messages to other entities
//!   and effects not applied yet (at most 1,000, by number), with when each is due.
//! - `POST /v1/admin/entities/{kind}/{id}/passivate`: passivates it now, if idle.
//! - `POST /v1/admin/entities/{kind}/{id}/pause`: pauses it, durably: its calls get `409
//!   paused` (they are refused, not queued: the caller decides when to retry), while its
//!   timers and messages from other entities wait in storage.
//! - `POST /v1/admin/entities/{kind}/{id}/resume`: resumes it; what waited is delivered in
//!   order. Both answer `{"paused": …, "changed": …}`.
//! - `GET  /v1/admin/paused`: the paused entities.
//! - `GET  /v1/admin/quarantined`: the entities whose stored bytes cannot be read back (an
//!   undecodable state, a journal whose replay diverged), with why and since when: their
//!   calls get `500 quarantined`, their timers and messages wait, and their bytes are kept.
//! - `POST /v1/admin/entities/{kind}/{id}/release`: releases one, once its bytes are fixed:
//!   the next message activates it again. Answers `{"released": …}`.
//! - `GET  /v1/admin/dead-letters?kind=K`: the dead letters, oldest first.
//! - `GET  /v1/admin/dead-letters/{seq}`: one, with its message, panic text and attempts.
//! - `POST /v1/admin/dead-letters/{seq}/retry`: applies its message again; the reply is
//!   `{"reply": …}`, and the letter is deleted by the step that applies it.
//! - `POST /v1/admin/dead-letters/{seq}/discard`: deletes it unapplied.
//! - `GET  /v1/admin/cluster`: this node's name, the shards it serves, and the live members
//!   with how many shards each holds (outside a cluster: no name, no members, every shard).

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use perennial_api::admin as api;
use perennial_core::{AdminError, Plumbing, Runtime};
use perennial_storage::{EntityState, StoredDeadLetter};
use perennial_storage::{Filter, Path as StatePath};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::forward::AdminOp;
use crate::ops::{embedded, json_response, run_where_served};

/// The most entities one page lists.
const MAX_PAGE: usize = 1000;

pub(crate) fn routes() -> Router<crate::AppState> {
    Router::new()
        .route("/v1/admin/kinds", get(kinds))
        .route("/v1/admin/kinds/{kind}/entities", get(entities))
        .route("/v1/admin/kinds/{kind}/query", get(query))
        .route(
            "/v1/admin/kinds/{kind}/indexes",
            get(indexes).post(create_index).delete(drop_index),
        )
        .route("/v1/admin/kinds/{kind}/passivate", post(passivate_kind))
        .route(
            "/v1/admin/kinds/{kind}/migrate",
            get(crate::migrations::status).post(crate::migrations::start),
        )
        .route("/v1/admin/entities/{kind}/{id}", get(state))
        .route("/v1/admin/entities/{kind}/{id}/history", get(history))
        .route("/v1/admin/entities/{kind}/{id}/pending", get(pending))
        .route("/v1/admin/entities/{kind}/{id}/at/{step}", get(state_at))
        .route("/v1/admin/entities/{kind}/{id}/passivate", post(passivate))
        .route("/v1/admin/entities/{kind}/{id}/pause", post(pause))
        .route("/v1/admin/entities/{kind}/{id}/resume", post(resume))
        .route("/v1/admin/paused", get(paused))
        .route("/v1/admin/quarantined", get(quarantined))
        .route("/v1/admin/entities/{kind}/{id}/release", post(release))
        .route("/v1/admin/dead-letters", get(dead_letters))
        .route("/v1/admin/dead-letters/{seq}", get(dead_letter))
        .route("/v1/admin/dead-letters/{seq}/retry", post(retry))
        .route("/v1/admin/dead-letters/{seq}/discard", post(discard))
        .route("/v1/admin/cluster", get(cluster))
}

async fn cluster(State(state): State<crate::AppState>) -> Response {
    let served_shards = Plumbing::of(&state.rt).served_shards().len();
    let Some(router) = &state.router else {
        return json_response(&api::ClusterInfo {
            node: None,
            served_shards,
            members: Vec::new(),
        });
    };
    let members = router
        .cluster()
        .members()
        .into_iter()
        .map(|m| api::Member {
            node: m.node,
            address: m.address,
            shards: m.shards,
        })
        .collect();
    json_response(&api::ClusterInfo {
        node: Some(router.cluster().node().to_owned()),
        served_shards,
        members,
    })
}

async fn kinds(State(rt): State<Runtime>) -> Result<Response, ApiError> {
    let stats = rt.stats();
    let mut stored = Vec::with_capacity(stats.kinds.len());
    for k in &stats.kinds {
        stored.push(rt.admin().stored(&k.kind).await?);
    }
    let kinds = stats
        .kinds
        .iter()
        .zip(stored)
        .map(|(k, stored)| api::KindInfo {
            kind: k.kind.clone(),
            persistence: k.persistence.and_then(|p| {
                serde_json::to_value(p)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
            }),
            stored,
            resident: k.resident,
            activations: k.activations,
            passivations: k.passivations,
            restarts: k.restarts,
            dead_letters: k.dead_letters,
        })
        .collect();
    Ok(json_response(&api::Kinds { kinds }))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

async fn entities(
    State(rt): State<Runtime>,
    kind: Result<Path<String>, PathRejection>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(kind) = kind.map_err(ApiError::from_path)?;
    let Query(page) = page.map_err(ApiError::from_query)?;
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let entities = rt
        .admin()
        .entities(&kind, page.after.as_deref(), limit)
        .await?;
    let next = (entities.len() == limit)
        .then(|| entities.last().map(|e| e.id.clone()))
        .flatten();
    let entities = entities
        .into_iter()
        .map(|e| api::EntityRow {
            id: e.id,
            resident: e.resident,
            paused: e.paused,
            state_version: e.state_version,
            schema: e.schema,
            last_step: e.last_step,
            updated_at_ms: e.updated_at_ms,
        })
        .collect();
    Ok(json_response(&api::Entities {
        kind,
        entities,
        next,
    }))
}

#[derive(Deserialize)]
struct QueryParams {
    filter: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn query(
    State(rt): State<Runtime>,
    kind: Result<Path<String>, PathRejection>,
    params: Result<Query<QueryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(kind) = kind.map_err(ApiError::from_path)?;
    let Query(params) = params.map_err(ApiError::from_query)?;
    let filter = Filter::parse(&params.filter)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_filter", e.to_string()))?;
    let limit = params.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let found = rt
        .admin()
        .query(&kind, &filter, params.after.as_deref(), limit)
        .await?;
    let next = (found.len() == limit)
        .then(|| found.last().map(|e| e.id.clone()))
        .flatten();
    let entities = found.iter().map(state_row).collect();
    Ok(json_response(&api::Matches {
        kind,
        entities,
        next,
    }))
}

fn state_row(e: &EntityState) -> api::StateRow {
    api::StateRow {
        id: e.id.clone(),
        state: embedded(&e.state),
        version: e.version,
        updated_at_ms: e.updated_at_ms,
    }
}

fn parse_path(text: &str) -> Result<StatePath, ApiError> {
    StatePath::parse(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.to_string()))
}

async fn indexes(
    State(rt): State<Runtime>,
    kind: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(kind) = kind.map_err(ApiError::from_path)?;
    let paths: Vec<String> = rt
        .admin()
        .indexes(&kind)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(json_response(&json!({ "kind": kind, "indexes": paths })))
}

#[derive(Deserialize)]
struct IndexPath {
    path: String,
}

async fn create_index(
    State(rt): State<Runtime>,
    kind: Result<Path<String>, PathRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(kind) = kind.map_err(ApiError::from_path)?;
    // Like calls, any content type: `curl -d` sends a form type.
    let body = body.map_err(ApiError::from_body)?;
    let body: IndexPath = serde_json::from_slice(&body).map_err(|e| {
        let expected = r#"the body must be {"path": "…"}"#;
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("{expected}: {e}"),
        )
    })?;
    let path = parse_path(&body.path)?;
    rt.admin().create_index(&kind, &path).await?;
    let created = json!({ "kind": kind, "path": path.to_string() });
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

async fn drop_index(
    State(rt): State<Runtime>,
    kind: Result<Path<String>, PathRejection>,
    params: Result<Query<IndexPath>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(kind) = kind.map_err(ApiError::from_path)?;
    let Query(params) = params.map_err(ApiError::from_query)?;
    let path = parse_path(&params.path)?;
    if rt.admin().drop_index(&kind, &path).await? {
        Ok(json_response(
            &json!({ "kind": kind, "dropped": path.to_string() }),
        ))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_index",
            format!("{kind} has no index by `{path}`; list them with GET …/indexes"),
        ))
    }
}

async fn pause(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Pause { kind, id }, &state).await
}

async fn resume(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Resume { kind, id }, &state).await
}

async fn paused(State(rt): State<Runtime>) -> Response {
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

async fn quarantined(State(rt): State<Runtime>) -> Response {
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

async fn release(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Release { kind, id }, &state).await
}

async fn passivate_kind(
    State(rt): State<Runtime>,
    kind: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(kind) = kind.map_err(ApiError::from_path)?;
    let (passivated, busy) = rt.admin().passivate_kind(&kind)?;
    Ok(json_response(
        &json!({ "passivated": passivated, "busy": busy }),
    ))
}

async fn pending(
    State(rt): State<Runtime>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    let rows = rt.admin().pending_of(&kind, &id, MAX_PAGE).await?;
    let rows: Vec<Value> = rows
        .iter()
        .map(|p| {
            let class = match p.class {
                perennial_storage::PendingClass::Timer => "timer",
                perennial_storage::PendingClass::Message => "message",
                perennial_storage::PendingClass::Effect => "effect",
            };
            json!({
                "seq": p.seq,
                "class": class,
                "due_ms": p.due_ms,
                "target": {"kind": &*p.target.kind, "id": p.target.id.as_str()},
                "body": embedded(&p.body),
            })
        })
        .collect();
    Ok(json_response(
        &json!({ "kind": kind, "id": id, "pending": rows }),
    ))
}

async fn state(
    State(rt): State<Runtime>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    let state = rt.admin().durable_state(&kind, &id).await?;
    Ok(json_response(
        &json!({ "kind": kind, "id": id, "state": embedded(&state) }),
    ))
}

#[derive(Deserialize)]
struct Steps {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn history(
    State(rt): State<Runtime>,
    path: Result<Path<(String, String)>, PathRejection>,
    steps: Result<Query<Steps>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    let Query(steps) = steps.map_err(ApiError::from_query)?;
    let limit = steps.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let history = rt
        .admin()
        .history(&kind, &id, steps.after.unwrap_or(0), limit)
        .await?;
    Ok(json_response(
        &json!({ "kind": kind, "id": id, "history": history }),
    ))
}

async fn state_at(
    State(rt): State<Runtime>,
    path: Result<Path<(String, String, u64)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id, step)) = path.map_err(ApiError::from_path)?;
    let state = rt.admin().state_at(&kind, &id, step).await?;
    Ok(json_response(
        &json!({ "kind": kind, "id": id, "step": step, "state": embedded(&state) }),
    ))
}

async fn passivate(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Passivate { kind, id }, &state).await
}

#[derive(Deserialize)]
struct LetterFilter {
    kind: Option<String>,
}

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

async fn dead_letters(
    State(rt): State<Runtime>,
    filter: Result<Query<LetterFilter>, QueryRejection>,
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

async fn dead_letter(
    State(rt): State<Runtime>,
    seq: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(seq) = seq.map_err(ApiError::from_path)?;
    let letter = rt
        .admin()
        .dead_letter(seq)
        .await
        .map_err(|e| ApiError::from(AdminError::Store(e)))?
        .ok_or_else(|| ApiError::from(AdminError::NoSuchLetter(seq)))?;
    Ok(json_response(&letter_row(&letter)))
}

async fn retry(
    State(state): State<AppState>,
    seq: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(seq) = seq.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Retry { seq }, &state).await
}

async fn discard(
    State(state): State<AppState>,
    seq: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(seq) = seq.map_err(ApiError::from_path)?;
    run_where_served(AdminOp::Discard { seq }, &state).await
}

impl ApiError {
    pub(crate) fn from_query(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
    }
}
