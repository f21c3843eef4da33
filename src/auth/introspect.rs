//! RFC 7662 token introspection through the `oauth2` crate, with this
//! server's client credentials (HTTP Basic), and a short cache of positive
//! answers so every request does not cost a round trip.
//!
//! The cache is keyed by the SHA-256 of the token, never the token, and an
//! entry lives at most `ttl` (and never past the token's `exp`): a revoked
//! token stays usable here for at most that long. Negative answers are not
//! cached.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oauth2::basic::BasicClient;
use oauth2::{
    AccessToken, ClientId, ClientSecret, EndpointNotSet, EndpointSet, IntrospectionUrl,
    RequestTokenError, TokenIntrospectionResponse,
};
use sha2::{Digest, Sha256};

use super::config::{AuthConfigError, IntrospectionConfig};
use super::error::{AuthError, shown};
use super::fetch::{FetchError, Http};
use super::jwt::scopes_from;
use super::scope::Principal;
use crate::provider::Clock;

type Client =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointSet, EndpointNotSet, EndpointNotSet>;

/// A secret read from the environment. `Debug` shows nothing of it and there
/// is no `Display`, so no log line or error can carry it.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Cache tuning and the checks made on an active answer.
pub(crate) struct IntrospectionRules {
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    pub ttl: Duration,
    pub max_entries: usize,
}

