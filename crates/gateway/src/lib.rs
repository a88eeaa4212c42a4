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
//!   [`perennial_core::EntityRef::call_idempotent`]).
//! - `GET /healthz`: `200 {"status":"ok"}` while the node serves; it needs no token.
//! - `GET /readyz`: `200 {"status":"ready","shards":N}` when the node can serve calls (not
//!   shutting down, serving shards, its store answering a read within 2 s), else `503` with
//!   `"status":"not_ready"` and the reason; it needs no token.
//! - `GET /console`: the web console (module `console`), a page over the admin API; the page
//!   itself needs no token, every view it shows needs the admin token.
//! - `GET /play/{table}`: a playable poker table of the demo's `table` kind (module `play`),
//!   over the client route and the watch stream.
//! - `/v1/admin/…`: the admin API (module `admin`): list a kind's entities, an entity's
//!   state, history and past states, query a kind's entities by state and index it by a
//!   path, passivate now, pause and resume an entity, list, show, retry and discard dead
//!   letters. The kind name `admin` is therefore reserved.
//!
//! # Security
//! [`serve_tls`] serves the same routes over HTTPS (HTTP/2 or HTTP/1.1, by ALPN) with a
//! [`ServerTls`]; [`serve`] over plain HTTP. Calls need [`Options::client`], the admin API [`Options::admin`]: each is open, a bearer
//! token (`Authorization: Bearer <token>`, compared in constant time), or closed. The admin
//! API is closed unless given a token. A path and query over [`Options::max_uri_bytes`] get
//! `414`, too many or too large headers `431`, a request not done within
//! [`Options::request_timeout`] `504 timeout` (a call may still be applied: retry it with
//! the same `Idempotency-Key` to learn its outcome).
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with `400` (a malformed or
//! refused message, an invalid id or filter), `401` (no or wrong token), `403` (closed
//! routes), `404` (an unknown kind, route, dead letter or index), `405`, `409` (`paused`: the
//! entity is paused; or a dead letter retried twice at once), `413` (a body over [`Options::max_body_bytes`]), `414`, `431`, `500` (a handler
//! panic, undecodable stored state), `503` (overloaded, storage unavailable or failing, such
//! as `storage_io` for a failed fsync, shutting down), `504`, or `507` (`storage_full`: the
//! node's disk is full).
//!
//! ```
//! # use perennial_core::{Runtime, Plumbing};
//! # async fn example(rt: Runtime) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! perennial_gateway::serve(listener, rt, perennial_gateway::Options::default(), shutdown).await
//! # }
//! ```

mod admin;
mod callers;
mod cluster;
mod console;
pub mod error;
mod feed;
mod forward;
mod guard;
mod metrics;
mod migrations;
pub mod openapi;
mod ops;
mod play;
mod server;
mod tls;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Extension, FromRef, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use perennial_api::params::EntityPath;
use perennial_core::{Caller, Plumbing, Runtime};

use crate::callers::Authenticated;

pub use crate::callers::{CallerClaims, CallerKey, CallerKeyError, sign_caller_token};
pub use crate::cluster::Clustering;
use crate::error::ApiError;
#[doc(hidden)]
pub use crate::forward::decode_for_fuzzing as decode_wire_for_fuzzing;
pub use crate::guard::Access;
pub use crate::tls::{PeerTls, ServerTls, TlsError, serve_tls};

/// What the gateway lets in, and its limits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Who may call entities (`/v1/{kind}/{id}`). Default: [`Access::Open`]. With
    /// [`callers`](Self::callers), a client token lets in services (calls with no caller).
    pub client: Access,
    /// The key that signs caller tokens. With one, every call needs a valid caller token
    /// (`Authorization: Bearer <jwt>`; its `sub` is the handler's
    /// [`Ctx::caller`](perennial_core::Ctx::caller)) or the client token. Default: `None`:
    /// calls are anonymous.
    pub callers: Option<CallerKey>,
    /// Who may use the admin API (`/v1/admin/…`). Default: [`Access::Closed`].
    pub admin: Access,
    /// Who may read `/metrics`. Default: [`Access::Open`].
    pub metrics: Access,
    /// The largest request body accepted; larger ones get `413`. Default: 1 MiB.
    pub max_body_bytes: usize,
    /// The longest path and query accepted; longer ones get `414`. Default: 4 KiB.
    pub max_uri_bytes: usize,
    /// The most headers accepted; more get `431`. Default: 64.
    pub max_headers: usize,
    /// The most bytes of headers (names and values) accepted; more get `431`. Default: 16 KiB.
    pub max_header_bytes: usize,
    /// How long a request may take before it gets `504 timeout`. Default: 30 s.
    pub request_timeout: Duration,
    /// In a cluster: calls for shards other nodes serve are forwarded to them, and the
    /// internal route takes theirs. Default: `None` (one node serves every shard).
    pub cluster: Option<Clustering>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            client: Access::Open,
            callers: None,
            admin: Access::Closed,
            metrics: Access::Open,
            max_body_bytes: 1 << 20,
            max_uri_bytes: 4 << 10,
            max_headers: 64,
            max_header_bytes: 16 << 10,
            request_timeout: Duration::from_secs(30),
            cluster: None,
        }
    }
}

