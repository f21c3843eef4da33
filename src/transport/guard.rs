//! What every HTTP request passes before it reaches MCP: `Host` and `Origin`
//! allow-lists (DNS rebinding protection), bearer authentication, the
//! Streamable HTTP session's owner, per-subject rate limits, body size limits
//! and per-tool scopes.
//!
//! Order matters and is fixed here: a request from a page on another origin is
//! refused before its token is even looked at, and a caller without a valid
//! token learns nothing about rate limits or bodies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::uri::Authority;

use super::Shared;
use crate::auth::{AuthError, Principal, Scope, required_scope, required_scope_for_method};
use crate::mcp::task_wire;
use crate::store::Store;

/// Allowed `Host` and `Origin` values.
#[derive(Debug, Clone)]
pub struct AllowList {
    /// Hosts (lower case, no brackets) with an optional port.
    hosts: Vec<(String, Option<u16>)>,
    /// Origins: scheme, host and port (`None` = any port).
    origins: Vec<(String, String, Option<u16>)>,
}

const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn normalize_host(h: &str) -> String {
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl AllowList {
    /// Loopback names plus `extra_hosts`, the bound IP (a literal IP cannot be
    /// rebound) and the host of `public_url`; loopback origins plus
    /// `extra_origins` and the origin of `public_url`.
    pub fn new(
        bound: SocketAddr,
        public_url: Option<&str>,
        extra_hosts: &[String],
        extra_origins: &[String],
    ) -> Result<AllowList, String> {
        let mut hosts: Vec<(String, Option<u16>)> = LOOPBACK_NAMES
            .iter()
            .map(|h| (h.to_string(), None))
            .collect();
        if !bound.ip().is_unspecified() {
            hosts.push((normalize_host(&bound.ip().to_string()), None));
        }
        let mut origins: Vec<(String, String, Option<u16>)> = Vec::new();
        for scheme in ["http", "https"] {
            for h in LOOPBACK_NAMES {
                origins.push((scheme.into(), h.into(), None));
            }
        }
        if let Some(url) = public_url {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("[http] public_url = {url:?} is not a URL: {e}"))?;
            let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority()) else {
                return Err(format!(
                    "[http] public_url = {url:?} needs a scheme and a host, like https://dispatch.example.com"
                ));
            };
            hosts.push((normalize_host(auth.host()), auth.port_u16()));
            origins.push((
                scheme.to_ascii_lowercase(),
                normalize_host(auth.host()),
                auth.port_u16().or(default_port(scheme)),
            ));
        }
        for h in extra_hosts {
            let a: Authority = h.trim().parse().map_err(|e| {
                format!("[http] allowed_hosts: {h:?} is not a host or host:port ({e})")
            })?;
            hosts.push((normalize_host(a.host()), a.port_u16()));
        }
        for o in extra_origins {
            origins.push(parse_allowed_origin(o).ok_or_else(|| {
                format!(
                    "[http] allowed_origins: {o:?} is not an origin like https://app.example.com or http://localhost:*"
                )
            })?);
        }
        Ok(AllowList { hosts, origins })
    }

    /// The hosts in the form rmcp's own check takes (`name` or `name:port`).
    pub fn host_strings(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|(h, p)| match p {
                Some(p) => format!("{}:{p}", bracketed(h)),
                None => bracketed(h),
            })
            .collect()
    }

    /// The origins in the form rmcp's own check takes.
    pub fn origin_strings(&self) -> Vec<String> {
        self.origins
            .iter()
            .map(|(s, h, p)| match p {
                Some(p) => format!("{s}://{}:{p}", bracketed(h)),
                None => format!("{s}://{}:*", bracketed(h)),
            })
            .collect()
    }

    /// Is this `Host` header value allowed?
    pub fn host_allowed(&self, value: &str) -> bool {
        let Ok(a) = value.parse::<Authority>() else {
            return false;
        };
        let host = normalize_host(a.host());
        self.hosts
            .iter()
            .any(|(h, p)| *h == host && p.is_none_or(|p| a.port_u16() == Some(p)))
    }

    /// Is this `Origin` header value allowed? (`null` never is.)
    pub fn origin_allowed(&self, value: &str) -> bool {
        let Some((scheme, host, port)) = parse_origin(value) else {
            return false;
        };
        self.origins
            .iter()
            .any(|(s, h, p)| *s == scheme && *h == host && p.is_none_or(|p| port == Some(p)))
    }
}

