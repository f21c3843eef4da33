//! The HTTP server (`dispatch serve --http ADDR`): Streamable HTTP at `/mcp`
//! (rmcp), the legacy HTTP+SSE pair `GET /sse` + `POST /messages` (here, on
//! axum), `/healthz`, `/metrics`, and the OAuth2 protected-resource metadata.
//!
//! With [`crate::mcp`], the only code that knows MCP and JSON-RPC. Every
//! request passes [`guard`] first: `Host`/`Origin` allow-lists, then bearer
//! authentication, rate limits, body limits and per-tool scopes.

pub mod guard;
mod serve;
pub mod sse;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

use crate::app::App;
use crate::auth::{AuthConfigError, Authenticator, Principal};
use crate::config::HttpSection;
use crate::engine::Engine;
use crate::mcp::DispatchServer;

/// How to serve HTTP (from the command line; the rest is `[http]` and
/// `[auth]` in dispatch.toml).
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Address to bind (`127.0.0.1:8080`; port 0 picks one).
    pub addr: SocketAddr,
    /// Serve a non-loopback address without `[auth]` (a proxy in front
    /// authenticates).
    pub allow_unauthenticated: bool,
}

/// Errors starting or running the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Serving this address this way would be unsafe.
    #[error("{0}")]
    Refused(String),
    /// A setting in dispatch.toml is unusable.
    #[error("dispatch.toml: {0}")]
    Config(String),
    /// `[auth]` is unusable.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source} (is another server using the port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler and middleware shares.
pub struct Shared {
    app: Arc<App>,
    engine: Arc<Engine>,
    kb_changes: broadcast::Sender<crate::app::KbChange>,
    auth: Option<Authenticator>,
    allow: guard::AllowList,
    limiter: Option<guard::Limiter>,
    config: HttpSection,
    /// Where the RFC 9728 metadata is (sent in `WWW-Authenticate`).
    metadata_url: String,
    /// Cancelled at shutdown: ends SSE streams and MCP sessions.
    shutdown: CancellationToken,
    /// Tool calls in flight, so shutdown can let them finish.
    calls: TaskTracker,
    sse: sse::Sessions,
    /// rmcp's Streamable HTTP sessions (and their resumable streams).
    mcp_sessions: Arc<LocalSessionManager>,
    /// Which subject opened each Streamable HTTP session.
    mcp_owners: guard::SessionOwners,
}

impl Shared {
    /// A server instance for one MCP session.
    fn mcp_server(&self, principal: Option<Principal>) -> DispatchServer {
        DispatchServer::new(
            self.app.clone(),
            self.engine.clone(),
            self.kb_changes.clone(),
        )
        .with_principal(principal)
        .with_call_tracker(self.calls.clone())
        .with_transport(crate::mcp::Transport::Http)
    }
}

