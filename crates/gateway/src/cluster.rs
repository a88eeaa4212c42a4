//! Calls in a cluster: any node takes any call, runs it if it serves the entity's shard, and
//! otherwise forwards it to the node that does ([`forward`](crate::forward)).
//!
//! A node that answers that it does not serve the shard (it handed it off, or its lease
//! lapsed) ran nothing, so the call is sent again after the routing table is refreshed, until
//! the request's deadline: the caller sees one answer, as if there were one node. A call
//! whose request may have reached its owner before the connection broke is sent again only
//! if it carries an `Idempotency-Key` (then the owner answers a repeat with the first reply);
//! without one, the caller gets `502 outcome_unknown` rather than risk applying it twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use perennial_cluster::{Cluster, Route};
use perennial_core::{
    CallError, Caller, Courier, Delivery, EntityId, EntityKey, Parcel, Plumbing, Runtime,
};
use perennial_types::{ShardId, shard_of};

use crate::AppState;
use crate::error::ApiError;
use crate::forward::{self, Answer, Delivered, Failure, Forwarder, Request};
use crate::ops::Here;

/// How a node's gateway takes part in a cluster.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Clustering {
    /// The node's membership: who serves which shard.
    pub cluster: Cluster,
    /// The secret every node of the cluster shares; the internal route refuses requests
    /// without it.
    pub secret: String,
    /// What the node trusts when it calls the others over HTTPS; `None`: they serve plain
    /// HTTP.
    pub tls: Option<crate::PeerTls>,
    /// Whether the internal route refuses a node that presented no verified certificate
    /// (mutual TLS; the gateway must be served by [`serve_tls`](crate::serve_tls) with
    /// [`ServerTls::verifying_clients`](crate::ServerTls::verifying_clients)).
    pub require_peer_certificates: bool,
}

impl Clustering {
    /// A gateway in `cluster`, talking to the other nodes with `secret` over plain HTTP.
    pub fn new(cluster: Cluster, secret: impl Into<String>) -> Self {
        Self {
            cluster,
            secret: secret.into(),
            tls: None,
            require_peer_certificates: false,
        }
    }

    /// Refuses calls from nodes that present no verified certificate on the internal route
    /// (mutual TLS); give the node its own with [`PeerTls::with_identity`](crate::PeerTls::with_identity).
    #[must_use]
    pub fn require_peer_certificates(mut self) -> Self {
        self.require_peer_certificates = true;
        self
    }

    /// Talks to the other nodes over HTTPS, trusting `tls` (every node of the cluster then
    /// serves HTTPS on the address it advertises).
    #[must_use]
    pub fn with_tls(mut self, tls: crate::PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// The routing side of the gateway.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    cluster: Cluster,
    forwarder: Forwarder,
    secret: Arc<str>,
    require_peer_certificates: bool,
}

impl Router {
    pub(crate) fn new(clustering: &Clustering) -> Self {
        Self {
            cluster: clustering.cluster.clone(),
            forwarder: Forwarder::new(&clustering.secret, clustering.tls.as_ref()),
            secret: Arc::from(clustering.secret.as_str()),
            require_peer_certificates: clustering.require_peer_certificates,
        }
    }

    /// The node's membership.
    pub(crate) fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The address of the node that owns `kind`/`id`, if another node does.
    pub(crate) fn owner_elsewhere(&self, kind: &str, id: &str) -> Option<Arc<str>> {
        match self.cluster.route(shard_of(kind, id)) {
            Route::Remote { address, .. } => Some(address),
            Route::Local | Route::Unknown => None,
        }
    }

    /// Runs or forwards one call until an answer (the guard's deadline bounds the retries).
    pub(crate) async fn call(
        &self,
        rt: &Runtime,
        caller: Option<&Caller>,
        (kind, id): (&str, &str),
        idempotency_key: Option<&str>,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        // What the node can judge alone is judged here, not forwarded.
        if rt.persistence(kind).is_none() {
            return Err(
                CallError::<perennial_core::JsonRejection>::UnknownKind(kind.to_owned()).into(),
            );
        }
        EntityId::new(id).map_err(CallError::<perennial_core::JsonRejection>::from)?;
        let here = || async move {
            match rt
                .call_json_as(caller, kind, id, idempotency_key, body)
                .await
            {
                Err(CallError::NotOwner { .. } | CallError::Fenced { .. }) => Here::NotServed,
                result => Here::Answer(result.map(json_response).map_err(ApiError::from)),
            }
        };
        let there = || match caller {
            None => Request::Call {
                kind: kind.to_owned(),
                id: id.to_owned(),
                idempotency_key: idempotency_key.map(str::to_owned),
                body: body.to_vec(),
            },
            Some(caller) => Request::CallAs {
                caller: caller.subject().to_owned(),
                kind: kind.to_owned(),
                id: id.to_owned(),
                idempotency_key: idempotency_key.map(str::to_owned),
                body: body.to_vec(),
            },
        };
        self.route(shard_of(kind, id), idempotency_key.is_some(), here, there)
            .await
    }

