//! Outbound HTTP for discovery, JWKS and introspection. Every exchange is
//! bounded by a connect timeout, a total timeout and a response size cap,
//! because the authorization server is outside our control and a slow or
//! huge answer must not hold a request (or memory) hostage.
//!
//! [`Http`] also implements `oauth2`'s [`AsyncHttpClient`], so the `oauth2`
//! crate's introspection request runs over our reqwest client.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use reqwest::{StatusCode, Url, redirect};
use serde_json::Value;

use super::config::{AuthConfigError, is_loopback};
use super::error::shown;

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;

/// A failed exchange with an authorization server endpoint. `message` says
/// what happened at `url`; callers add what to fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {message}")]
pub(crate) struct FetchError {
    /// The URL asked.
    pub url: String,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// What went wrong.
    pub message: String,
}

impl FetchError {
    fn new(url: &str, message: impl Into<String>) -> FetchError {
        FetchError {
            url: url.to_string(),
            status: None,
            message: message.into(),
        }
    }
}

/// The bounded HTTP client.
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    timeout: Duration,
    max_bytes: usize,
}

impl Http {
    /// A client with the given connect timeout, total timeout per exchange
    /// and response size cap.
    pub fn new(
        connect_timeout: Duration,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Http, AuthConfigError> {
        // reqwest is built without a bundled crypto provider; install ring as
        // the process default (see provider::http). Another part of the
        // process may have done it already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .redirect(redirect::Policy::custom(|attempt| {
                // Never let a redirect downgrade keys or tokens to clear text.
                let url = attempt.url();
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if url.scheme() == "https" || (url.scheme() == "http" && is_loopback(url)) {
                    attempt.follow()
                } else {
                    attempt.error("refusing to follow a redirect to a non-https URL")
                }
            }))
            .user_agent(concat!("dispatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AuthConfigError::Http(root_cause(&e)))?;
        Ok(Http {
            client,
            timeout,
            max_bytes,
        })
    }

    /// GET `url` and parse the body as JSON; anything but a 2xx JSON answer
    /// is an error.
    pub async fn get_json(&self, url: &str) -> Result<Value, FetchError> {
        let parsed =
            Url::parse(url).map_err(|e| FetchError::new(url, format!("not a URL ({e})")))?;
        let mut req = reqwest::Request::new(reqwest::Method::GET, parsed);
        req.headers_mut().insert(
            ACCEPT,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        let (status, _headers, body) = self.execute(url, req).await?;
        if !status.is_success() {
            return Err(FetchError {
                url: url.to_string(),
                status: Some(status.as_u16()),
                message: format!("answered HTTP {status}{}", error_detail(&body)),
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| FetchError::new(url, format!("the answer is not JSON ({e})")))
    }

    /// Send `req` and read the whole answer, within the total timeout and
    /// the size cap.
    async fn execute(
        &self,
        url: &str,
        req: reqwest::Request,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), FetchError> {
        let exchange = async {
            let mut resp = self
                .client
                .execute(req)
                .await
                .map_err(|e| FetchError::new(url, describe(&e)))?;
            if resp
                .content_length()
                .is_some_and(|n| n > self.max_bytes as u64)
            {
                return Err(self.too_large(url));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| FetchError::new(url, describe(&e)))?
            {
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(self.too_large(url));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((resp.status(), resp.headers().clone(), body))
        };
        // reqwest's own timeout covers this too; this one also bounds a
        // body that trickles in.
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::new(
                url,
                format!("no complete answer within {}s", self.timeout.as_secs_f32()),
            )),
        }
    }

    fn too_large(&self, url: &str) -> FetchError {
        FetchError::new(
            url,
            format!("the answer is larger than {} bytes", self.max_bytes),
        )
    }
}

/// `oauth2`'s requests (introspection) over our client. A non-2xx answer
/// becomes a [`FetchError`] here, so the status survives into the message.
impl<'c> AsyncHttpClient<'c> for Http {
    type Error = FetchError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, FetchError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let url = request.uri().to_string();
            let req = reqwest::Request::try_from(request).map_err(|e| {
                FetchError::new(
                    &url,
                    format!("cannot build the request: {}", root_cause(&e)),
                )
            })?;
            let (status, headers, body) = self.execute(&url, req).await?;
            if !status.is_success() {
                return Err(FetchError {
                    url,
                    status: Some(status.as_u16()),
                    message: format!("answered HTTP {status}{}", error_detail(&body)),
                });
            }
            let mut resp = http::Response::new(body);
            *resp.status_mut() = status;
            // oauth2 wants a JSON content type or none; keep only that header.
            if let Some(ct) = headers.get(CONTENT_TYPE) {
                resp.headers_mut().insert(CONTENT_TYPE, ct.clone());
            }
            Ok(resp)
        })
    }
}

/// ` (error: description)` from an OAuth-style JSON error body, cleaned
/// and cut short; nothing for other bodies (which may echo anything).
fn error_detail(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let Some(code) = v.get("error").and_then(Value::as_str) else {
        return String::new();
    };
    match v.get("error_description").and_then(Value::as_str) {
        Some(d) => format!(" ({}: {})", shown(code), shown(d)),
        None => format!(" ({})", shown(code)),
    }
}

/// A reqwest error in a few words: timeouts and refused connections named as such.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timed out ({})", root_cause(e))
    } else if e.is_connect() {
        format!("cannot connect ({})", root_cause(e))
    } else {
        root_cause(e)
    }
}

/// The innermost error message (reqwest's outer ones repeat the URL).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_reads_oauth_errors_only() {
        assert_eq!(
            error_detail(br#"{"error":"invalid_client","error_description":"bad secret"}"#),
            " (invalid_client: bad secret)"
        );
        assert_eq!(
            error_detail(br#"{"error":"invalid_client"}"#),
            " (invalid_client)"
        );
        assert_eq!(error_detail(b"<html>proxy error</html>"), "");
        assert_eq!(error_detail(br#"{"message":"x"}"#), "");
    }
}