/// Serve MCP over HTTP on `opts.addr` until `shutdown` resolves; then stop
/// accepting, let tool calls in flight finish within `[http]
/// shutdown_grace_secs`, and close every stream. Tasks live on in the store.
pub async fn serve_http(
    app: Arc<App>,
    engine: Arc<Engine>,
    kb_changes: broadcast::Sender<crate::app::KbChange>,
    opts: HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let config = app.config.http.clone();
    let auth_config = app.config.auth.clone();
    if auth_config.is_none() && !opts.addr.ip().is_loopback() && !opts.allow_unauthenticated {
        return Err(HttpError::Refused(format!(
            "refusing to serve {} without authentication: anyone who can reach it could run agents \
             on your keys. Configure [auth] in dispatch.toml (see README, \"OAuth2\"), bind a loopback \
             address such as 127.0.0.1:{}, or pass --allow-unauthenticated if a proxy in front \
             authenticates",
            opts.addr,
            opts.addr.port()
        )));
    }
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: opts.addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(HttpError::Serve)?;

    let auth = match auth_config {
        Some(c) => Some(Authenticator::new(c).await?),
        None => None,
    };
    let public_url = config.public_url.clone().or_else(|| {
        app.config
            .auth
            .as_ref()
            .and_then(|a| origin_of(&a.audience))
    });
    let allow = guard::AllowList::new(
        bound,
        public_url.as_deref(),
        &config.allowed_hosts,
        &config.allowed_origins,
    )
    .map_err(HttpError::Config)?;
    if !bound.ip().is_loopback() && config.allowed_hosts.is_empty() && public_url.is_none() {
        tracing::warn!(
            "serving {bound} but only loopback names and the bare IP are allowed in Host: \
             set [http] public_url or allowed_hosts to the name clients use"
        );
    }
    let metadata_url = metadata_url(
        public_url.as_deref(),
        app.config.auth.as_ref().map(|a| a.audience.as_str()),
        bound,
    );
    // Instances sharing a PostgreSQL store share the rate too.
    let limiter = guard::Limiter::new(
        config.rate_limit_per_minute,
        config.rate_limit_burst,
        (engine.store().backend() == crate::store::Backend::Postgres)
            .then(|| engine.store().clone()),
    );
    let shared = Arc::new(Shared {
        app,
        engine,
        kb_changes,
        auth,
        allow,
        // Instances sharing a PostgreSQL store share the rate too.
        limiter,
        config: config.clone(),
        metadata_url,
        shutdown: CancellationToken::new(),
        calls: TaskTracker::new(),
        sse: sse::Sessions::default(),
        mcp_sessions: Arc::new(mcp_session_manager(Duration::from_secs(
            config.request_timeout_secs,
        ))),
        mcp_owners: guard::SessionOwners::default(),
    });
    let router = router(shared.clone());

    {
        // Keyed limiters remember every key, and owners outlive the sessions
        // rmcp ends (idle, closed); forget both.
        let s = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = s.shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Some(l) = &s.limiter {
                            l.prune();
                        }
                        // Bound only after rmcp added them, so one missing
                        // from rmcp's map has ended (ids are never reused).
                        let bound = s.mcp_owners.sessions();
                        if !bound.is_empty() {
                            let live = s.mcp_sessions.sessions.read().await;
                            let ended: Vec<String> = bound
                                .into_iter()
                                .filter(|id| !live.contains_key(id.as_str()))
                                .collect();
                            drop(live);
                            s.mcp_owners.forget(&ended);
                        }
                    }
                }
            }
        });
    }

    tracing::info!(
        "dispatch {} listening on http://{bound} (Streamable HTTP at /mcp, legacy SSE at /sse){}",
        env!("CARGO_PKG_VERSION"),
        if shared.auth.is_some() {
            ", OAuth2 required"
        } else {
            ""
        }
    );

    // Shutdown: stop accepting at once; let requests in flight finish (their
    // answers included), bounded by the grace period; then end the streams
    // that never end by themselves (GET /mcp, GET /sse) so connections close.
    let stopping = CancellationToken::new();
    let stop = stopping.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    let limits = serve::ConnLimits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
        max_connections: match config.max_connections {
            0 => serve::default_max_connections(),
            n => n,
        },
    };
    tracing::debug!(
        max_connections = limits.max_connections,
        header_read_timeout_secs = limits.header_read_timeout.as_secs(),
        "connection limits"
    );
    let server = serve::serve(listener, router, limits, stopping.clone());
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let s = shared.clone();
    let drain = async move {
        stopping.cancelled().await;
        // From here a closing connection no longer cancels the task it started.
        s.engine.begin_shutdown();
        tracing::info!("shutting down: no new connections; waiting for tool calls in flight");
        s.calls.close();
        if tokio::time::timeout(grace, s.calls.wait()).await.is_err() {
            tracing::warn!(
                "tool calls still running after {} s ([http] shutdown_grace_secs); their tasks \
                 stay in the store and resume at the next start",
                grace.as_secs()
            );
        }
        s.shutdown.cancel();
        // Connections that ignore their closed streams get a last moment.
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        () = server => {}
        _ = drain => tracing::warn!("closing connections that stayed open after shutdown"),
    }
    tracing::info!("HTTP server stopped");
    Ok(())
}

/// The `retry:` hint of the priming events that open every SSE stream: how
/// long a client waits before reconnecting with `Last-Event-ID`.
const SSE_RETRY: Duration = Duration::from_secs(3);
/// Events kept per SSE stream for replay (also each stream's buffer).
const SSE_REPLAY_EVENTS: usize = 16;
/// A Streamable HTTP session idle this long ends, at the least. rmcp counts
/// only messages as activity (not open streams or keep-alives), so a tool
/// call that sends nothing, not even progress, would lose its session; the
/// idle time is therefore never shorter than the request timeout (plus a
/// minute), which bounds every call.
const SESSION_IDLE: Duration = Duration::from_secs(300);

/// Streamable HTTP sessions, in memory (rmcp's `LocalSessionManager`), with
/// resumption switched on explicitly rather than by rmcp's defaults:
///
/// - `sse_retry`: each POST request's SSE stream opens with a priming event
///   (`id: 0/<stream>`, `retry:`), and every event on it has an id
///   `<index>/<stream>`. Without it a client that drops before the first
///   message has no id to resume from.
/// - `channel_capacity`: the last this-many events of each stream are kept;
///   `GET /mcp` with `Mcp-Session-Id` and `Last-Event-ID` replays those from
///   that id on (the event with that id included) and then carries the rest
///   of the stream. Only while the request runs: once its answer is sent
///   rmcp drops the stream's cache, and resuming it gets an empty stream.
/// - `keep_alive`: a session idle this long ends, with its caches.
///
/// No event store: ids are per session, and a session lives in this process.
fn mcp_session_manager(request_timeout: Duration) -> LocalSessionManager {
    let mut config = SessionConfig::default();
    config.sse_retry = Some(SSE_RETRY);
    config.channel_capacity = SSE_REPLAY_EVENTS;
    config.keep_alive =
        Some(SESSION_IDLE.max(request_timeout.saturating_add(Duration::from_secs(60))));
    let mut manager = LocalSessionManager::default();
    manager.session_config = config;
    manager
}

