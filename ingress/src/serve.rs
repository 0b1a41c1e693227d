//! The HTTP server: the router on hyper, with the bounds a slow or hostile client cannot pass.
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout never fires and a client that
//! sends its headers one byte at a time (slowloris) holds a connection forever. This loop is
//! axum's, plus:
//! - a deadline for a connection's first bytes and for each request's headers
//!   (`SWITCHYARD_HEADER_READ_TIMEOUT`);
//! - a connection on which no request has started for that long is closed gracefully (an
//!   answer still going, such as an event stream, runs to its end first): idle HTTP/1
//!   keep-alive and HTTP/2 connections alike;
//! - a deadline for each request's whole body (`SWITCHYARD_BODY_READ_TIMEOUT`, counted from its
//!   headers), past which reading it fails with 408;
//! - a deadline for every write to make progress (`SWITCHYARD_WRITE_TIMEOUT`): a client that
//!   stops reading its answer loses the connection;
//! - a cap on open connections (`SWITCHYARD_MAX_CONNECTIONS`, at which the server stops accepting
//!   until one closes) and on those of one peer address (`SWITCHYARD_MAX_CONNECTIONS_PER_PEER`,
//!   past which a new one is closed at once).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// What bounds a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request's headers may take to arrive (and a connection may stay idle).
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive, from its headers.
    pub body_read_timeout: Duration,
    /// How long a write to the client may wait for the client to read.
    pub write_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one peer address; 0 for no such cap.
    pub max_connections_per_peer: usize,
}

/// The text of the error a body past its deadline fails with (the extractors turn it into 408).
pub const BODY_TIMEOUT: &str = "the request body did not arrive in time";

/// A request body that fails once its deadline passes.
struct Deadline {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BODY_TIMEOUT.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes fail once one has waited `timeout` for the client to read.
struct TimedWrites {
    inner: TcpStream,
    timeout: Duration,
    /// Armed while a write waits.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TimedWrites {
    /// `Pending` from the socket arms the deadline; past it the write fails.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for TimedWrites {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedWrites {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Open connections per peer address; a place is given back when its guard drops.
#[derive(Default)]
struct Peers {
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct PeerPlace {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<PeerPlace> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let held = open.entry(ip).or_default();
        if cap > 0 && *held >= cap {
            return None;
        }
        *held += 1;
        Some(PeerPlace {
            peers: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = open.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then stops accepting, asks every connection
/// to close once its answers are done, and waits for them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(Peers::default());
    let connections = TaskTracker::new();
    let started = tokio::time::Instant::now();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, or a connection reset before it was taken: wait a
                // little rather than spin.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(place) = peers.take(peer.ip(), limits.max_connections_per_peer) else {
            tracing::debug!(%peer, "closing a connection past the peer's cap");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // When the connection's last request started, in milliseconds from `started`.
        let last_request = Arc::new(AtomicU64::new(millis_since(started)));
        let touched = Arc::clone(&last_request);
        let body_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            touched.store(millis_since(started), Ordering::Relaxed);
            let request = request.map(|incoming| {
                Body::new(Deadline {
                    inner: Body::new(incoming),
                    deadline: Box::pin(tokio::time::sleep(body_timeout)),
                })
            });
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.oneshot(request).await.into_response()) }
        });
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _held = (permit, place);
            // hyper's header timeout starts only once the protocol is known: a client that
            // sends nothing (or the HTTP/2 preface a byte at a time) must not hold the
            // connection before that.
            if !protocol_known(&stream, limits.header_read_timeout).await {
                return;
            }
            let io = TimedWrites {
                inner: stream,
                timeout: limits.write_timeout,
                waiting: None,
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(connection);
            let idle_after = limits.header_read_timeout;
            let mut checks = tokio::time::interval(idle_after);
            checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut closing = false;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(err) = served {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                        break;
                    }
                    () = shutdown.cancelled(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = checks.tick(), if !closing => {
                        let idle = millis_since(started)
                            .saturating_sub(last_request.load(Ordering::Relaxed));
                        if Duration::from_millis(idle) >= idle_after {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

fn millis_since(start: tokio::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What an HTTP/2 connection opens with (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits (within `within`) until the first bytes the client sent tell HTTP/1 from HTTP/2, as the
/// connection builder will read them; `false` when they do not come in time or the client left.
async fn protocol_known(stream: &TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 24];
    loop {
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        if buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
            return true;
        }
        // A preface still arriving: `peek` answers at once with what is there, so wait a little.
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(20)))
            .await
            .is_err()
        {
            return false;
        }
    }
}

/// `Result<Response, Infallible>` from the router, as a response.
trait IntoResponse {
    fn into_response(self) -> axum::response::Response;
}

impl IntoResponse for Result<axum::response::Response, Infallible> {
    fn into_response(self) -> axum::response::Response {
        match self {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn a_client_that_stops_reading_fails_the_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The client connects and never reads.
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut timed = TimedWrites {
            inner: server,
            timeout: Duration::from_millis(300),
            waiting: None,
        };
        let chunk = vec![0u8; 1 << 20];
        let written = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Err(err) = timed.write_all(&chunk).await {
                    return err;
                }
            }
        })
        .await
        .expect("the write fails instead of waiting for ever");
        assert_eq!(written.kind(), std::io::ErrorKind::TimedOut);
    }

    #[test]
    fn a_peer_holds_at_most_its_cap() {
        let peers = Arc::new(Peers::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let a = peers.take(ip, 2).expect("first");
        let _b = peers.take(ip, 2).expect("second");
        assert!(peers.take(ip, 2).is_none());
        assert!(peers.take("10.0.0.2".parse().expect("ip"), 2).is_some());
        drop(a);
        assert!(
            peers.take(ip, 2).is_some(),
            "a closed connection frees its place"
        );
        assert!(peers.take(ip, 0).is_some(), "0 is no cap");
    }
}
