//! Accept loops: HTTP/1.1 with keep-alive (and, over TLS, HTTP/2 when ALPN picks `h2`;
//! the handshake is done in the connection's task, within `header_read_timeout`), a
//! connection cap and a per-address share of it,
//! deadlines for the whole request (headers, body, handler, response write), and a
//! graceful drain on shutdown (in-flight requests finish; no new ones start).
//!
//! The header read timeout is hyper's; the body read deadline lives in
//! `http::request::read_body` and the handler deadline in `http::handle`, both from
//! [`ListenerLimits`]; the write deadline is [`DeadlineIo`] here, because only the IO
//! layer sees a client that stops reading.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;

use crate::app::App;
use crate::clients::PeerCert;
use crate::limits::Cidr;
use crate::metrics as m;

/// How long in-flight requests get to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(30);

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub max_connections: usize,
    /// Connections one peer address may hold at once. Peers in `exempt` (trusted
    /// proxies, which multiplex many clients) are not counted.
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    pub exempt: Arc<[Cidr]>,
}

/// Peer address → connections it holds now.
#[derive(Default)]
struct PerIp {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's claim on its address's share; released on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// Streams an HTTP/2 connection may have open at once (each is a request).
const H2_MAX_STREAMS: u32 = 64;

/// How often an HTTP/2 connection is pinged.
const H2_PING_EVERY: Duration = Duration::from_secs(30);

/// A listener's connection cap and per-address shares: one per listening address, shared
/// by every accept loop serving it (the `per_core` runtime has one loop per worker, and
/// `limits.max_connections` still bounds them together).
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
}

impl Gate {
    pub fn new(limits: &ListenerLimits) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: Arc::new(PerIp::default()),
        }
    }
}

/// Serves `listener` with `handler` until `shutdown` flips, then drains. With `tls`, every
/// connection is a TLS one (see [`crate::tls`]).
pub async fn serve<H, F>(
    listener: TcpListener,
    app: App,
    handler: H,
    limits: ListenerLimits,
    tls: Option<crate::tls::Listener>,
    shutdown: watch::Receiver<bool>,
) where
    H: Fn(App, Request<Incoming>, IpAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let gate = Gate::new(&limits);
    serve_gated(listener, app, handler, limits, gate, tls, shutdown).await
}

/// [`serve`] with a [`Gate`] shared with other accept loops on the same address.
pub async fn serve_gated<H, F>(
    listener: TcpListener,
    app: App,
    handler: H,
    limits: ListenerLimits,
    gate: Gate,
    tls: Option<crate::tls::Listener>,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(App, Request<Incoming>, IpAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let Gate { permits, per_ip } = gate;
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    // HTTP/2 has no header read timeout in hyper: pings find a peer that went away (no
    // answer within the write deadline closes the connection).
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(Some(H2_PING_EVERY))
        .keep_alive_timeout(limits.write_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let ip = peer.ip().to_canonical();
        // The per-address share first: a flood from one address must not use up the
        // global slots that others need.
        let slot = if limits.exempt.iter().any(|c| c.contains(ip)) {
            None
        } else {
            match per_ip.try_take(crate::limits::limit_key(ip), limits.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "per_ip").increment(1);
                    drop(stream);
                    continue;
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "cap").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let handler = handler.clone();
        // The handshake's client certificate rides on every request of the connection as
        // an extension: only the accept loop can set it, no header can stand in for it.
        let service = move |peer: Option<Arc<PeerCert>>| {
            service_fn(move |mut req: Request<Incoming>| {
                if let Some(p) = &peer {
                    req.extensions_mut().insert(p.clone());
                }
                handler(app.clone(), req, ip)
            })
        };
        let io = DeadlineIo::new(stream, limits.write_timeout);
        let watcher = graceful.watcher();
        let (h1, h2, tls) = (builder.clone(), h2.clone(), tls.clone());
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    watcher
                        .watch(h1.serve_connection(TokioIo::new(io), service(None)))
                        .await
                }
                Some(tls) => {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        tls.acceptor.accept(io),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            metrics::counter!(m::TLS_HANDSHAKE_FAILURES, "reason" => "error")
                                .increment(1);
                            return;
                        }
                        Err(_) => {
                            metrics::counter!(m::TLS_HANDSHAKE_FAILURES, "reason" => "timeout")
                                .increment(1);
                            return;
                        }
                    };
                    let conn = stream.get_ref().1;
                    let h2_chosen = conn.alpn_protocol() == Some(crate::tls::ALPN_H2);
                    let peer = tls
                        .client_auth
                        .as_ref()
                        .and_then(|ca| ca.peer(conn))
                        .map(Arc::new);
                    let io = TokioIo::new(stream);
                    if h2_chosen {
                        watcher.watch(h2.serve_connection(io, service(peer))).await
                    } else {
                        watcher.watch(h1.serve_connection(io, service(peer))).await
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
}

/// Binds `n` sockets to `addr`, all with `SO_REUSEPORT`, for the `per_core` runtime: the
/// kernel spreads incoming connections over them (by a hash of the connection's
/// addresses), so each worker accepts its own without waking another. The first bind
/// decides the port when `addr`'s is 0. Linux lets only sockets of the same effective
/// user share a port this way, so another user's process cannot take a share.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut bound = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let socket = match at {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(at)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        at = listener.local_addr()?;
        bound.push(listener.into_std()?);
    }
    Ok(bound)
}

