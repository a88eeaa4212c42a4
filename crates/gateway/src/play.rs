//! The poker page at `/play/{table}`: a playable table of the demo's `table` kind, for
//! people. Like the console, its files are embedded and hold no data: the page calls the
//! table through the client route (`POST /v1/table/{table}`, its `view_for` message for the
//! player's own view) and follows it through its watch stream.
//!
//! - `GET /play/{table}` (`?as=NAME` to sit as NAME): the page.
//! - `GET /play-assets/play.js`, `GET /play-assets/play.css`: its script and style.

use axum::Router;
use axum::routing::get;

use crate::console::file;

const PAGE: &str = include_str!("play/play.html");
const SCRIPT: &str = include_str!("play/play.js");
const STYLE: &str = include_str!("play/play.css");

pub(crate) fn routes() -> Router<crate::AppState> {
    Router::new()
        .route(
            "/play/{table}",
            get(|| file("text/html; charset=utf-8", PAGE)),
        )
        .route(
            "/play-assets/play.js",
            get(|| file("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/play-assets/play.css",
            get(|| file("text/css; charset=utf-8", STYLE)),
        )
}