/// The introspecting checker.
pub(crate) struct Introspector {
    client: Client,
    url: String,
    client_id: String,
    secret_env: String,
    secret: Secret,
    http: Arc<Http>,
    clock: Arc<dyn Clock>,
    rules: IntrospectionRules,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

struct Cached {
    principal: Principal,
    until: Instant,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// Read the client secret from its environment variable and set up the client.
    pub fn new(
        config: &IntrospectionConfig,
        read_env: &dyn Fn(&str) -> Option<String>,
        http: Arc<Http>,
        clock: Arc<dyn Clock>,
        rules: IntrospectionRules,
    ) -> Result<Introspector, AuthConfigError> {
        let secret = read_env(&config.client_secret_env)
            .filter(|s| !s.is_empty())
            .map(Secret)
            .ok_or_else(|| AuthConfigError::MissingSecret {
                var: config.client_secret_env.clone(),
            })?;
        let url = IntrospectionUrl::new(config.url.trim().to_string()).map_err(|e| {
            AuthConfigError::Invalid {
                key: "introspection.url".into(),
                message: format!("{:?} is not a URL ({e})", config.url),
            }
        })?;
        let client = BasicClient::new(ClientId::new(config.client_id.clone()))
            .set_client_secret(ClientSecret::new(secret.expose().to_string()))
            .set_introspection_url(url);
        Ok(Introspector {
            client,
            url: config.url.trim().to_string(),
            client_id: config.client_id.clone(),
            secret_env: config.client_secret_env.clone(),
            secret,
            http,
            clock,
            rules,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Ask the authorization server about `token` (or the cache).
    pub async fn check(&self, token: &str) -> Result<Principal, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.clock.now();
        if let Some(p) = self.cached(&key, now) {
            return Ok(p);
        }
        let access = AccessToken::new(token.to_string());
        let answer = self
            .client
            .introspect(&access)
            .set_token_type_hint("access_token")
            .request_async(&*self.http)
            .await
            .map_err(|e| self.request_error(e, token))?;
        let (principal, exp) = self.judge(&answer)?;
        let mut ttl = self.rules.ttl;
        if let Some(exp) = exp {
            let left = exp.saturating_sub(unix_now());
            ttl = ttl.min(Duration::from_secs(left));
        }
        if !ttl.is_zero() {
            self.store(key, principal.clone(), now + ttl);
        }
        Ok(principal)
    }

    /// The checks RFC 7662 leaves to the resource server: `active`, then
    /// `exp`, `nbf`, `iss` and `aud` when present, and a subject.
    fn judge(
        &self,
        a: &oauth2::basic::BasicTokenIntrospectionResponse,
    ) -> Result<(Principal, Option<u64>), AuthError> {
        if !a.active() {
            return Err(AuthError::Inactive);
        }
        let now = unix_now();
        let leeway = self.rules.leeway_secs;
        let exp = a.exp().map(|t| u64::try_from(t.timestamp()).unwrap_or(0));
        if let Some(exp) = exp
            && exp.saturating_add(leeway) < now
        {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = a.nbf().map(|t| t.timestamp())
            && nbf > i64::try_from(now.saturating_add(leeway)).unwrap_or(i64::MAX)
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(iss) = a.iss()
            && iss != self.rules.issuer
        {
            return Err(AuthError::WrongIssuer);
        }
        if let Some(aud) = a.aud()
            && !aud.contains(&self.rules.audience)
        {
            return Err(AuthError::WrongAudience);
        }
        let subject = [a.sub(), a.username()]
            .into_iter()
            .flatten()
            .find(|s| !s.trim().is_empty())
            .ok_or_else(|| AuthError::MissingClaim("sub".to_string()))?
            .to_string();
        let scope = a.scopes().map(|v| {
            serde_json::Value::String(v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))
        });
        Ok((
            Principal {
                subject,
                scopes: scopes_from(scope.as_ref(), None),
                client_id: a.client_id().map(|c| c.as_str().to_string()),
            },
            exp,
        ))
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<Principal> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(key) {
            Some(c) if c.until > now => Some(c.principal.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn store(&self, key: [u8; 32], principal: Principal, until: Instant) {
        if self.rules.max_entries == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.rules.max_entries && !cache.contains_key(&key) {
            let now = self.clock.now();
            cache.retain(|_, c| c.until > now);
            // Still full: drop the entry closest to expiry.
            if cache.len() >= self.rules.max_entries
                && let Some(oldest) = cache.iter().min_by_key(|(_, c)| c.until).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, Cached { principal, until });
    }

    /// A failed introspection exchange in words that say what to fix, with
    /// the token and the secret scrubbed from anything the server sent back.
    fn request_error(
        &self,
        e: RequestTokenError<FetchError, oauth2::basic::BasicErrorResponse>,
        token: &str,
    ) -> AuthError {
        let message = match e {
            RequestTokenError::Request(f) => match f.status {
                Some(401 | 403) => format!(
                    "the introspection endpoint {} refused this server's client credentials ({}); \
                     check auth.introspection.client_id ({:?}) and the secret in ${}",
                    self.url, f.message, self.client_id, self.secret_env
                ),
                _ => format!(
                    "introspection at {f}; check auth.introspection.url and that the server is reachable"
                ),
            },
            RequestTokenError::ServerResponse(r) => format!(
                "the introspection endpoint {} answered with error {}",
                self.url,
                shown(r.error().as_ref())
            ),
            RequestTokenError::Parse(err, _body) => format!(
                "the introspection endpoint {} sent an answer that is not RFC 7662 JSON (at {})",
                self.url,
                shown(&err.path().to_string())
            ),
            RequestTokenError::Other(m) => {
                format!("introspection at {} failed: {}", self.url, shown(&m))
            }
        };
        tracing::error!(error = %scrub(&message, &[token, self.secret.expose()]), "introspection failed");
        AuthError::Unavailable(scrub(&message, &[token, self.secret.expose()]))
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Remove every occurrence of each secret (and its leading part, in case a
/// server echoed a cut-off copy) from `text`.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        // Very short values would redact ordinary words; no real token or
        // secret is that short.
        if s.len() >= 8 {
            out = out.replace(s, "[redacted]");
            let head: String = s.chars().take(16).collect();
            if head.len() >= 8 {
                out = out.replace(&head, "[redacted]");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret("hunter2-very-secret".into());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn scrub_removes_whole_and_cut_copies() {
        let token = "abcdefghijklmnopqrstuvwxyz0123456789";
        let text = format!("bad token {token}; first part abcdefghijklmnop… end");
        let s = scrub(&text, &[token]);
        assert!(!s.contains("abcdefghijklmnop"), "{s}");
        assert!(s.ends_with("end"));
        assert_eq!(scrub("short ab", &["ab"]), "short ab");
    }
}
