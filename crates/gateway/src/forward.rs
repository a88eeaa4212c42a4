//! Calls between nodes: a call for a shard another node serves goes to that node's internal
//! route, batched with the other calls bound there.
//!
//! - **Transport.** HTTP/2, one connection per peer that multiplexes requests: over TLS
//!   (ALPN `h2`) when the cluster's nodes serve HTTPS, each peer's certificate checked
//!   against what [`PeerTls`](crate::PeerTls) trusts; else without TLS (prior knowledge), on
//!   a private network. The cluster secret authenticates the nodes either way.
//! - **Encoding.** A request is a [`Batch`] of calls and its answer a list of [`Answer`]s in
//!   the same order, both in postcard (a compact binary serde format); the message and the
//!   reply stay the JSON bytes the client sent and the owner produced. The content type names
//!   the version ([`CONTENT_TYPE`]); a node refuses a version it does not know.
//! - **Batching.** Each peer has one queue. Up to [`IN_FLIGHT`] requests go to a peer at
//!   once; calls that arrive while they are all in flight wait and leave together, up to
//!   [`MAX_BATCH`] per request. A loaded node thus sends few large requests, an idle one
//!   sends each call at once.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
pub(crate) use perennial_api::internal::{
    AdminOp, Answer, Batch, CONTENT_TYPE, Delivered, PATH, Request, SECRET_HEADER,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Requests in flight to one peer at most.
const IN_FLIGHT: usize = 4;
/// Calls in one request at most.
const MAX_BATCH: usize = 512;
/// Bytes of messages in one request at most (one call over it goes alone).
pub(crate) const MAX_BATCH_BYTES: usize = 8 << 20;

/// Decodes `bytes` as the internal route's two messages, a [`Batch`] and a list of
/// [`Answer`]s, as a node receiving them does; what decodes must encode back to the same
/// value. Returns how many calls and answers decoded. For the fuzz targets
/// (`perennial-fuzz`).
///
/// # Panics
/// If a decoded value does not survive encoding and decoding again.
#[doc(hidden)]
pub fn decode_for_fuzzing(bytes: &[u8]) -> (Option<usize>, Option<usize>) {
    let batch = postcard::from_bytes::<Batch>(bytes).ok().inspect(|batch| {
        let again: Batch = postcard::from_bytes(&postcard::to_allocvec(batch).unwrap()).unwrap();
        assert_eq!(format!("{batch:?}"), format!("{again:?}"));
    });
    let answers = postcard::from_bytes::<Vec<Answer>>(bytes)
        .ok()
        .inspect(|answers| {
            let again: Vec<Answer> =
                postcard::from_bytes(&postcard::to_allocvec(answers).unwrap()).unwrap();
            assert_eq!(format!("{answers:?}"), format!("{again:?}"));
        });
    (batch.map(|b| b.calls.len()), answers.map(|a| a.len()))
}

/// Why a call could not be forwarded.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The request never reached the peer (no connection): nothing was applied.
    Unsent(String),
    /// The request may have reached the peer: the call may have been applied.
    Unknown(String),
}

type Waiter = oneshot::Sender<Result<Answer, Failure>>;
/// Each peer's queue, by address.
type Queues = HashMap<Arc<str>, mpsc::UnboundedSender<(Request, Waiter)>>;

/// The forwarding side of every peer of this node.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `https` when the peers serve HTTPS, else `http`.
    scheme: &'static str,
    secret: Arc<str>,
    peers: Arc<Mutex<Queues>>,
}

