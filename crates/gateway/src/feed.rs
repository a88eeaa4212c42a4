//! `GET /v1/{kind}/changes`: a kind's change feed as Server-Sent Events, resumable from a
//! cursor.
//!
//! Each event is one committed step of one entity of the kind, in commit order: `event:
//! change`, `id` its number in the feed (the cursor), `data` `{"id", "version", "state"}`
//! (`state` the entity's state after the step, `null` if the step deleted it; absent for a
//! kind that keeps its state from clients, see
//! [`Process::WATCH_SHOWS_STATE`](perennial_core::Process::WATCH_SHOWS_STATE)).
//!
//! A client resumes after the last number it got: `?after=N`, or the `Last-Event-ID` header
//! an `EventSource` sends by itself when it reconnects. The feed is stored with the steps
//! (in their own commits), so neither side's restart, nor a node's failover in a cluster,
//! skips a change; any node serves the whole feed. Changes older than the kind's feed keeps
//! them are deleted: a cursor older than that gets `410 changes_expired` (and a stream that
//! falls that far behind ends with `event: expired`). A caught-up stream looks for new
//! changes every 100 ms, and sends a comment every 15 s to keep proxies from closing it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use perennial_api::client::{ChangeEvent, FeedParams};
use perennial_api::params::KindPath;
use perennial_core::{FeedError, Runtime};
use perennial_storage::StoredChange;

use crate::AppState;
use crate::error::ApiError;

/// How many changes one read of the store takes.
const PAGE: usize = 256;
/// How often a caught-up stream looks for new changes.
const POLL: Duration = Duration::from_millis(100);

/// Follow every committed change of a kind, from a cursor (Server-Sent Events: `event: change`, `id` the cursor)
#[utoipa::path(get, path = "/v1/{kind}/changes", tag = "entities",
    params(KindPath, FeedParams,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^[0-9]{1,19}$",
            description = "The last cursor received, as an EventSource sends it when it reconnects; `after` wins")),
    responses(
        (status = 200, description = "An event stream of the kind's changes after the cursor",
            content_type = "text/event-stream", body = ChangeEvent),
        (status = 410, description = "Changes after the cursor expired: `changes_expired`"),
    ))]
pub(crate) async fn changes(
    State(state): State<AppState>,
    path: Result<Path<KindPath>, PathRejection>,
    params: Result<Query<FeedParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(KindPath { kind }) = path.map_err(ApiError::from_path)?;
    let Query(params) = params.map_err(ApiError::from_query)?;
    let after = match params.after {
        Some(after) => after,
        None => last_event_id(&headers)?,
    };
    let Some(shows_state) = state.rt.feed_shows_state(&kind) else {
        let error = match state.rt.persistence(&kind) {
            None => FeedError::UnknownKind(kind),
            Some(_) => FeedError::NoFeed(kind),
        };
        return Err(error.into());
    };
    let first = state.rt.changes(&kind, after, PAGE).await?;
    if after > 0 && first.expired_through > after {
        return Err(expired(after, first.expired_through));
    }
    let feed = Feed {
        rt: state.rt.clone(),
        kind,
        cursor: after,
        shows_state,
        buffer: first.changes.into(),
        ended: false,
    };
    let events = futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<_, Infallible>(event), feed))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The cursor in `Last-Event-ID`, 0 without one.
fn last_event_id(headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "Last-Event-ID must be a cursor this feed sent (a number)",
            )
        })
}

fn expired(after: u64, through: u64) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "changes_expired",
        format!(
            "the changes after {after} up to {through} expired: read the entities again, then \
             follow the feed from its start (after=0)"
        ),
    )
}

/// One client's place in a feed.
struct Feed {
    rt: Runtime,
    kind: String,
    cursor: u64,
    shows_state: bool,
    buffer: VecDeque<StoredChange>,
    ended: bool,
}

impl Feed {
    /// The next event: a change once there is one, or the end of the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(change) = self.buffer.pop_front() {
                self.cursor = change.seq;
                return Some(self.event(change));
            }
            match self.rt.changes(&self.kind, self.cursor, PAGE).await {
                Ok(page) if page.expired_through > self.cursor && self.cursor > 0 => {
                    self.ended = true;
                    let why = expired(self.cursor, page.expired_through);
                    return Some(Event::default().event("expired").data(why.message()));
                }
                Ok(page) if page.changes.is_empty() => tokio::time::sleep(POLL).await,
                Ok(page) => self.buffer = page.changes.into(),
                Err(error) => {
                    // Storage failed: the client reconnects from its cursor.
                    tracing::warn!(kind = %self.kind, %error, "a change feed stops");
                    return None;
                }
            }
        }
    }

    fn event(&self, change: StoredChange) -> Event {
        let state = match (&change.state, self.shows_state) {
            (Some(state), true) => Some(
                serde_json::from_str::<serde_json::Value>(state).unwrap_or(serde_json::Value::Null),
            ),
            _ => None,
        };
        let body = ChangeEvent {
            id: change.id,
            version: change.version,
            deleted: change.state.is_none(),
            state,
        };
        Event::default()
            .event("change")
            .id(change.seq.to_string())
            .json_data(body)
            .unwrap_or_else(|_| Event::default().event("change").data("null"))
    }
}
