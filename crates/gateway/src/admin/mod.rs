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
//! - `DELETE /v1/admin/entities/{kind}/{id}?force=B`: deletes it, durably, as a step calling
//!   `ctx.delete()` would: its state, journal and rows to itself; its next message starts it
//!   afresh. Refused with `409 busy` while it has messages in flight, unless `force`.
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
//! - `GET  /v1/admin/cluster`: this node's name, the shards it serves, and the live members.
//!
//! Each handler's `#[utoipa::path]` attribute is its entry in `/openapi.json` (see
//! [`crate::openapi`]); the bodies are the types of [`perennial_api::admin`].

mod entities;
mod kinds;
mod letters;

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use perennial_api::admin as api;
use perennial_core::Plumbing;

use crate::error::ApiError;
use crate::ops::json_response;

pub(crate) use entities::*;
pub(crate) use kinds::*;
pub(crate) use letters::*;

pub(crate) fn routes() -> Router<crate::AppState> {
    Router::new()
        .route("/v1/admin/kinds", get(kinds))
        .route("/v1/admin/kinds/{kind}/entities", get(entities))
        .route("/v1/admin/kinds/{kind}/query", get(query))
        .route(
            "/v1/admin/kinds/{kind}/indexes",
            get(indexes).post(create_index),
        )
        .route(
            "/v1/admin/kinds/{kind}/indexes/{path}",
            get(index).delete(drop_index),
        )
        .route("/v1/admin/kinds/{kind}/passivate", post(passivate_kind))
        .route(
            "/v1/admin/kinds/{kind}/migrate",
            get(crate::migrations::status).post(crate::migrations::start),
        )
        .route("/v1/admin/entities/{kind}/{id}", get(state).delete(delete))
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

/// This node's view of the cluster: its name, the shards it serves, the live members and how many shards each holds (outside a cluster: no name, no members, every shard served)
#[utoipa::path(get, path = "/v1/admin/cluster", tag = "admin",
    responses((status = 200, description = "OK", body = api::ClusterInfo)))]
pub(crate) async fn cluster(State(state): State<crate::AppState>) -> Response {
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
            build: m.build,
        })
        .collect();
    json_response(&api::ClusterInfo {
        node: Some(router.cluster().node().to_owned()),
        served_shards,
        members,
    })
}

impl ApiError {
    pub(crate) fn from_query(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
    }
}