    /// Runs a request for `shard` here if this node serves it, else on the node that does,
    /// until one answers (the guard's deadline bounds the retries). A request whose outcome
    /// is unknown (the connection broke after it was sent) is sent again only if
    /// `safe_to_repeat`.
    pub(crate) async fn route<H, F>(
        &self,
        shard: ShardId,
        safe_to_repeat: bool,
        here: H,
        there: impl Fn() -> Request,
    ) -> Result<Response, ApiError>
    where
        H: Fn() -> F,
        F: Future<Output = Here>,
    {
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.cluster.route(shard) {
                Route::Local => match here().await {
                    Here::Answer(answer) => return answer,
                    Here::NotServed => {}
                },
                Route::Remote { address, .. } => match self.forwarder.call(&address, there()).await
                {
                    Ok(Answer::Response { status, body }) => return Ok(answered(status, body)),
                    Ok(Answer::NotServed) => {}
                    Ok(Answer::Delivered(_)) => {
                        return Err(ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "bad_answer",
                            "the node that serves this entity answered something else",
                        ));
                    }
                    Err(Failure::Unsent(detail)) => {
                        tracing::debug!(%address, %detail, "cannot reach a node; rerouting");
                    }
                    Err(Failure::Unknown(_)) if safe_to_repeat => {}
                    Err(Failure::Unknown(detail)) => {
                        tracing::warn!(%shard, %address, %detail,
                            "a forwarded request's outcome is unknown");
                        return Err(ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "outcome_unknown",
                            "the node that serves this entity stopped answering; the request \
                             may have been applied. Send calls with an Idempotency-Key to have \
                             them retried safely",
                        ));
                    }
                },
                Route::Unknown => {}
            }
            // Not served where we thought: learn the new owner, then try again.
            self.cluster.refresh(Duration::from_millis(500)).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }
}

fn json_response(reply: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], reply).into_response()
}

/// The owner's answer, as the client's response.
fn answered(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// `POST /internal/v1/calls`: runs a batch of calls forwarded by another node, here only.
pub(crate) async fn internal(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Response {
    let Some(router) = &state.router else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response();
    };
    let certified = extensions
        .get::<crate::tls::PeerCertified>()
        .is_some_and(|c| c.0);
    if router.require_peer_certificates && !certified {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "certificate_required",
            "this cluster requires each node's certificate (mutual TLS)",
        )
        .into_response();
    }
    let given = headers
        .get(forward::SECRET_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if !crate::guard::same(given, router.secret.as_bytes()) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the cluster secret is missing or wrong",
        )
        .into_response();
    }
    let content_type = headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
    if content_type != Some(forward::CONTENT_TYPE.as_bytes()) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_version",
            format!("this node speaks {}", forward::CONTENT_TYPE),
        )
        .into_response();
    }
    let batch: forward::Batch = match postcard::from_bytes(&body) {
        Ok(batch) => batch,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_batch",
                format!("the batch cannot be decoded: {e}"),
            )
            .into_response();
        }
    };
    let rt = &state.rt;
    let answers: Vec<Answer> =
        futures::future::join_all(batch.calls.into_iter().map(|call| run_here(rt, call))).await;
    match postcard::to_allocvec(&answers) {
        Ok(bytes) => ([(header::CONTENT_TYPE, forward::CONTENT_TYPE)], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode forwarded answers");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the answers cannot be encoded",
            )
            .into_response()
        }
    }
}

/// Runs one client call a peer forwarded, on this node only.
async fn answer_call(
    rt: &Runtime,
    caller: Option<&Caller>,
    (kind, id): (&str, &str),
    idempotency_key: Option<&str>,
    body: &[u8],
) -> Answer {
    match rt
        .call_json_as(caller, kind, id, idempotency_key, body)
        .await
    {
        Ok(reply) => Answer::Response {
            status: 200,
            body: reply.into_bytes(),
        },
        Err(CallError::NotOwner { .. } | CallError::Fenced { .. }) => Answer::NotServed,
        Err(error) => {
            let error = ApiError::from(error);
            Answer::Response {
                status: error.status().as_u16(),
                body: error.body(),
            }
        }
    }
}

