//! The web console at `/console`: a page over the admin API, for people who would rather look
//! than read. Its three files are embedded in the binary (no CDN, no build step; it works
//! offline) and hold no data: every view fetches the admin API with the admin token the
//! operator types in, kept in the browser tab's session storage.
//!
//! - `GET /console`: the page (kinds, a kind's entities and queries, an entity's state,
//!   actions and history with a slider over its past states, dead letters, quarantine).
//! - `GET /console/console.js`, `GET /console/console.css`: its script and style.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

pub(crate) fn routes() -> Router<crate::AppState> {
    Router::new()
        .route("/console", get(|| file("text/html; charset=utf-8", INDEX)))
        .route("/console/", get(|| file("text/html; charset=utf-8", INDEX)))
        .route(
            "/console/console.js",
            get(|| file("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/console/console.css",
            get(|| file("text/css; charset=utf-8", STYLE)),
        )
}

/// A console file: it changes with the binary (so caches revalidate), and other sites'
/// frames may not embed it.
pub(crate) async fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
}
