//! A simulated node: a Perennial runtime on its [`SimStore`], in a cluster whose leases the
//! [`SimDb`](crate::store::SimDb) keeps, serving calls and carried messages over turmoil's
//! simulated TCP.
//!
//! The wire is one JSON [`Request`] per line and one [`Response`] per line back, on a fresh
//! connection per request. A node runs a call only if it serves the entity's shard, and
//! answers `503 not_owner` otherwise: the clients find the owner by trying the nodes in turn
//! (the real gateway forwards instead; that is the HTTP layer, which the simulation leaves
//! out).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use perennial_api::error::{ErrorBody, ErrorDetail};
use perennial_api::internal::{self, Delivered};
use perennial_cluster::{Cluster, Options, Route};
use perennial_core::{
    CallError, Caller, Courier, Delivery, EntityId, EntityKey, Parcel, Plumbing, Runtime,
};
use perennial_types::shard_of;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use turmoil::net::{TcpListener, TcpStream};

use crate::store::SimStore;

/// The port every node listens on.
pub(crate) const PORT: u16 = 9000;

/// What a client, or another node, asks a simulated node. Calls and carried rows are the
/// real internal protocol's messages (`perennial_api::internal`); the rest is the
/// simulation's own control.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// A call to an entity, or a message row another node carries here.
    Node(internal::Request),
    /// Passivate a kind's idle entities, so that reads come from storage.
    Passivate { kind: String },
    /// How many timers, messages and effects the node holds in memory.
    Pending,
}

/// A node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Response {
    /// The internal protocol's answer to a call or a carried row.
    Node(internal::Answer),
    /// A count (passivated entities, pending rows).
    Count(usize),
}

/// A call through `node`'s internal protocol: kind, id, idempotency key and JSON message.
pub(crate) fn call(kind: &str, id: &str, key: Option<&str>, body: &str) -> Request {
    Request::Node(internal::Request::Call {
        kind: kind.to_owned(),
        id: id.to_owned(),
        idempotency_key: key.map(str::to_owned),
        body: body.as_bytes().to_vec(),
    })
}

/// The reply of a call that succeeded, as the bytes of its JSON.
pub(crate) fn reply(response: Option<Response>) -> Result<Vec<u8>, Option<Response>> {
    match response {
        Some(Response::Node(internal::Answer::Response { status: 200, body })) => Ok(body),
        other => Err(other),
    }
}

/// Sends `request` to `host` and waits at most `patience` for its answer.
pub(crate) async fn ask(host: &str, request: &Request, patience: Duration) -> Option<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect((host, PORT)).await.ok()?;
        let mut line = serde_json::to_string(request).ok()?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await.ok()?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        reader.read_line(&mut answer).await.ok()?;
        serde_json::from_str(&answer).ok()
    };
    tokio::time::timeout(patience, exchange)
        .await
        .ok()
        .flatten()
}

