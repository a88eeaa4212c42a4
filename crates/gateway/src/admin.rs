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
use perennial_core::{AdminError, CallError, Plumbing, Runtime};
use perennial_storage::{EntityState, StoredDeadLetter};
use perennial_storage::{Filter, Path as StatePath};
use perennial_types::{ShardId, shard_of};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::cluster::Here;
use crate::error::ApiError;
use crate::forward::{AdminOp, Request};

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
    let served = Plumbing::of(&state.rt).served_shards().len();
    let Some(router) = &state.router else {
        return json_response(&json!({"node": null, "served_shards": served, "members": []}));
    };
    let members: Vec<Value> = router
        .cluster()
        .members()
        .into_iter()
        .map(|m| json!({"node": m.node, "address": m.address, "shards": m.shards}))
        .collect();
    json_response(&json!({
        "node": router.cluster().node(),
        "served_shards": served,
        "members": members,
    }))
}

fn json_response(value: &impl Serialize) -> Response {
    axum::Json(value).into_response()
}

/// JSON text as a value; text that is not JSON (which the runtime never stores) as a string.
fn embedded(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

async fn kinds(State(rt): State<Runtime>) -> Result<Response, ApiError> {
    let stats = rt.stats();
    let mut stored = Vec::with_capacity(stats.kinds.len());
    for k in &stats.kinds {
        stored.push(rt.admin().stored(&k.kind).await?);
    }
    let kinds: Vec<Value> = stats
        .kinds
        .iter()
        .zip(stored)
        .map(|(k, stored)| {
            json!({
                "kind": k.kind,
                "persistence": k.persistence,
                "stored": stored,
                "resident": k.resident,
                "activations": k.activations,
                "passivations": k.passivations,
                "restarts": k.restarts,
                "dead_letters": k.dead_letters,
            })
        })
        .collect();
    Ok(json_response(&json!({ "kinds": kinds })))
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
    Ok(json_response(
        &json!({ "kind": kind, "entities": entities, "next": next }),
    ))
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
    let entities: Vec<Value> = found.iter().map(state_json).collect();
    Ok(json_response(
        &json!({ "kind": kind, "entities": entities, "next": next }),
    ))
}

fn state_json(e: &EntityState) -> Value {
    json!({
        "id": e.id,
        "state": embedded(&e.state),
        "version": e.version,
        "updated_at_ms": e.updated_at_ms,
    })
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
    AdminOp::Pause { kind, id }.run_where_served(&state).await
}

async fn resume(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    AdminOp::Resume { kind, id }.run_where_served(&state).await
}

async fn paused(State(rt): State<Runtime>) -> Response {
    let paused: Vec<Value> = rt
        .admin()
        .paused()
        .iter()
        .map(|k| json!({ "kind": &*k.kind, "id": k.id.as_str() }))
        .collect();
    json_response(&json!({ "paused": paused }))
}

async fn quarantined(State(rt): State<Runtime>) -> Response {
    let quarantined: Vec<Value> = rt
        .admin()
        .quarantined()
        .iter()
        .map(|q| {
            json!({
                "kind": &*q.key.kind,
                "id": q.key.id.as_str(),
                "code": q.code,
                "reason": q.reason,
                "since_ms": q.since_ms,
            })
        })
        .collect();
    json_response(&json!({ "quarantined": quarantined }))
}

async fn release(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    AdminOp::Release { kind, id }.run_where_served(&state).await
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
    AdminOp::Passivate { kind, id }
        .run_where_served(&state)
        .await
}

#[derive(Deserialize)]
struct LetterFilter {
    kind: Option<String>,
}

fn letter_json(l: &StoredDeadLetter) -> Value {
    json!({
        "seq": l.seq,
        "kind": &*l.letter.key.kind,
        "id": l.letter.key.id.as_str(),
        "message": embedded(&l.letter.message),
        "error": l.letter.error,
        "attempts": l.letter.attempts,
        "at_ms": l.letter.at_ms,
    })
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
    let letters: Vec<Value> = letters.iter().map(letter_json).collect();
    Ok(json_response(&json!({ "dead_letters": letters })))
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
    Ok(json_response(&letter_json(&letter)))
}

async fn retry(
    State(state): State<AppState>,
    seq: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(seq) = seq.map_err(ApiError::from_path)?;
    AdminOp::Retry { seq }.run_where_served(&state).await
}

async fn discard(
    State(state): State<AppState>,
    seq: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(seq) = seq.map_err(ApiError::from_path)?;
    AdminOp::Discard { seq }.run_where_served(&state).await
}

impl AdminOp {
    /// Runs it here, or on the node that serves its entity.
    async fn run_where_served(self, state: &AppState) -> Result<Response, ApiError> {
        let rt = &state.rt;
        let Some(router) = &state.router else {
            return match self.run(rt).await {
                Here::Answer(answer) => answer,
                Here::NotServed => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_owner",
                    "this node does not serve the entity now; retry",
                )),
            };
        };
        let shard = self.shard(rt).await?;
        // Applying a dead letter again could apply it twice; the others may be repeated.
        let safe_to_repeat = !matches!(self, Self::Retry { .. });
        router
            .route(
                shard,
                safe_to_repeat,
                || self.run(rt),
                || Request::Admin(self.clone()),
            )
            .await
    }

    /// The shard of the entity it is about.
    async fn shard(&self, rt: &Runtime) -> Result<ShardId, ApiError> {
        match self {
            Self::Pause { kind, id }
            | Self::Resume { kind, id }
            | Self::Passivate { kind, id }
            | Self::Release { kind, id } => Ok(shard_of(kind, id)),
            Self::Retry { seq } | Self::Discard { seq } => {
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

    /// Runs it on this node.
    pub(crate) async fn run(&self, rt: &Runtime) -> Here {
        let result = match self {
            Self::Pause { kind, id } => rt
                .admin()
                .pause(kind, id)
                .await
                .map(|changed| json!({ "paused": true, "changed": changed })),
            Self::Resume { kind, id } => rt
                .admin()
                .resume(kind, id)
                .await
                .map(|changed| json!({ "paused": false, "changed": changed })),
            Self::Passivate { kind, id } => rt
                .admin()
                .passivate(kind, id)
                .map(|outcome| json!({ "outcome": outcome })),
            Self::Release { kind, id } => rt
                .admin()
                .release(kind, id)
                .map(|released| json!({ "released": released })),
            Self::Retry { seq } => match rt.admin().retry_dead_letter(*seq).await {
                Ok(reply) => Ok(json!({ "reply": embedded(&reply) })),
                Err(e) if not_served(&e) => return Here::NotServed,
                Err(e) => return Here::Answer(Err(e.into())),
            },
            Self::Discard { seq } => match rt.admin().discard_dead_letter(*seq).await {
                Ok(true) => Ok(json!({ "discarded": seq })),
                Ok(false) => Err(AdminError::NoSuchLetter(*seq)),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(value) => Here::Answer(Ok(json_response(&value))),
            Err(e) if not_served(&e) => Here::NotServed,
            Err(e) => Here::Answer(Err(e.into())),
        }
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

impl ApiError {
    pub(crate) fn from_query(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
    }
}
