//! The HTTP server: the router on hyper, with the bounds a slow or hostile client cannot pass.
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout never fires and a client that
//! sends its headers one byte at a time (slowloris) holds a connection forever. This loop is
//! axum's, plus:
//! - a deadline for each request's headers (`SWITCHYARD_HEADER_READ_TIMEOUT`), which also closes
//!   a kept-alive connection that sends no next request;
//! - a deadline for each request's whole body (`SWITCHYARD_BODY_READ_TIMEOUT`, counted from its
//!   headers), past which reading it fails with 408;
//! - a cap on open connections (`SWITCHYARD_MAX_CONNECTIONS`): at the cap the server stops
//!   accepting until one closes, so the process never runs out of file descriptors.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// What bounds a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request's headers may take to arrive (and an idle connection may stay open).
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive, from its headers.
    pub body_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
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

/// Serves `router` on `listener` until `shutdown`, then stops accepting and waits for the open
/// connections to finish their requests.
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
    let graceful = GracefulShutdown::new();
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
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, or a connection reset before it was taken: wait a
                // little rather than spin.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let first_bytes = limits.header_read_timeout;
        let body_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
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
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper's header timeout starts only once the protocol is known: a client that
            // sends nothing (or the HTTP/2 preface a byte at a time) must not hold the
            // connection before that.
            if !protocol_known(&stream, first_bytes).await {
                drop(permit);
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// What an HTTP/2 connection opens with (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits (within `within`) until the first bytes the client sent tell HTTP/1 from HTTP/2, as the
/// connection builder will read them; `false` when they do not come in time or the client left.
async fn protocol_known(stream: &tokio::net::TcpStream, within: Duration) -> bool {
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
