//! `GET /v1/{kind}/{id}/watch`: an entity's committed state changes as Server-Sent Events.
//!
//! The first event is the entity's current durable state (none if it has no state yet);
//! each later event is a change, sent once the step that made it is durable, never before.
//! Each event is `event: state`, its `data` the state's JSON, and (for changes) its `id` the
//! entity's version; a kind whose state is not for every caller
//! ([`Process::WATCH_SHOWS_STATE`](perennial_core::Process::WATCH_SHOWS_STATE), such as the
//! demo's poker table) sends `event: changed` (`data: null`) instead, and clients ask the
//! entity for what they may see. A step that deleted the entity sends `event: deleted` (`data: null`),
//! and the entity's next message starts it afresh. A client that falls far behind skips to newer states: each event is a
//! whole state, so the last one received is always the entity's state. A comment is sent
//! every 15 seconds to keep proxies from closing the stream.
//!
//! In a cluster, a node that does not own the entity answers `307` to the owner's watch
//! route; the stream ends when the entity's shard moves to another node, and the client
//! (an `EventSource` does so by itself) connects again.

use std::convert::Infallible;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures::Stream;
use perennial_api::client::WatchEvent;
use perennial_api::params::EntityPath;
use perennial_core::{AdminError, CallError};

use crate::AppState;
use crate::error::ApiError;

/// Follow an entity's committed state changes (Server-Sent Events: `event: state`, `data` the state, `id` its version)
#[utoipa::path(get, path = "/v1/{kind}/{id}/watch", tag = "entities",
    params(EntityPath),
    responses(
        (status = 200, description = "An event stream; the first event is the current state",
            content_type = "text/event-stream", body = WatchEvent),
        (status = 307, description = "In a cluster: the node that serves the entity; follow it"),
    ))]
pub(crate) async fn watch(
    State(state): State<AppState>,
    path: Result<Path<EntityPath>, PathRejection>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    if let Some(router) = &state.router
        && let Some(address) = router.owner_elsewhere(&kind, &id)
    {
        let id = perennial_core::EntityId::new(&id)
            .map_err(CallError::<std::convert::Infallible>::from)?;
        // The query goes along: it may carry the caller's token.
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let id = encode(id.as_str());
        let target = format!("http://{address}/v1/{kind}/{id}/watch{query}");
        return Ok(Redirect::temporary(&target).into_response());
    }
    Ok(stream(&state.rt, &kind, &id).await?.into_response())
}

/// Percent-encodes what a path segment cannot hold as it is.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn stream(
    rt: &perennial_core::Runtime,
    kind: &str,
    id: &str,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    // Subscribed before the current state is read, so no change falls in between.
    let changes = rt.watch(kind, id)?;
    let shows_state = changes.shows_state();
    let current = match rt.admin().durable_state(kind, id).await {
        Ok(_) if !shows_state => Some(Event::default().event("changed").data("null")),
        Ok(state) => Some(Event::default().event("state").data(state)),
        Err(AdminError::NoSuchEntity(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let first = futures::stream::iter(current.map(Ok));
    let later = futures::stream::unfold(changes, move |mut changes| async move {
        let change = changes.next().await?;
        let event = Event::default().id(change.version.to_string());
        let event = match (change.deleted, shows_state) {
            (true, _) => event.event("deleted").data("null"),
            (false, true) => event.event("state").data(&*change.state),
            // Only the version: the client asks the entity for what it may see.
            (false, false) => event.event("changed").data("null"),
        };
        Some((Ok(event), changes))
    });
    Ok(Sse::new(futures::StreamExt::chain(first, later)).keep_alive(KeepAlive::default()))
}
