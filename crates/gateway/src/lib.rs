//! Perennial's HTTP/JSON gateway: turns requests into calls on a [`Runtime`] and replies or
//! errors into responses.
//!
//! **API Boundary.** **Architecture Invariant:** the only crate that knows HTTP. Every error
//! becomes a response in one place ([`error`]), with a stable code and no internal detail.
//!
//! # Routes
//! - `POST /v1/{kind}/{id}`: the body is a JSON message for entity `id` of kind `kind`; the
//!   answer is `200` with the JSON reply, sent only once the step is durable. With an
//!   `Idempotency-Key` header (1 to 256 bytes), a retry with the same key gets the first
//!   reply, byte for byte, and the message is not applied again (see
//!   [`perennial_core::Handle::call_idempotent`]).
//! - `GET /healthz`: `200 {"status":"ok"}` while the node serves.
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with `400` (a malformed or
//! refused message, an invalid id), `404` (an unknown kind or route), `405`, `413` (a body
//! over [`Options::max_body_bytes`]), `500` (a handler panic, undecodable stored state) or
//! `503` (overloaded, storage unavailable, shutting down).
//!
//! ```
//! # use perennial_core::Runtime;
//! # async fn example(rt: Runtime) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! perennial_gateway::serve(listener, rt, perennial_gateway::Options::default(), shutdown).await
//! # }
//! ```

pub mod error;

use std::future::Future;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use perennial_core::Runtime;

use crate::error::ApiError;

/// Limits of the gateway.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The largest request body accepted; larger ones get `413`. Default: 1 MiB.
    pub max_body_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
        }
    }
}

/// The gateway's routes over `rt`.
pub fn app(rt: Runtime, options: &Options) -> Router {
    Router::new()
        .route("/v1/{kind}/{id}", post(call).fallback(method_not_allowed))
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(rt)
}

/// Serves the gateway on `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    rt: Runtime,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(rt, &options))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The header that makes a call idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

async fn call(
    State(rt): State<Runtime>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(ApiError::from_path)?;
    let body = body.map_err(ApiError::from_body)?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "the Idempotency-Key header must be visible ASCII",
            )
        })?),
    };
    let reply = rt.call_json_idempotent(&kind, &id, key, &body).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        reply.to_string(),
    )
        .into_response())
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
