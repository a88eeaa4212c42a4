//! `GET /v1/{kind}/{id}/watch`: an entity's committed state changes as Server-Sent Events.
//!
//! The first event is the entity's current durable state (none if it has no state yet);
//! each later event is a change, sent once the step that made it is durable, never before.
//! Each event is `event: state`, its `data` the state's JSON, and (for changes) its `id` the
//! entity's version. A client that falls far behind skips to newer states: each event is a
//! whole state, so the last one received is always the entity's state. A comment is sent
//! every 15 seconds to keep proxies from closing the stream.

use std::convert::Infallible;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use perennial_core::{CallError, Runtime};

use crate::error::ApiError;

pub(crate) async fn watch(
    State(rt): State<Runtime>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    // Subscribed before the current state is read, so no change falls in between.
    let changes = rt.watch(&kind, &id)?;
    let current = match rt.durable_state(&kind, &id).await {
        Ok(state) => Some(Event::default().event("state").data(state)),
        Err(CallError::NoHistory { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let first = futures::stream::iter(current.map(Ok));
    let later = futures::stream::unfold(changes, |mut changes| async move {
        let change = changes.next().await?;
        let event = Event::default()
            .event("state")
            .id(change.version.to_string())
            .data(&*change.state);
        Some((Ok(event), changes))
    });
    Ok(Sse::new(futures::StreamExt::chain(first, later)).keep_alive(KeepAlive::default()))
}