impl Forwarder {
    /// Calls the peers with `secret`, over TLS trusting `tls` if given.
    pub(crate) fn new(secret: &str, tls: Option<&crate::PeerTls>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let trusted = tls.map_or_else(
            || {
                // Plain HTTP only: the TLS side of the connector is never used.
                crate::tls::PeerTls::trusting(rustls::RootCertStore::empty())
                    .map(|t| t.config)
                    .unwrap_or_else(|_| unreachable!("a provider with safe defaults"))
            },
            |t| Arc::clone(&t.config),
        );
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*trusted).clone())
            .https_or_http()
            .enable_http2()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self {
            client,
            scheme: if tls.is_some() { "https" } else { "http" },
            secret: Arc::from(secret),
            peers: Arc::default(),
        }
    }

    /// Sends `call` to the node at `address` and waits for its answer.
    pub(crate) async fn call(&self, address: &Arc<str>, call: Request) -> Result<Answer, Failure> {
        let (tx, rx) = oneshot::channel();
        let queue = {
            let mut peers = self.peers.lock();
            let queue = peers.entry(Arc::clone(address)).or_insert_with(|| {
                let (queue, calls) = mpsc::unbounded_channel();
                tokio::spawn(pump(
                    self.clone(),
                    format!("{}://{address}{PATH}", self.scheme),
                    calls,
                ));
                queue
            });
            queue.clone()
        };
        queue
            .send((call, tx))
            .map_err(|_| Failure::Unsent("the forwarding queue is closed".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(Failure::Unknown("the forwarding task stopped".into())))
    }

    /// Sends one batch; answers its waiters.
    async fn send(&self, uri: &str, calls: Vec<(Request, Waiter)>) {
        let (calls, waiters): (Vec<Request>, Vec<Waiter>) = calls.into_iter().unzip();
        let result = self.request(uri, Batch { calls }).await;
        match result {
            Ok(answers) if answers.len() == waiters.len() => {
                for (waiter, answer) in waiters.into_iter().zip(answers) {
                    let _ = waiter.send(Ok(answer));
                }
            }
            Ok(answers) => {
                let failure = Failure::Unknown(format!(
                    "the peer answered {} calls of {}",
                    answers.len(),
                    waiters.len()
                ));
                for waiter in waiters {
                    let _ = waiter.send(Err(failure.clone()));
                }
            }
            Err(failure) => {
                for waiter in waiters {
                    let _ = waiter.send(Err(failure.clone()));
                }
            }
        }
    }

    async fn request(&self, uri: &str, batch: Batch) -> Result<Vec<Answer>, Failure> {
        let body = postcard::to_allocvec(&batch)
            .map_err(|e| Failure::Unsent(format!("cannot encode the batch: {e}")))?;
        let request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(SECRET_HEADER, &*self.secret)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::Unsent(format!("cannot build the request: {e}")))?;
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                Failure::Unsent(format!("cannot connect: {e}"))
            } else if refused_unprocessed(&e) {
                Failure::Unsent(format!("it was not processed: {}", chain(&e)))
            } else {
                Failure::Unknown(format!("the request failed: {}", chain(&e)))
            }
        })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Unknown(format!("the answer was cut: {e}")))?
            .to_bytes();
        if !status.is_success() {
            // Refused as a whole (wrong secret, unknown version): nothing ran.
            return Err(Failure::Unsent(format!(
                "the peer refused the batch with {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        postcard::from_bytes(&bytes)
            .map_err(|e| Failure::Unknown(format!("cannot decode the answers: {e}")))
    }
}

/// Drains one peer's queue into batches, at most [`IN_FLIGHT`] at a time.
async fn pump(
    forwarder: Forwarder,
    uri: String,
    mut calls: mpsc::UnboundedReceiver<(Request, Waiter)>,
) {
    let uri: Arc<str> = Arc::from(uri);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = calls.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut bytes = first.0.body_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match calls.try_recv() {
                Ok(call) => {
                    bytes += call.0.body_len();
                    batch.push(call);
                }
                Err(_) => break,
            }
        }
        let forwarder = forwarder.clone();
        let uri = Arc::clone(&uri);
        tokio::spawn(async move {
            let _slot = slot;
            forwarder.send(&uri, batch).await;
        });
    }
}

/// Whether the request was not processed, so that sending it again cannot apply it twice:
/// hyper never sent it (its connection closed first: a canceled request), or the peer said
/// it did not process it (RFC 9113, section 8.7): its stream was refused (`REFUSED_STREAM`),
/// or numbered past the last one the peer's GOAWAY said it would process, which is how a
/// node closing gracefully turns away requests that cross its goodbye. h2 fails only those
/// streams with the GOAWAY it received; streams cut by a closed connection fail otherwise.
pub(crate) fn refused_unprocessed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.is_remote())
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}

/// An error and its sources, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that carries `source` as its cause, as hyper's errors carry h2's.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (SendRequest)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn a_refused_stream_was_not_processed_and_a_broken_connection_may_have_been() {
        let refused = Wrapped(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert!(refused_unprocessed(&refused));
        let reset = Wrapped(Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR)));
        assert!(!refused_unprocessed(&reset));
        let broken = Wrapped(Box::new(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )));
        assert!(!refused_unprocessed(&broken));
        assert_eq!(chain(&broken), "client error (SendRequest): broken pipe");
    }
}