/// A host as it is written in an authority: IPv6 literals in brackets.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `scheme://host[:port]` with the scheme's default port filled in.
fn parse_origin(value: &str) -> Option<(String, String, Option<u16>)> {
    let uri: http::Uri = value.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let a = uri.authority()?;
    let port = a.port_u16().or(default_port(&scheme));
    Some((scheme, normalize_host(a.host()), port))
}

/// An allow-list entry: an origin, with `:*` for any port.
fn parse_allowed_origin(value: &str) -> Option<(String, String, Option<u16>)> {
    let v = value.trim();
    if let Some(base) = v.strip_suffix(":*") {
        let (s, h, _) = parse_origin(base)?;
        return Some((s, h, None));
    }
    parse_origin(v)
}

/// Middleware: refuse requests whose `Host` or `Origin` is not allowed (403).
pub async fn check_host_and_origin(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match host {
        Some(h) if shared.allow.host_allowed(&h) => {}
        Some(h) => {
            tracing::warn!(host = %h, "refused a request for a host not in [http] allowed_hosts (possible DNS rebinding)");
            return forbidden(&format!(
                "Host {h:?} is not allowed: add it to [http] allowed_hosts in dispatch.toml"
            ));
        }
        None => return plain(StatusCode::BAD_REQUEST, "missing Host header"),
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        if !shared.allow.origin_allowed(o) {
            tracing::warn!(origin = %o, "refused a request from an origin not in [http] allowed_origins");
            return forbidden(&format!(
                "Origin {o:?} is not allowed: add it to [http] allowed_origins in dispatch.toml"
            ));
        }
    }
    next.run(req).await
}

/// Requests per minute per key (subject, or client address without auth).
///
/// With a store that several instances share, the rate is kept there
/// ([`Store::take_rate`]), so it holds for all of them together; if the
/// store cannot be asked, this instance's own count decides.
pub struct Limiter {
    inner: RateLimiter<String, DashMapStateStore<String>, DefaultClock>,
    shared: Option<Arc<dyn Store>>,
    interval: Duration,
    burst: u32,
}

impl Limiter {
    /// `None` when the limit is off (0 per minute).
    pub fn new(per_minute: u32, burst: u32, shared: Option<Arc<dyn Store>>) -> Option<Limiter> {
        let rate = NonZeroU32::new(per_minute)?;
        let burst = burst.max(1);
        let quota = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Some(Limiter {
            inner: RateLimiter::keyed(Quota::per_minute(rate).allow_burst(quota)),
            shared,
            interval: Duration::from_secs(60) / rate.get(),
            burst,
        })
    }