/// The accept backlog of every listening socket (tokio's default for `TcpListener::bind`).
const LISTEN_BACKLOG: u32 = 1024;

/// Serves each of `listeners` (from [`bind_reuseport`]) on its own thread with its own
/// single-threaded runtime: a connection, its requests and its responses stay on the thread
/// that accepted it, so no request wakes another thread. The connection cap is shared.
/// The future returned resolves once every worker has drained after `shutdown` flips. Work the handlers hand to
/// the node's background tasks (the store's connections, the follower) stays on the
/// runtime that started them; only the request path moves.
///
/// Every worker's thread and runtime are started before this returns: an error here is a
/// start-up error, never a listener that quietly serves on fewer workers.
pub fn serve_per_core<H, F>(
    listeners: Vec<std::net::TcpListener>,
    app: App,
    handler: H,
    limits: ListenerLimits,
    tls: Option<crate::tls::Listener>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<impl Future<Output = ()> + Send + 'static>
where
    H: Fn(App, Request<Incoming>, IpAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let gate = Gate::new(&limits);
    let mut done = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (app, handler, limits, gate, tls, shutdown) = (
            app.clone(),
            handler.clone(),
            limits.clone(),
            gate.clone(),
            tls.clone(),
            shutdown.clone(),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("latch-core-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            serve_gated(listener, app, handler, limits, gate, tls, shutdown).await
                        }
                        Err(error) => tracing::error!(%error, "worker cannot take its socket"),
                    }
                });
                let _ = tx.send(());
            })?;
        done.push(rx);
    }
    Ok(async move {
        for rx in done {
            let _ = rx.await;
        }
    })
}

// === impl DeadlineIo ===

/// A stream whose writes fail with `TimedOut` once a write has made no progress for
/// `timeout`: a client that stops reading its response is cut off instead of holding
/// the connection (and its slot) for as long as it likes.
pub struct DeadlineIo<T> {
    inner: T,
    timeout: Duration,
    /// Armed when a write returns `Pending`; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> DeadlineIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        DeadlineIo {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when the inner write is pending: errors once the deadline has passed.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!(m::DEADLINES_TOTAL, "phase" => "write").increment(1);
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "response write deadline passed",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_reading_fails_the_write_at_the_deadline() {
        // A 64-byte pipe whose far end never reads: the second write stalls.
        let (near, far) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(near, Duration::from_secs(5));
        io.write_all(&[0u8; 64]).await.unwrap();
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Progress resets the deadline: a reader that keeps up is never cut off.
        let (near, mut far2) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(near, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 64 * 20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += far2.read(&mut buf).await.unwrap();
            }
        });
        for _ in 0..20 {
            io.write_all(&[1u8; 64]).await.unwrap();
        }
        reader.await.unwrap();
        drop(far);
    }
}
