//! HTTP plumbing shared by both wire formats: the pooled client, one
//! endpoint's settings and key, timeouts, and turning failures into
//! [`ProviderError`]s with secrets scrubbed.

use std::future::Future;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::ProviderError;
use super::error::status_hint;
use super::retry::{parse_retry_after, parse_retry_after_ms};
use super::secret::{ApiKey, MAX_DETAIL_CHARS, clip, scrub};

/// The largest successful (non-streamed) body we accept.
const MAX_BODY: usize = 32 * 1024 * 1024;
/// The most of an error body we read: enough for any real error message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Build the one pooled client every provider shares.
pub(crate) fn build_client(connect_timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    // reqwest is built without a bundled crypto provider (to avoid aws-lc-rs);
    // install ring as the process default. Another part of the process may
    // have installed one already, which is fine: reqwest uses whichever it is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(concat!("dispatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config {
            provider: "http".into(),
            message: format!("cannot build the HTTP client: {}", root_cause(&e)),
        })
}

/// Bound a whole call by `timeout`. Used around each provider call, so the
/// limit covers connecting, waiting and reading the full answer.
pub(crate) async fn with_timeout<T>(
    provider: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::Timeout {
            provider: provider.to_string(),
            after: timeout,
        }),
    }
}

/// One endpoint: where it is, how to authenticate, and what to tell the user
/// when it fails.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Provider name.
    pub name: String,
    /// Base URL without a trailing `/`.
    pub base_url: String,
    /// The key, when its variable is set.
    pub key: Option<ApiKey>,
    /// The variable the key comes from (for messages).
    pub key_env: String,
    /// Whether calls fail without a key (ollama and unconfigured custom
    /// endpoints work without one).
    pub key_required: bool,
    /// The variable that overrides the base URL (for messages).
    pub base_url_env: String,
    /// The shared client.
    pub client: reqwest::Client,
    /// Longest silence allowed between body bytes.
    pub idle_timeout: Duration,
}

impl Endpoint {
    /// The key to send, or the missing-key error.
    pub(crate) fn key(&self) -> Result<Option<&ApiKey>, ProviderError> {
        match &self.key {
            Some(k) => Ok(Some(k)),
            None if self.key_required => Err(ProviderError::MissingKey {
                provider: self.name.clone(),
                env: self.key_env.clone(),
            }),
            None => Ok(None),
        }
    }

    /// Provider text made safe for a message: secrets scrubbed, clipped.
    pub(crate) fn safe_text(&self, text: &str) -> String {
        clip(&scrub(text, self.key.as_ref()), MAX_DETAIL_CHARS)
    }

    /// The base URL with any credentials or query removed, for messages.
    fn display_url(&self) -> String {
        match reqwest::Url::parse(&self.base_url) {
            Ok(mut u) => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.set_query(None);
                u.set_fragment(None);
                u.to_string().trim_end_matches('/').to_string()
            }
            Err(_) => "the configured base URL".to_string(),
        }
    }

    /// POST a JSON body; a non-2xx answer becomes [`ProviderError::Http`].
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: &serde_json::Value,
        model: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ProviderError::Malformed {
            provider: self.name.clone(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let resp = self
            .client
            .post(url)
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await
            .map_err(|e| self.request_error(&e, false))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.status_error(resp, model).await)
    }

    /// A transport error as a [`ProviderError::Connect`] with what to check.
    pub(crate) fn request_error(&self, e: &reqwest::Error, mid_body: bool) -> ProviderError {
        let cause = self.safe_text(&root_cause(e));
        let message = if mid_body {
            format!("the connection broke in the middle of the answer: {cause}")
        } else {
            format!(
                "{}: {cause} — is it running? check {}",
                self.display_url(),
                self.base_url_env
            )
        };
        ProviderError::Connect {
            provider: self.name.clone(),
            message,
        }
    }

    /// Read an error answer (bounded) and turn it into an actionable error.
    async fn status_error(&self, mut resp: reqwest::Response, model: &str) -> ProviderError {
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        // The body is only for the message: a failure to read it is not
        // worth its own error, and a stalled error body must not hang us.
        let body = read_body(&mut resp, self, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let detail = error_detail(&String::from_utf8_lossy(&body));
        let mut message = status_hint(status, &self.key_env, model, &self.base_url_env);
        if status == 429
            && let Some(d) = retry_after
        {
            message.push_str(&format!(
                " (it asked to retry after {})",
                super::human_duration(d)
            ));
        }
        let detail = self.safe_text(&detail);
        if !detail.is_empty() {
            message.push_str(&format!("; {} said: {detail}", self.name));
        }
        ProviderError::Http {
            provider: self.name.clone(),
            status,
            message,
            retry_after,
        }
    }

    /// The next body chunk, bounded by the idle timeout.
    pub(crate) async fn next_chunk(
        &self,
        resp: &mut reqwest::Response,
    ) -> Result<Option<impl AsRef<[u8]> + use<>>, ProviderError> {
        match tokio::time::timeout(self.idle_timeout, resp.chunk()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.request_error(&e, true)),
            Err(_) => Err(ProviderError::Stalled {
                provider: self.name.clone(),
                idle: self.idle_timeout,
            }),
        }
    }

    /// A malformed-response error.
    /// Add a streamed piece to the answer, refusing an answer larger than a
    /// whole body may be: a model that never stops must not fill memory.
    pub(crate) fn append_text(&self, text: &mut String, piece: &str) -> Result<(), ProviderError> {
        if text.len() + piece.len() > MAX_BODY {
            return Err(self.malformed(format!(
                "the answer passed {} MiB, the most dispatch reads; lower the agent's max_tokens",
                MAX_BODY / (1024 * 1024)
            )));
        }
        text.push_str(piece);
        Ok(())
    }

    pub(crate) fn malformed(&self, message: impl AsRef<str>) -> ProviderError {
        ProviderError::Malformed {
            provider: self.name.clone(),
            message: self.safe_text(message.as_ref()),
        }
    }

    /// An in-band provider error.
    pub(crate) fn upstream(&self, message: impl AsRef<str>) -> ProviderError {
        ProviderError::Upstream {
            provider: self.name.clone(),
            message: self.safe_text(message.as_ref()),
        }
    }
}