    /// `Err(wait)` when `key` is over its limit.
    async fn check(&self, key: &str) -> Result<(), Duration> {
        if let Some(store) = &self.shared {
            match store.take_rate(key, self.interval, self.burst).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => return Err(wait),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the shared request rate; this instance's count decides")
                }
            }
        }
        self.inner
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forget keys whose buckets are full again (bounded memory).
    pub fn prune(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

/// The header naming a Streamable HTTP session.
const MCP_SESSION_ID: &str = "mcp-session-id";

const OTHER_USERS_SESSION: &str =
    "this MCP session belongs to another user: start your own session (initialize) with your token";

/// Which subject opened each Streamable HTTP session.
///
/// rmcp answers `GET /mcp` (the standalone stream, and resuming a stream with
/// `Last-Event-ID`) and `DELETE /mcp` itself: those never reach the MCP
/// handler, which checks the subject only on the messages it handles. So
/// every request naming a session is checked here, before rmcp sees it.
#[derive(Default)]
pub struct SessionOwners {
    map: Mutex<HashMap<String, String>>,
}

impl SessionOwners {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bind(&self, session: &str, subject: &str) {
        self.lock().insert(session.to_string(), subject.to_string());
    }

    /// Whether `subject` may use `session`: it opened it, or the session is
    /// unknown here and so to rmcp, which answers 404.
    fn allows(&self, session: &str, subject: &str) -> bool {
        self.lock()
            .get(session)
            .is_none_or(|owner| owner == subject)
    }

    /// The sessions bound now.
    pub fn sessions(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Forget sessions that ended.
    pub fn forget(&self, ended: &[String]) {
        let mut map = self.lock();
        for id in ended {
            map.remove(id);
        }
    }
}

fn is_mcp_path(path: &str) -> bool {
    path == "/mcp" || path.starts_with("/mcp/")
}

/// Middleware for the MCP endpoints (and `/metrics`): authenticate, hold a
/// Streamable HTTP session to the subject that opened it, rate limit, cap
/// the body and check the scope each JSON-RPC request needs.
/// The [`Principal`] is left in the request's extensions for the MCP layer.
pub async fn authorize(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let principal = match &shared.auth {
        None => None,
        Some(auth) => {
            let header = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match auth.authenticate(header).await {
                Ok(p) => Some(p),
                Err(e) => return unauthorized(&shared, &e),
            }
        }
    };

    // Metrics show agents, models and spend: reading them is reading.
    if parts.uri.path() == "/metrics"
        && let (Some(auth), Some(p)) = (&shared.auth, &principal)
        && !p.has(Scope::Read)
    {
        return insufficient(&shared, auth, Scope::Read);
    }
    // A session is its opener's, for every method: resuming a stream or
    // opening the standalone one would hand another subject its messages.
    let mcp = is_mcp_path(parts.uri.path());
    let session = parts
        .headers
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|_| mcp)
        .map(str::to_string);
    let subject = principal.as_ref().map(|p| p.subject.clone());
    if let (Some(subject), Some(id)) = (&subject, &session)
        && !shared.mcp_owners.allows(id, subject)
    {
        tracing::warn!(
            %subject,
            method = %parts.method,
            "refused a request for an MCP session another subject opened"
        );
        return forbidden(OTHER_USERS_SESSION);
    }
    let is_post = parts.method == Method::POST;
    // A POST without a session that gets one back opened it (initialize).
    let opener = subject.filter(|_| mcp && is_post && session.is_none());
    let closing = (mcp && parts.method == Method::DELETE)
        .then_some(session)
        .flatten();
    // rmcp answers 202 to a DELETE of any session id, live or not; a client
    // should learn that the session it names is gone, as a POST would.
    if let Some(id) = &closing
        && !shared
            .mcp_sessions
            .sessions
            .read()
            .await
            .contains_key(id.as_str())
    {
        return plain(
            StatusCode::NOT_FOUND,
            "no such MCP session: it has ended or never existed; start a new one with initialize",
        );
    }
    if is_post && let Some(limiter) = &shared.limiter {
        let key = match &principal {
            Some(p) => format!("sub:{}", p.subject),
            None => format!("ip:{}", peer.ip()),
        };
        if let Err(wait) = limiter.check(&key).await {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut r = plain(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "rate limit exceeded ([http] rate_limit_per_minute = {}): retry after {secs} s",
                    shared.config.rate_limit_per_minute
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            return r;
        }
    }

    // What the answer needs from `task_wire::outbound`, if anything.
    let mut answer = task_wire::Answer::AsIs;
    let body = if is_post {
        let bytes = match axum::body::to_bytes(body, shared.config.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => {
                // `to_bytes` fails for an oversize body or a broken stream;
                // the length check tells which.
                if is_length_limit(&e) {
                    return plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!(
                            "request body over {} bytes ([http] max_body_bytes)",
                            shared.config.max_body_bytes
                        ),
                    );
                }
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                );
            }
        };
        if let (Some(auth), Some(p)) = (&shared.auth, &principal)
            && let Some(needed) = missing_scope(p, &bytes)
        {
            return insufficient(&shared, auth, needed);
        }
        let (bytes, marked) = task_requests(bytes);
        answer = marked;
        Body::from(bytes)
    } else {
        body
    };
    if let Some(p) = principal {
        parts.extensions.insert(p);
    }
    // A POST is in flight until its answer has been sent (for Streamable
    // HTTP, until its response stream ends): shutdown waits for it.
    let token = is_post.then(|| shared.calls.token());
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if answer != task_wire::Answer::AsIs {
        response = complete_answer(response, answer).await;
    }
    if let Some(subject) = opener
        && let Some(id) = response
            .headers()
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
    {
        shared.mcp_owners.bind(id, &subject);
    }
    if let Some(id) = closing
        && response.status().is_success()
    {
        shared.mcp_owners.forget(&[id]);
    }
    let Some(token) = token else {
        return response;
    };
    let (rparts, rbody) = response.into_parts();
    Response::from_parts(
        rparts,
        Body::new(TrackedBody {
            inner: rbody,
            _token: token,
        }),
    )
}