/// Runs one call a peer forwarded, on this node only.
async fn run_here(rt: &Runtime, call: Request) -> Answer {
    match call {
        Request::Call {
            kind,
            id,
            idempotency_key,
            body,
        } => answer_call(rt, None, (&kind, &id), idempotency_key.as_deref(), &body).await,
        Request::CallAs {
            caller,
            kind,
            id,
            idempotency_key,
            body,
        } => {
            // The forwarding node verified the caller; the cluster secret vouches for it.
            let caller = Caller::new(caller);
            let key = idempotency_key.as_deref();
            answer_call(rt, Some(&caller), (&kind, &id), key, &body).await
        }
        Request::Admin(op) => match crate::ops::run_here(&op, rt).await {
            Here::NotServed => Answer::NotServed,
            Here::Answer(Ok(response)) => {
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                Answer::Response { status, body }
            }
            Here::Answer(Err(error)) => Answer::Response {
                status: error.status().as_u16(),
                body: error.body(),
            },
        },
        Request::Deliver {
            owner_kind,
            owner_id,
            seq,
            kind,
            id,
            body,
            ask,
        } => {
            let key =
                |kind: String, id: String| EntityId::new(&id).map(|id| EntityKey::new(kind, id));
            let (Ok(owner), Ok(target)) = (key(owner_kind, owner_id), key(kind, id)) else {
                return Answer::Delivered(Delivered::Poison("an invalid entity id".into()));
            };
            let parcel = if ask {
                Parcel::ask(owner, seq, target, Arc::from(body))
            } else {
                Parcel::new(owner, seq, target, Arc::from(body))
            };
            match Plumbing::of(rt).deliver(parcel).await {
                Delivery::NotServed => Answer::NotServed,
                delivery => Answer::Delivered(delivered(delivery)),
            }
        }
    }
}

/// A delivery's outcome, on the wire.
fn delivered(delivery: Delivery) -> Delivered {
    match delivery {
        Delivery::Applied => Delivered::Applied,
        Delivery::Answered(reply) => Delivered::Answered(reply),
        Delivery::Skipped => Delivered::Skipped,
        Delivery::Refused { code, message } => Delivered::Refused { code, message },
        Delivery::Poison(detail) => Delivered::Poison(detail),
        other => Delivered::Retry(format!("{other:?}")),
    }
}

/// A delivery's outcome, from the wire.
fn delivery(delivered: Delivered) -> Delivery {
    match delivered {
        Delivered::Applied => Delivery::Applied,
        Delivered::Answered(reply) => Delivery::Answered(reply),
        Delivered::Skipped => Delivery::Skipped,
        Delivered::Refused { code, message } => Delivery::Refused { code, message },
        Delivered::Retry(detail) => Delivery::Retry(detail),
        Delivered::Poison(detail) => Delivery::Poison(detail),
    }
}

/// Carries message rows between entities to the nodes that serve their targets.
#[derive(Debug)]
pub(crate) struct ClusterCourier {
    pub(crate) router: Router,
    pub(crate) rt: Runtime,
}

impl Courier for ClusterCourier {
    fn carry(&self, parcel: Parcel) -> Pin<Box<dyn Future<Output = Delivery> + Send>> {
        let router = self.router.clone();
        let rt = self.rt.clone();
        Box::pin(async move {
            let shard = shard_of(&parcel.target.kind, parcel.target.id.as_str());
            let delivery = match router.cluster.route(shard) {
                // It moved here since the dispatcher looked.
                Route::Local => Plumbing::of(&rt).deliver(parcel).await,
                Route::Remote { address, .. } => {
                    let call = Request::Deliver {
                        owner_kind: parcel.owner.kind.to_string(),
                        owner_id: parcel.owner.id.to_string(),
                        seq: parcel.seq,
                        kind: parcel.target.kind.to_string(),
                        id: parcel.target.id.to_string(),
                        body: parcel.body.to_string(),
                        ask: parcel.ask,
                    };
                    // Carrying a row again is safe: the receiver applies it once.
                    match router.forwarder.call(&address, call).await {
                        Ok(Answer::Delivered(delivered)) => delivery(delivered),
                        Ok(Answer::NotServed) => Delivery::NotServed,
                        Ok(Answer::Response { status, .. }) => {
                            Delivery::Retry(format!("the node answered {status}"))
                        }
                        Err(Failure::Unsent(detail) | Failure::Unknown(detail)) => {
                            Delivery::Retry(detail)
                        }
                    }
                }
                Route::Unknown => Delivery::NotServed,
            };
            if delivery == Delivery::NotServed {
                router.cluster.refresh(Duration::from_millis(500)).await;
            }
            delivery
        })
    }
}