/// What every route can reach: the runtime, and the metrics the gateway records.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    rt: Runtime,
    metrics: Arc<metrics::Metrics>,
    /// In a cluster, where calls go.
    router: Option<cluster::Router>,
    /// The migration passes started through the admin API.
    passes: Arc<migrations::Passes>,
}

impl FromRef<AppState> for Arc<migrations::Passes> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.passes)
    }
}

impl FromRef<AppState> for Runtime {
    fn from_ref(state: &AppState) -> Self {
        state.rt.clone()
    }
}

/// The gateway's routes over `rt`.
pub fn app(rt: Runtime, options: &Options) -> Router {
    let state = AppState {
        metrics: metrics::Metrics::shared(rt.clone()),
        rt,
        router: options.cluster.as_ref().map(cluster::Router::new),
        passes: Arc::default(),
    };
    if let Some(router) = &state.router {
        // Messages between entities on different nodes go through the same routes.
        let courier = cluster::ClusterCourier {
            router: router.clone(),
            rt: state.rt.clone(),
        };
        Plumbing::of(&state.rt).set_courier(Arc::new(courier));
    }
    // Authenticated by the cluster secret, not by client tokens; batches are larger.
    let internal = Router::new()
        .route(
            forward::PATH,
            post(cluster::internal).fallback(method_not_allowed),
        )
        .layer(DefaultBodyLimit::max(
            forward::MAX_BATCH_BYTES * 2 + options.max_body_bytes,
        ));
    let metrics = Router::new()
        .route(
            "/metrics",
            get(metrics::metrics).fallback(method_not_allowed),
        )
        .route_layer(from_fn_with_state(
            Arc::new(options.metrics.clone()),
            guard::authorize,
        ));
    let client = Router::new()
        .route("/v1/{kind}/{id}", post(call).fallback(method_not_allowed))
        // An entity may be named `changes`: a POST there is a call.
        .route(
            "/v1/{kind}/changes",
            get(feed::changes)
                .post(call_named_changes)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/{kind}/{id}/watch",
            get(watch::watch).fallback(method_not_allowed),
        )
        .route_layer(from_fn_with_state(
            Arc::new(callers::Gate {
                access: options.client.clone(),
                callers: options.callers.clone(),
            }),
            callers::admit,
        ));
    let admin = admin::routes().route_layer(from_fn_with_state(
        Arc::new(options.admin.clone()),
        guard::authorize,
    ));
    let limits = guard::Limits {
        max_uri_bytes: options.max_uri_bytes,
        max_headers: options.max_headers,
        max_header_bytes: options.max_header_bytes,
        timeout: options.request_timeout,
    };
    Router::new()
        .merge(client)
        .merge(admin)
        .merge(metrics)
        .merge(internal)
        .merge(console::routes())
        .merge(play::routes())
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .route("/readyz", get(readyz).fallback(method_not_allowed))
        .route(
            "/openapi.json",
            get(openapi::document_route).fallback(method_not_allowed),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(from_fn_with_state(limits, guard::limit))
        .with_state(state)
}

/// Serves the gateway on `listener` until `shutdown` completes, then lets the requests under
/// way finish (at most 30 s) and ends event streams (watches, change feeds) at once. The
/// listener is closed first, so that a client connecting afterwards is refused rather than
/// cut; an HTTP/2 request that races the stop is answered or turned away with a GOAWAY that
/// tells its client it was not processed. (HTTP/1.1 has no such answer: a request sent on
/// an idle keep-alive connection as it closes may fail with its outcome unknown.)
pub async fn serve(
    listener: tokio::net::TcpListener,
    rt: Runtime,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(listener, app(rt, &options), shutdown, |tcp| async move {
        Some((tcp, None::<()>))
    })
    .await
}

/// The header that makes a call idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Send a message to an entity; the reply comes once the step is durable
#[utoipa::path(post, path = "/v1/{kind}/{id}", tag = "entities",
    params(
        EntityPath,
        ("Idempotency-Key" = Option<String>, Header, max_length = 256, nullable = false,
            description = "Makes the call idempotent: a retry with the same key gets the first reply"),
    ),
    request_body(content = serde_json::Value, description = "The message, as the kind's handler takes it"),
    responses((status = 200, description = "The reply, as the kind's handler returned it", body = serde_json::Value)))]