/// Passes one POSTed message through [`task_wire::inbound`] (the 2025-11-25
/// task requests get the names the MCP layer serves them under); says what
/// its answer needs.
fn task_requests(bytes: Bytes) -> (Bytes, task_wire::Answer) {
    if !task_wire::may_concern(&bytes) {
        return (bytes, task_wire::Answer::AsIs);
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return (bytes, task_wire::Answer::AsIs);
    };
    if !v.is_object() {
        return (bytes, task_wire::Answer::AsIs);
    }
    let before = v.get("method").cloned();
    let answer = task_wire::inbound(&mut v);
    if v.get("method") == before.as_ref() {
        return (bytes, answer);
    }
    match serde_json::to_vec(&v) {
        Ok(b) => (Bytes::from(b), answer),
        Err(_) => (bytes, answer),
    }
}

/// The longest answer [`complete_answer`] reads whole (`initialize` and
/// `tools/list` answers are a few kilobytes).
const MAX_COMPLETED_BYTES: usize = 4 * 1024 * 1024;

/// Completes the answer to `initialize` or `tools/list`, a JSON body or an
/// SSE stream of `data:` lines (rmcp closes that stream after the answer).
async fn complete_answer(response: Response, answer: task_wire::Answer) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_COMPLETED_BYTES).await else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer could not be read to complete it; retry the request",
        );
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let complete = |json: &str| -> Option<String> {
        let mut v: serde_json::Value = serde_json::from_str(json).ok()?;
        task_wire::outbound(answer, &mut v);
        serde_json::to_string(&v).ok()
    };
    let out = if text.trim_start().starts_with('{') {
        complete(text).unwrap_or_else(|| text.to_string())
    } else {
        let mut out = String::with_capacity(text.len() + 512);
        for line in text.split_inclusive('\n') {
            let (content, end) = match line.strip_suffix('\n') {
                Some(c) => (c, "\n"),
                None => (line, ""),
            };
            match content
                .strip_prefix("data:")
                .map(str::trim_start)
                .and_then(&complete)
            {
                Some(done) => {
                    out.push_str("data: ");
                    out.push_str(&done);
                }
                None => out.push_str(content),
            }
            out.push_str(end);
        }
        out
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// A response body that holds a shutdown-tracker token until it is done.
struct TrackedBody {
    inner: Body,
    _token: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// 403 `insufficient_scope` naming the scope.
fn insufficient(shared: &Shared, auth: &crate::auth::Authenticator, needed: Scope) -> Response {
    let mut r = json_error(
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        &format!("this call needs the scope {}", needed.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&auth.insufficient_scope(&shared.metadata_url, needed)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

/// The first scope a JSON-RPC message (or batch) needs that `p` lacks.
fn missing_scope(p: &Principal, body: &Bytes) -> Option<Scope> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages: Vec<&serde_json::Value> = match &v {
        serde_json::Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    messages.into_iter().find_map(|m| {
        let method = m.get("method")?.as_str()?;
        let needed = if method == "tools/call" {
            let tool = m.get("params")?.get("name")?.as_str()?;
            Some(required_scope(tool))
        } else {
            required_scope_for_method(method)
        }?;
        (!p.has(needed)).then_some(needed)
    })
}

fn unauthorized(shared: &Shared, e: &AuthError) -> Response {
    if let AuthError::Unavailable(why) = e {
        tracing::warn!(error = %why, "cannot validate tokens");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the authorization server cannot be reached to validate the token; try again later",
        );
    }
    let code = e.oauth_error().unwrap_or("invalid_request");
    let mut r = json_error(StatusCode::UNAUTHORIZED, code, &e.to_string());
    if let Some(auth) = &shared.auth
        && let Ok(v) = HeaderValue::from_str(&auth.challenge(&shared.metadata_url, Some(e)))
    {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn forbidden(text: &str) -> Response {
    plain(StatusCode::FORBIDDEN, text)
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = (status, format!("{text}\n")).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> AllowList {
        AllowList::new(
            "127.0.0.1:8080".parse().unwrap(),
            Some("https://dispatch.example.com"),
            &["internal.example:9000".into()],
            &[
                "https://app.example.com".into(),
                "http://dev.local:*".into(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn hosts() {
        let l = list();
        for ok in [
            "localhost:8080",
            "127.0.0.1",
            "[::1]:3000",
            "dispatch.example.com",
            "internal.example:9000",
            "LOCALHOST:1",
        ] {
            assert!(l.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.com",
            "internal.example:9001",
            "localhost.evil.com",
            "",
        ] {
            assert!(!l.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let l = list();
        for ok in [
            "http://localhost:5173",
            "https://127.0.0.1",
            "https://dispatch.example.com",
            "https://app.example.com",
            "https://app.example.com:443",
            "http://dev.local:1234",
        ] {
            assert!(l.origin_allowed(ok), "{ok}");
        }
        for bad in [
            "null",
            "https://evil.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "not a url",
        ] {
            assert!(!l.origin_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn bad_entries_say_what_to_fix() {
        let e = AllowList::new(
            "127.0.0.1:1".parse().unwrap(),
            None,
            &[],
            &["app.example.com".into()],
        )
        .unwrap_err();
        assert!(e.contains("allowed_origins"), "{e}");
    }

    #[test]
    fn a_session_is_its_openers_until_forgotten() {
        let owners = SessionOwners::default();
        owners.bind("s1", "alice");
        assert!(owners.allows("s1", "alice"));
        assert!(!owners.allows("s1", "bob"));
        assert!(!owners.allows("s1", ""));
        assert!(owners.allows("unknown", "bob"), "rmcp answers 404 for it");
        assert_eq!(owners.sessions(), vec!["s1".to_string()]);
        owners.forget(&["s1".to_string()]);
        assert!(owners.sessions().is_empty());
        assert!(is_mcp_path("/mcp") && is_mcp_path("/mcp/"));
        assert!(!is_mcp_path("/mcpx") && !is_mcp_path("/sse"));
    }

    #[tokio::test]
    async fn limiter_refuses_past_the_burst_with_a_wait() {
        let l = Limiter::new(60, 2, None).unwrap();
        assert!(l.check("a").await.is_ok());
        assert!(l.check("a").await.is_ok());
        let wait = l.check("a").await.unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(l.check("b").await.is_ok(), "keys are independent");
        assert!(Limiter::new(0, 5, None).is_none());
    }

    /// Two instances' limiters on one store count one rate together.
    #[tokio::test]
    async fn limiters_sharing_a_store_share_the_rate() {
        let store: Arc<dyn Store> =
            Arc::new(crate::store::SqliteStore::open_in_memory().await.unwrap());
        let a = Limiter::new(60, 3, Some(store.clone())).unwrap();
        let b = Limiter::new(60, 3, Some(store)).unwrap();
        assert!(a.check("sub:alice").await.is_ok());
        assert!(b.check("sub:alice").await.is_ok());
        assert!(a.check("sub:alice").await.is_ok());
        let wait = b.check("sub:alice").await.unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(a.check("sub:alice").await.is_err());
        assert!(b.check("sub:bob").await.is_ok(), "keys are independent");
    }
}
