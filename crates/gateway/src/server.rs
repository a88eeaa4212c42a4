//! The accept loop of [`serve`](crate::serve) and [`serve_tls`](crate::serve_tls): each
//! connection served by hyper, HTTP/1.1 or HTTP/2 as the client speaks, and a stop that
//! leaves no HTTP/2 request with its outcome unknown.
//!
//! An HTTP/2 request that races the stop is answered, or turned away in a way that tells
//! the client it was not processed, so that it can be sent elsewhere (a cluster node that
//! leaves relies on it: its peers resend what it turned away to the shard's new owner).
//! HTTP/1.1 has no such answer: a request sent on an idle keep-alive connection just as the
//! stop closes it meets a closed connection, as with any HTTP/1.1 server; its client cannot
//! tell whether it was processed, and retries it with an `Idempotency-Key` to be sure.
//! Stopping:
//! 1. takes in the connections the kernel has already set up but nobody accepted yet, and
//!    closes the listener: a connection still queued there would be reset with its request
//!    unread, while one attempted after the close is refused, which says clearly that
//!    nothing was sent;
//! 2. then asks each connection to finish: HTTP/2 sends GOAWAY, after which the client
//!    knows which of its streams were not processed; HTTP/1.1 ends the request under way
//!    and then the connection. A connection that has not yet shown which HTTP it speaks is
//!    given a moment to ([`SAY_VERSION_WITHIN`]), since hyper would drop it with its first
//!    request unread;
//! 3. waits for the requests under way, at most [`DRAIN_WITHIN`], then cuts what is left;
//!    event streams (a watch, a change feed), which would go on for as long as their
//!    clients stay, end at once.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// How long requests under way may take to finish once the gateway stops.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);
/// How long a connection open when the gateway stops may take to show which HTTP it speaks.
const SAY_VERSION_WITHIN: Duration = Duration::from_millis(500);
/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `app` on `listener` until `shutdown` completes, then stops as the module says.
/// Dropped before then (its task aborted, say), it stops serving at once: its connections are
/// cut, not drained.
/// `handshake` turns each accepted TCP stream into the stream HTTP is spoken on (TLS, say)
/// and a marker that each of its requests carries as an extension (whether a TLS client
/// showed a certificate, say), or gives `None` to drop the connection.
pub(crate) async fn run<S, M, H, F>(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    handshake: H,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: Clone + Send + Sync + 'static,
    H: Fn(TcpStream) -> F + Clone + Send + 'static,
    F: Future<Output = Option<(S, Option<M>)>> + Send + 'static,
{
    let http = auto::Builder::new(TokioExecutor::new());
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut accept = |tcp: TcpStream| {
        // Replies are small and wanted at once: no waiting to coalesce them (Nagle).
        let _ = tcp.set_nodelay(true);
        let (handshake, app, http, stopping) = (
            handshake.clone(),
            app.clone(),
            http.clone(),
            stopping.clone(),
        );
        connections.spawn(async move {
            if let Some((stream, marker)) = handshake(tcp).await {
                connection(stream, marker, app, http, stopping).await;
            }
        });
        // Forget the connections that have ended.
        while connections.try_join_next().is_some() {}
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => accept(tcp),
                // A client gave up before it was accepted: nothing to do.
                Err(error) if gone(&error) => {}
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    // The kernel's queue, taken in without waiting: what the reactor has not yet reported
    // is there too.
    let listener = listener.into_std()?;
    loop {
        match listener.accept() {
            Ok((tcp, _)) => match tcp
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(tcp))
            {
                Ok(tcp) => accept(tcp),
                Err(error) => tracing::warn!(%error, "cannot take in a queued connection"),
            },
            Err(error) if error.kind() == io::ErrorKind::Interrupted || gone(&error) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => {
                tracing::warn!(%error, "cannot take in the queued connections; the rest are reset");
                break;
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_WITHIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "requests still under way after {} s are cut off",
            DRAIN_WITHIN.as_secs()
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Whether `error`, from accepting a connection, says only that its client left first.
fn gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, or until the gateway stops and it has finished.
async fn connection<S, M>(
    stream: S,
    marker: Option<M>,
    app: Router,
    http: auto::Builder<TokioExecutor>,
    mut stopping: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: Clone + Send + Sync + 'static,
{
    let (stream, version) = Sniffed::new(stream);
    let ends = stopping.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        if let Some(marker) = &marker {
            request.extensions_mut().insert(marker.clone());
        }
        let response = tower::ServiceExt::oneshot(app.clone(), request);
        let ends = ends.clone();
        async move { Ok::<_, Infallible>(until_stopped(response.await?, ends)) }
    });
    let connection = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => return log(ended),
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    tokio::select! {
        ended = connection.as_mut() => return log(ended),
        _ = tokio::time::timeout(SAY_VERSION_WITHIN, version.known()) => {}
    }
    connection.as_mut().graceful_shutdown();
    log(connection.await);
}

/// An event stream (Server-Sent Events: a watch, a change feed) does not end by itself: it
/// ends when the gateway stops, so that the stop need not wait for its client to leave. The
/// client connects again (an `EventSource` does so by itself), and a change feed resumes
/// from its cursor.
fn until_stopped(response: Response, mut stopping: watch::Receiver<bool>) -> Response {
    let events = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if !events {
        return response;
    }
    response.map(|body| {
        let stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        Body::from_stream(body.into_data_stream().take_until(stopped))
    })
}

fn log(ended: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = ended {
        tracing::debug!(%error, "a connection ended with an error");
    }
}

/// Whether a connection's first bytes have shown which HTTP it speaks.
#[derive(Default)]
struct Version {
    known: AtomicBool,
    changed: Notify,
}

impl Version {
    /// Completes once the version is known.
    async fn known(&self) {
        while !self.known.load(Ordering::Acquire) {
            self.changed.notified().await;
        }
    }

    fn set_known(&self) {
        self.known.store(true, Ordering::Release);
        self.changed.notify_one();
    }
}

/// A stream that watches its first bytes until they show whether they are HTTP/2's
/// preface, as hyper's version detection reads them.
struct Sniffed<S> {
    inner: S,
    /// The bytes read so far, until the version is known.
    first: Vec<u8>,
    version: Arc<Version>,
}

impl<S> Sniffed<S> {
    fn new(inner: S) -> (Self, Arc<Version>) {
        let version = Arc::new(Version::default());
        let sniffed = Self {
            inner,
            first: Vec::with_capacity(H2_PREFACE.len()),
            version: Arc::clone(&version),
        };
        (sniffed, version)
    }

    /// Takes note of `bytes`, just read (none: the end of the stream).
    fn saw(&mut self, bytes: &[u8]) {
        let wanted = H2_PREFACE.len() - self.first.len();
        self.first
            .extend_from_slice(&bytes[..bytes.len().min(wanted)]);
        if bytes.is_empty()
            || self.first.len() == H2_PREFACE.len()
            || !H2_PREFACE.starts_with(&self.first)
        {
            self.first = Vec::new();
            self.version.set_known();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.version.known.load(Ordering::Relaxed) {
            match &polled {
                Poll::Ready(Ok(())) => this.saw(&buf.filled()[before..]),
                Poll::Ready(Err(_)) => this.version.set_known(),
                Poll::Pending => {}
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use axum::body::Bytes;
    use http_body_util::{BodyExt, Full};
    use perennial_core::Runtime;

    use super::*;
    use crate::forward::refused_unprocessed;

    /// A gateway over the demo kinds (in memory) on a loopback port, until stopped.
    struct Served {
        rt: Runtime,
        addr: std::net::SocketAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Served {
        async fn start() -> Served {
            let store = perennial_storage::MemoryStore::new();
            let rt = perennial_demo::register(Runtime::builder().store(store))
                .start()
                .await
                .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let options = crate::Options::default();
            let server = tokio::spawn(crate::serve(listener, rt.clone(), options, shutdown));
            Served {
                rt,
                addr,
                stop,
                server,
            }
        }

        /// Stops the gateway and the runtime; fails unless the gateway stops `within`.
        async fn stop(self, within: Duration) {
            self.stop.send(()).unwrap();
            tokio::time::timeout(within, self.server)
                .await
                .expect("the gateway stopped in time")
                .unwrap()
                .unwrap();
            self.rt.shutdown().await;
        }
    }

    /// How each request that raced the stop ended.
    #[derive(Default)]
    struct Tally {
        answered: AtomicU64,
        turned_away: AtomicU64,
        cut: AtomicU64,
    }

    type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

    /// An HTTP/2 connection (prior knowledge, as nodes call each other), or `None` if none can
    /// be made: then no request was sent.
    async fn connect(addr: std::net::SocketAddr) -> Option<Sender> {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(connection);
        Some(sender)
    }

    /// Sends one call on `sender`; tallies how it ended. Returns whether the connection is
    /// still worth using.
    async fn call(sender: &mut Sender, addr: std::net::SocketAddr, id: u64, tally: &Tally) -> bool {
        if sender.ready().await.is_err() {
            // The connection closed before this request was sent on it.
            return false;
        }
        let request = hyper::Request::post(format!("http://{addr}/v1/counter/c{id}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"add":1}"#)))
            .unwrap();
        match sender.send_request(request).await {
            Ok(response) => match response.into_body().collect().await {
                Ok(_) => {
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(error) => {
                    eprintln!("an answer was cut: {error:?}");
                    tally.cut.fetch_add(1, Ordering::Relaxed);
                    false
                }
            },
            Err(error) if refused_unprocessed(&error) => {
                tally.turned_away.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(error) => {
                eprintln!("a request was cut: {error:?}");
                tally.cut.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Calls `addr` until `done`: half the callers keep one connection for as long as it
    /// serves, the others open a new one for every call (as a node does once a GOAWAY has
    /// retired its connection), so that some connect just as the server stops.
    async fn caller(
        addr: std::net::SocketAddr,
        fresh: bool,
        done: Arc<AtomicBool>,
        tally: Arc<Tally>,
    ) {
        let mut kept: Option<Sender> = None;
        let mut id = 0;
        while !done.load(Ordering::Relaxed) {
            id += 1;
            let mut sender = match kept.take() {
                Some(sender) => sender,
                None => match connect(addr).await {
                    Some(sender) => sender,
                    None => {
                        tokio::task::yield_now().await;
                        continue;
                    }
                },
            };
            if call(&mut sender, addr, id % 16, &tally).await && !fresh {
                kept = Some(sender);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_gateway_answers_or_turns_away_every_request_it_was_sent() {
        const ROUNDS: usize = 12;
        const CALLERS: usize = 8;
        let tally = Arc::new(Tally::default());
        for round in 0..ROUNDS {
            let served = Served::start().await;
            let addr = served.addr;
            let done = Arc::new(AtomicBool::new(false));
            let callers: Vec<_> = (0..CALLERS)
                .map(|i| {
                    tokio::spawn(caller(
                        addr,
                        i % 2 == 0,
                        Arc::clone(&done),
                        Arc::clone(&tally),
                    ))
                })
                .collect();
            // Stop at a different moment of the callers' work each round.
            tokio::time::sleep(Duration::from_millis(20 + 7 * round as u64)).await;
            served.stop(Duration::from_secs(30)).await;
            done.store(true, Ordering::Relaxed);
            for caller in callers {
                caller.await.unwrap();
            }
        }
        let (answered, turned_away, cut) = (
            tally.answered.load(Ordering::Relaxed),
            tally.turned_away.load(Ordering::Relaxed),
            tally.cut.load(Ordering::Relaxed),
        );
        println!("{answered} answered, {turned_away} turned away unprocessed, {cut} cut");
        assert!(answered > 0, "no request was answered");
        assert_eq!(cut, 0, "requests were cut with their outcome unknown");
    }

    /// A watch's event stream ends when the gateway stops, instead of holding the stop for
    /// as long as its client stays (30 s at most, then cut).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_ends_event_streams_at_once() {
        let served = Served::start().await;
        let addr = served.addr;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let watch = hyper::Request::get(format!("http://{addr}/v1/counter/w/watch"))
            .body(Full::default())
            .unwrap();
        let response = client.request(watch).await.unwrap();
        assert_eq!(response.status(), 200);
        // Far less than the 30 s the stop would wait for a request under way.
        served.stop(Duration::from_secs(5)).await;
        let events = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
            .await
            .expect("the event stream ended");
        assert!(events.is_ok(), "the event stream ended cleanly: {events:?}");
    }

    fn sniff(reads: &[&[u8]]) -> bool {
        let (mut sniffed, version) = Sniffed::new(());
        for bytes in reads {
            sniffed.saw(bytes);
        }
        version.known.load(Ordering::Relaxed)
    }

    #[test]
    fn the_version_is_known_once_the_first_bytes_are_or_are_not_http2_s_preface() {
        assert!(
            sniff(&[b"GET / HTTP/1.1\r\n"]),
            "HTTP/1 from its first byte"
        );
        assert!(sniff(&[b"P", b"OST"]), "POST differs at its second byte");
        assert!(!sniff(&[b"PRI * HTTP/2.0"]), "part of the preface");
        assert!(
            sniff(&[b"PRI * HTTP/2.0", b"\r\n\r\nSM\r\n\r\n\0\0"]),
            "the whole preface"
        );
        assert!(sniff(&[b"PR", b""]), "the end of the stream");
    }
}