async fn call(
    State(state): State<AppState>,
    Extension(Authenticated(caller)): Extension<Authenticated>,
    path: Result<Path<EntityPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(EntityPath { kind, id }) = path.map_err(ApiError::from_path)?;
    let started = std::time::Instant::now();
    let span = tracing::debug_span!("call", %kind, %id);
    let call = call_entity(&state, caller.as_ref(), (&kind, &id), &headers, body);
    let result = tracing::Instrument::instrument(call, span).await;
    // Only registered kinds name a series: unknown names from clients would grow it forever.
    let label = if state.rt.persistence(&kind).is_some() {
        kind.as_str()
    } else {
        "unknown"
    };
    let outcome = result.as_ref().map_or_else(ApiError::code, |_| "ok");
    state.metrics.call(label, outcome, started.elapsed());
    result
}

/// Send a message to the entity named `changes` (the path it shares with the kind's change feed)
#[utoipa::path(post, path = "/v1/{kind}/changes", tag = "entities",
    params(
        perennial_api::params::KindPath,
        ("Idempotency-Key" = Option<String>, Header, max_length = 256, nullable = false,
            description = "Makes the call idempotent: a retry with the same key gets the first reply"),
    ),
    request_body(content = serde_json::Value, description = "The message, as the kind's handler takes it"),
    responses((status = 200, description = "The reply, as the kind's handler returned it", body = serde_json::Value)))]
async fn call_named_changes(
    state: State<AppState>,
    caller: Extension<Authenticated>,
    path: Result<Path<perennial_api::params::KindPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(perennial_api::params::KindPath { kind }) = path.map_err(ApiError::from_path)?;
    let path = Ok(Path(EntityPath {
        kind,
        id: "changes".to_owned(),
    }));
    call(state, caller, path, headers, body).await
}

async fn call_entity(
    state: &AppState,
    caller: Option<&Caller>,
    (kind, id): (&str, &str),
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
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
    if let Some(router) = &state.router {
        return router.call(&state.rt, caller, (kind, id), key, &body).await;
    }
    let reply = state.rt.call_json_as(caller, kind, id, key, &body).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        reply.to_string(),
    )
        .into_response())
}

/// Liveness
#[utoipa::path(get, path = "/healthz", tag = "node",
    responses((status = 200, description = "The node serves", body = perennial_api::client::Health)))]
async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

/// How long `/readyz` waits for the store to answer a read.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness
#[utoipa::path(get, path = "/readyz", tag = "node",
    responses(
        (status = 200, description = "The node can serve calls: it serves shards and its store answers a read", body = perennial_api::client::Ready),
        (status = 503, description = "The node is alive but should be sent no calls now: shutting down, no shard leased yet, or its store not answering", body = perennial_api::client::Ready),
    ))]
async fn readyz(axum::extract::State(rt): axum::extract::State<Runtime>) -> Response {
    let readiness = rt.admin().readiness(READY_WITHIN).await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = perennial_api::client::Ready {
        status: if readiness.ready {
            "ready"
        } else {
            "not_ready"
        }
        .to_owned(),
        shards: u32::try_from(readiness.shards).unwrap_or(u32::MAX),
        reason: readiness.reason,
    };
    (status, axum::Json(body)).into_response()
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