fn router(shared: Arc<Shared>) -> Router {
    let s = shared.clone();
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(shared.allow.host_strings())
        .with_allowed_origins(shared.allow.origin_strings())
        .enforce_origin_validation()
        .with_max_request_body_bytes(shared.config.max_body_bytes)
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_sse_retry(Some(SSE_RETRY))
        .with_cancellation_token(shared.shutdown.child_token());
    let mcp = StreamableHttpService::new(
        move || Ok(s.mcp_server(None)),
        shared.mcp_sessions.clone(),
        mcp_config,
    );
    let protected = Router::new()
        .nest_service("/mcp", mcp)
        .route("/sse", get(sse::open))
        .route("/messages", post(sse::post))
        .route("/metrics", get(metrics))
        .layer(from_fn_with_state(shared.clone(), guard::authorize));
    let public = Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/{*resource}",
            get(resource_metadata),
        );
    protected
        .merge(public)
        .layer(from_fn_with_state(
            shared.clone(),
            guard::check_host_and_origin,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(shared.config.request_timeout_secs.max(1)),
        ))
        .layer(from_fn_with_state(shared.clone(), record))
        // Probes come from load balancers with whatever Host they like.
        .route("/healthz", get(healthz))
        .with_state(shared)
}

/// Middleware: count every request and its latency by transport.
async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let transport = match req.uri().path() {
        p if p.starts_with("/mcp") => "streamable_http",
        "/sse" | "/messages" => "sse",
        p if p.starts_with("/.well-known") => "metadata",
        _ => "other",
    };
    let start = Instant::now();
    let r = next.run(req).await;
    shared
        .engine
        .metrics()
        .http_request(transport, r.status().as_u16(), start.elapsed());
    r
}

/// How long `/healthz` waits for the store's answer.
const HEALTH_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 while the server and its store answer, 503 when the
/// store does not (a load balancer then sends work elsewhere).
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let snap = shared.app.registry.snapshot();
    let store = shared.engine.store();
    let t0 = Instant::now();
    let ping = tokio::time::timeout(HEALTH_STORE_TIMEOUT, store.ping()).await;
    let store_error = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "no answer within {} s",
            HEALTH_STORE_TIMEOUT.as_secs()
        )),
    };
    let status = match (&store_error, shared.shutdown.is_cancelled()) {
        (_, true) => "stopping",
        (Some(_), false) => "store_unreachable",
        (None, false) => "ok",
    };
    let body = axum::Json(serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "agents": snap.agents.len(),
        "agent_errors": snap.errors().count(),
        "store": {
            "backend": store.backend(),
            "ok": store_error.is_none(),
            "latency_ms": u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "error": store_error,
        },
    }));
    match status {
        "store_unreachable" => (StatusCode::SERVICE_UNAVAILABLE, body).into_response(),
        _ => body.into_response(),
    }
}

/// `GET /metrics`
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.config.metrics {
        return (
            StatusCode::NOT_FOUND,
            "metrics are off ([http] metrics = false)\n",
        )
            .into_response();
    }
    let text = shared.engine.metrics_text().await;
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

/// `GET /.well-known/oauth-protected-resource[/mcp]` (RFC 9728).
async fn resource_metadata(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.auth {
        Some(a) => axum::Json(a.resource_metadata()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this server does not use OAuth2 (no [auth] in dispatch.toml)\n",
        )
            .into_response(),
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

/// RFC 9728 §3.1: the metadata lives at the resource's origin with
/// `/.well-known/oauth-protected-resource` before the resource's path.
fn metadata_url(public_url: Option<&str>, audience: Option<&str>, bound: SocketAddr) -> String {
    let base = public_url
        .and_then(origin_of)
        .unwrap_or_else(|| format!("http://{bound}"));
    let path = audience
        .and_then(|a| a.parse::<http::Uri>().ok())
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    format!("{base}/.well-known/oauth-protected-resource{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_outlive_the_longest_request() {
        let idle = |secs| {
            mcp_session_manager(Duration::from_secs(secs))
                .session_config
                .keep_alive
        };
        assert_eq!(idle(30), Some(SESSION_IDLE));
        assert_eq!(idle(900), Some(Duration::from_secs(960)));
        assert_eq!(idle(u64::MAX), Some(Duration::MAX));
    }

    #[test]
    fn metadata_url_follows_rfc_9728() {
        let bound: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            metadata_url(
                Some("https://d.example.com"),
                Some("https://d.example.com/mcp"),
                bound
            ),
            "https://d.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url(None, None, bound),
            "http://127.0.0.1:9/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            origin_of("https://d.example.com:8443/mcp").as_deref(),
            Some("https://d.example.com:8443")
        );
    }
}