/// The node's software: started again from nothing each time the host is bounced.
pub(crate) async fn run(name: String, store: SimStore, lease: Duration) -> turmoil::Result {
    let rt = loop {
        let builder = perennial_demo::register(Runtime::builder().store(store.clone()))
            .node_name(name.clone());
        match builder.start_unclaimed().await {
            Ok(rt) => break rt,
            Err(error) => {
                tracing::debug!(node = %name, %error, "cannot start yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let options = Options::new(name.clone(), name.clone()).lease(lease);
    let cluster = loop {
        match Cluster::join(Arc::new(store.clone()), rt.clone(), options.clone()).await {
            Ok(cluster) => break cluster,
            Err(error) => {
                tracing::debug!(node = %name, %error, "cannot join yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    Plumbing::of(&rt).set_courier(Arc::new(SimCourier {
        cluster: cluster.clone(),
    }));
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, rt.clone(), cluster.clone()));
    }
}

/// Answers one request.
async fn serve(stream: TcpStream, rt: Runtime, cluster: Cluster) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let Ok(request) = serde_json::from_str::<Request>(&line) else {
        return;
    };
    // A call on behalf of a caller is a call with one.
    let (request, caller) = match request {
        Request::Node(internal::Request::CallAs {
            caller,
            kind,
            id,
            idempotency_key,
            body,
        }) => {
            let call = internal::Request::Call {
                kind,
                id,
                idempotency_key,
                body,
            };
            (Request::Node(call), Some(Caller::new(caller)))
        }
        request => (request, None),
    };
    let response = match request {
        Request::Node(internal::Request::Call {
            kind,
            id,
            idempotency_key,
            body,
        }) => Response::Node(if cluster.route(shard_of(&kind, &id)) != Route::Local {
            internal::Answer::NotServed
        } else {
            let key = idempotency_key.as_deref();
            match rt
                .call_json_as(caller.as_ref(), &kind, &id, key, &body)
                .await
            {
                Ok(reply) => internal::Answer::Response {
                    status: 200,
                    body: reply.into_bytes(),
                },
                Err(CallError::NotOwner { .. } | CallError::Fenced { .. }) => {
                    internal::Answer::NotServed
                }
                Err(error) => internal::Answer::Response {
                    status: 500,
                    body: serde_json::to_vec(&ErrorBody {
                        error: ErrorDetail {
                            code: error.code().to_owned(),
                            message: error.to_string(),
                        },
                    })
                    .unwrap_or_default(),
                },
            }
        }),
        Request::Node(internal::Request::Deliver {
            owner_kind,
            owner_id,
            seq,
            kind,
            id,
            body,
            ask,
        }) => {
            let keys = EntityId::new(&owner_id).and_then(|o| Ok((o, EntityId::new(&id)?)));
            let delivery = match keys {
                Ok((owner, target)) => {
                    let (owner, target) = (
                        EntityKey::new(owner_kind, owner),
                        EntityKey::new(kind, target),
                    );
                    let parcel = if ask {
                        Parcel::ask(owner, seq, target, body.into())
                    } else {
                        Parcel::new(owner, seq, target, body.into())
                    };
                    Plumbing::of(&rt).deliver(parcel).await
                }
                Err(_) => Delivery::Poison("an invalid id".into()),
            };
            Response::Node(match delivery {
                Delivery::NotServed => internal::Answer::NotServed,
                Delivery::Applied => internal::Answer::Delivered(Delivered::Applied),
                Delivery::Skipped => internal::Answer::Delivered(Delivered::Skipped),
                Delivery::Answered(reply) => {
                    internal::Answer::Delivered(Delivered::Answered(reply))
                }
                Delivery::Refused { code, message } => {
                    internal::Answer::Delivered(Delivered::Refused { code, message })
                }
                Delivery::Poison(detail) => internal::Answer::Delivered(Delivered::Poison(detail)),
                other => internal::Answer::Delivered(Delivered::Retry(format!("{other:?}"))),
            })
        }
        // Admin requests go to a gateway, which the simulation has none of; a call on
        // behalf of a caller was made a call above.
        Request::Node(internal::Request::Admin(_) | internal::Request::CallAs { .. }) => {
            Response::Count(0)
        }
        Request::Passivate { kind } => {
            Response::Count(rt.admin().passivate_kind(&kind).map_or(0, |(done, _)| done))
        }
        Request::Pending => Response::Count(rt.stats().pending_in_memory),
    };
    let Ok(mut answer) = serde_json::to_string(&response) else {
        return;
    };
    answer.push('\n');
    let _ = reader.get_mut().write_all(answer.as_bytes()).await;
}

/// Carries message rows to the node that serves their target, over the simulated network.
struct SimCourier {
    cluster: Cluster,
}

impl Courier for SimCourier {
    fn carry(&self, parcel: Parcel) -> Pin<Box<dyn Future<Output = Delivery> + Send>> {
        let route = self
            .cluster
            .route(shard_of(&parcel.target.kind, parcel.target.id.as_str()));
        Box::pin(async move {
            let Route::Remote { address, .. } = route else {
                return Delivery::Retry("no node serves the target now".into());
            };
            let request = Request::Node(internal::Request::Deliver {
                owner_kind: parcel.owner.kind.to_string(),
                owner_id: parcel.owner.id.to_string(),
                seq: parcel.seq,
                kind: parcel.target.kind.to_string(),
                id: parcel.target.id.to_string(),
                body: parcel.body.to_string(),
                ask: parcel.ask,
            });
            match ask(&address, &request, Duration::from_secs(2)).await {
                Some(Response::Node(internal::Answer::NotServed)) => Delivery::NotServed,
                Some(Response::Node(internal::Answer::Delivered(delivered))) => match delivered {
                    Delivered::Applied => Delivery::Applied,
                    Delivered::Skipped => Delivery::Skipped,
                    Delivered::Answered(reply) => Delivery::Answered(reply),
                    Delivered::Refused { code, message } => Delivery::Refused { code, message },
                    Delivered::Retry(detail) => Delivery::Retry(detail),
                    Delivered::Poison(detail) => Delivery::Poison(detail),
                },
                _ => Delivery::Retry("the target's node did not answer".into()),
            }
        })
    }
}