/// Read a whole body, bounded in size and by the idle timeout between chunks.
pub(crate) async fn read_body(
    resp: &mut reqwest::Response,
    ep: &Endpoint,
    limit: usize,
) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    while let Some(chunk) = ep.next_chunk(resp).await? {
        let chunk = chunk.as_ref();
        if out.len() + chunk.len() > limit {
            let room = limit - out.len();
            out.extend_from_slice(&chunk[..room]);
            break;
        }
        out.extend_from_slice(chunk);
    }
    Ok(out)
}

/// Read a whole successful body (bounded by [`MAX_BODY`]).
pub(crate) async fn read_success_body(
    resp: &mut reqwest::Response,
    ep: &Endpoint,
) -> Result<Vec<u8>, ProviderError> {
    let body = read_body(resp, ep, MAX_BODY + 1).await?;
    if body.len() > MAX_BODY {
        return Err(ep.malformed("the answer is larger than 32 MiB"));
    }
    Ok(body)
}

/// After a stream's end marker, read what is left (normally nothing) so the
/// connection goes back to the pool instead of being closed. Bounded: a
/// server that keeps the body open after its end marker just loses the
/// connection.
pub(crate) async fn drain(resp: &mut reqwest::Response) {
    let budget = Duration::from_millis(100);
    let _ = tokio::time::timeout(budget, async {
        let mut left = 64 * 1024usize;
        while let Ok(Some(c)) = resp.chunk().await {
            left = left.saturating_sub(c.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// `Retry-After` (seconds or HTTP date) or `retry-after-ms`.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(d) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after_ms)
    {
        return Some(d);
    }
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// Whether a response is an event stream (some servers ignore `stream: true`
/// and answer with plain JSON; we read either).
pub(crate) fn is_event_stream(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// The useful part of an error body: `error.message` (OpenAI, Anthropic,
/// OpenRouter), `error` as a string, `message`, `detail`, else the raw text.
pub(crate) fn error_detail(body: &str) -> String {
    let trimmed = body.trim();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(trimmed) {
        let err = v.get("error");
        let msg = err
            .and_then(|e| e.get("message"))
            .or_else(|| err.filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .and_then(|m| m.as_str());
        if let Some(m) = msg {
            return m.to_string();
        }
    }
    trimmed.to_string()
}

/// The innermost cause of an error ("Connection refused (os error 111)",
/// "invalid peer certificate: UnknownIssuer"): reqwest's own message is the
/// generic outer layer ("error sending request"), and it names the URL.
pub(crate) fn root_cause(e: &reqwest::Error) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    // The outermost layer is reqwest's, whose text ends with "for url (...)".
    match text.find(" for url (") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details() {
        assert_eq!(
            error_detail(r#"{"error":{"message":"Invalid API key","type":"auth"}}"#),
            "Invalid API key"
        );
        assert_eq!(error_detail(r#"{"error":"nope"}"#), "nope");
        assert_eq!(error_detail(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(
            error_detail("  <html>bad gateway</html> "),
            "<html>bad gateway</html>"
        );
    }
}
