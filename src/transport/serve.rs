//! The accept loop: HTTP/1.1 connections served by hyper, with the limits
//! axum's own `serve` does not set.
//!
//! - **Header-read timeout.** hyper starts the timer each time it waits for a
//!   request head (a new connection, and between requests on a kept-alive
//!   one), so it closes both a slow-header client and an idle connection.
//!   Responses in progress (SSE streams, a long `agent_run`) are not cut.
//! - **A connection cap.** Each connection holds a slot; at the cap, new ones
//!   wait in the kernel's backlog until a slot frees, rather than the server
//!   running out of file descriptors (then nothing, `/healthz` included,
//!   could be answered).
//! - **Graceful stop.** When `stop` fires, the listener closes, and every
//!   connection finishes the request it is serving and closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// What one connection may do.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest wait for a request's head, including between requests.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// The connection cap when `[http] max_connections` is 0: the open-file
/// limit minus room for the store, the KB, provider connections and logs.
pub fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let files = if rc == 0 { lim.rlim_cur } else { 1024 };
    let files = usize::try_from(files).unwrap_or(usize::MAX);
    // Half of what is left after a fixed reserve: providers, the KB watcher
    // and the store need descriptors of their own under load.
    (files.saturating_sub(128) / 2).clamp(16, 65_536)
}

/// Serve `router` on `listener` until `stop` is cancelled, then let each
/// connection finish its request in flight and close; returns when all have.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let conns = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory, or the peer gave up
                    // before we took it: none of these ends the server.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = router
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req.map(Body::new)
            });
        let stop = stop.clone();
        conns.spawn(async move {
            let _slot = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let conn = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}
