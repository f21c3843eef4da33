//! [`Authenticator`]: from an `Authorization` header to a [`Principal`], and
//! the `WWW-Authenticate` challenges and RFC 9728 metadata around it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use reqwest::Url;
use serde_json::{Value, json};

use super::config::{AuthConfig, AuthConfigError, check_url};
use super::error::{AuthError, shown};
use super::fetch::Http;
use super::introspect::{IntrospectionRules, Introspector};
use super::jwks::{JwksCache, KeySet, Lookup, Refresh};
use super::jwt::{self, JwtHeader, Rules};
use super::scope::{Principal, Scope};
use crate::provider::{Clock, SystemClock};

/// Longest bearer token accepted (real access tokens are a few kilobytes at most).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Reads an environment variable by name.
pub type EnvReader = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Knobs that are not part of `[auth]`: timeouts, caps, cache lifetimes and
/// the clock. [`Default`] holds the production values; tests shorten them or
/// move a [`crate::provider::ManualClock`].
#[derive(Clone)]
pub struct AuthTuning {
    /// Connect timeout for discovery, JWKS and introspection requests.
    pub connect_timeout: Duration,
    /// Total time one such request may take, answer included.
    pub request_timeout: Duration,
    /// Largest answer read from the authorization server.
    pub max_response_bytes: usize,
    /// At most one JWKS fetch per this interval, whatever triggers it
    /// (unknown key ids, a failed fetch being retried).
    pub jwks_min_refresh: Duration,
    /// A JWKS older than this is fetched again on the next request, so keys
    /// the issuer removed stop being trusted.
    pub jwks_max_age: Duration,
    /// How long a positive introspection answer is reused.
    pub introspection_cache_ttl: Duration,
    /// How many introspection answers are kept (0 = no cache).
    pub introspection_cache_entries: usize,
    /// Monotonic time for the rate limit and the caches.
    pub clock: Arc<dyn Clock>,
    /// Reads an environment variable (the introspection secret). Tests
    /// replace it instead of changing the process environment.
    pub read_env: EnvReader,
}

impl Default for AuthTuning {
    fn default() -> Self {
        AuthTuning {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
            jwks_min_refresh: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(10 * 60),
            introspection_cache_ttl: Duration::from_secs(30),
            introspection_cache_entries: 10_000,
            clock: Arc::new(SystemClock),
            read_env: Arc::new(|name| std::env::var(name).ok()),
        }
    }
}

impl fmt::Debug for AuthTuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthTuning")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("jwks_min_refresh", &self.jwks_min_refresh)
            .field("jwks_max_age", &self.jwks_max_age)
            .field("introspection_cache_ttl", &self.introspection_cache_ttl)
            .field(
                "introspection_cache_entries",
                &self.introspection_cache_entries,
            )
            .finish_non_exhaustive()
    }
}

/// Validates bearer tokens. Cheap to clone (an `Arc` inside); construct once
/// at startup.
///
/// Startup behaviour: the configuration is validated, the introspection
/// secret is read from its environment variable, and when neither `jwks_url`
/// nor introspection is configured the issuer's metadata is fetched *now*
/// (eager discovery), so a wrong issuer fails the start with a clear error.
/// Set `jwks_url` to start without the issuer being reachable. The JWKS
/// itself is fetched on the first token, then cached.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    config: AuthConfig,
    check: Check,
}

// One per server, behind an Arc: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Check {
    Jwt {
        jwks: JwksCache,
        allowed: Vec<Algorithm>,
        rules: Rules,
    },
    Introspection(Introspector),
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Authenticator");
        d.field("issuer", &self.inner.config.issuer)
            .field("audience", &self.inner.config.audience);
        match &self.inner.check {
            Check::Jwt { jwks, .. } => d.field("jwks_url", &jwks.url()),
            Check::Introspection(i) => d.field("introspection", i),
        };
        d.finish()
    }
}

impl Authenticator {
    /// Validate `config` and get ready to check tokens, with the default
    /// [`AuthTuning`]. May fetch the issuer's metadata (see the type's docs).
    pub async fn new(config: AuthConfig) -> Result<Authenticator, AuthConfigError> {
        Authenticator::with_tuning(config, AuthTuning::default()).await
    }

    /// [`Authenticator::new`] with explicit timeouts, caps, cache lifetimes and clock.
    pub async fn with_tuning(
        config: AuthConfig,
        tuning: AuthTuning,
    ) -> Result<Authenticator, AuthConfigError> {
        config.validate()?;
        let allowed = config.parsed_algorithms()?;
        let http = Arc::new(Http::new(
            tuning.connect_timeout,
            tuning.request_timeout,
            tuning.max_response_bytes,
        )?);
        let check = if let Some(i) = &config.introspection {
            let rules = IntrospectionRules {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                leeway_secs: config.leeway_secs,
                ttl: tuning.introspection_cache_ttl,
                max_entries: tuning.introspection_cache_entries,
            };
            Check::Introspection(Introspector::new(
                i,
                &*tuning.read_env,
                http,
                tuning.clock.clone(),
                rules,
            )?)
        } else {
            let jwks_url = match &config.jwks_url {
                Some(u) => u.trim().to_string(),
                None => discover_jwks_url(&http, &config.issuer).await?,
            };
            let rules = Rules::new(
                &allowed,
                &config.issuer,
                &config.audience,
                config.leeway_secs,
            );
            Check::Jwt {
                jwks: JwksCache::new(
                    jwks_url,
                    http,
                    tuning.clock.clone(),
                    allowed.clone(),
                    tuning.jwks_min_refresh,
                    tuning.jwks_max_age,
                ),
                allowed,
                rules,
            }
        };
        Ok(Authenticator {
            inner: Arc::new(Inner { config, check }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// The JWKS URL in use (configured or discovered); `None` with introspection.
    pub fn jwks_url(&self) -> Option<&str> {
        match &self.inner.check {
            Check::Jwt { jwks, .. } => Some(jwks.url()),
            Check::Introspection(_) => None,
        }
    }

    /// Check the request's credentials. `authorization` is the raw
    /// `Authorization` header value, if any; tokens are accepted only from
    /// this header, never from a query string or body. Pass a header that is
    /// not valid text as `Some("")` (it is then treated as missing).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer_token(authorization)?;
        let result = match &self.inner.check {
            Check::Jwt {
                jwks,
                allowed,
                rules,
            } => check_jwt(jwks, allowed, rules, token).await,
            Check::Introspection(i) => i.check(token).await,
        };
        match &result {
            Ok(p) => tracing::debug!(subject = %p.subject, "bearer token accepted"),
            Err(e) => tracing::debug!(error = %e, "bearer token refused"),
        }
        result
    }

    /// RFC 9728 Protected Resource Metadata, to serve at
    /// `/.well-known/oauth-protected-resource`.
    pub fn resource_metadata(&self) -> Value {
        let c = &self.inner.config;
        json!({
            "resource": c.audience,
            "authorization_servers": [c.issuer],
            "scopes_supported": c.scopes_supported,
            "bearer_methods_supported": ["header"],
            "resource_name": "dispatch",
        })
    }

    /// The `WWW-Authenticate` value for a 401:
    /// `Bearer resource_metadata="<metadata_url>", scope="<scopes>"`, plus
    /// `error` and `error_description` when a token was presented and
    /// refused (not for [`AuthError::Missing`] or [`AuthError::Unavailable`]).
    pub fn challenge(&self, metadata_url: &str, error: Option<&AuthError>) -> String {
        let mut out = format!(
            "Bearer resource_metadata=\"{}\", scope=\"{}\"",
            quote(metadata_url),
            quote(&self.inner.config.scopes_supported.join(" "))
        );
        if let Some(e) = error
            && let Some(code) = e.oauth_error()
        {
            out.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                description(&e.to_string())
            ));
        }
        out
    }

    /// The `WWW-Authenticate` value for a 403 when the token lacks `needed`:
    /// `Bearer error="insufficient_scope", scope="<needed>", resource_metadata="<url>", error_description="..."`.
    pub fn insufficient_scope(&self, metadata_url: &str, needed: Scope) -> String {
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"{needed}\", resource_metadata=\"{}\", \
             error_description=\"this request needs the {needed} scope\"",
            quote(metadata_url)
        )
    }
}

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive,
/// exactly one RFC 6750 `b64token`).
pub(crate) fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) else {
        return Err(AuthError::Missing);
    };
    let (scheme, rest) = h.split_once([' ', '\t']).unwrap_or((h, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Name the scheme only if it is a known one: a client that sent a
        // bare token would otherwise see (part of) it echoed.
        const KNOWN: [&str; 9] = [
            "Basic",
            "Digest",
            "DPoP",
            "Negotiate",
            "NTLM",
            "Token",
            "MAC",
            "HOBA",
            "Mutual",
        ];
        let name = KNOWN
            .iter()
            .find(|k| k.eq_ignore_ascii_case(scheme))
            .map_or("another".to_string(), |k| format!("the {k}"));
        return Err(AuthError::BadHeader(format!(
            "the Authorization header uses {name} scheme; send `Authorization: Bearer <access token>`"
        )));
    }
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(AuthError::BadHeader(
            "the Authorization header has no token after Bearer".to_string(),
        ));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::BadHeader(format!(
            "the bearer token is longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    if !is_b64token(token) {
        return Err(AuthError::BadHeader(
            "the Authorization header must carry exactly one bearer token (letters, digits and -._~+/ then optional =)"
                .to_string(),
        ));
    }
    Ok(token)
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

enum Attempt {
    Done(Result<Principal, AuthError>),
    /// No key in this set fits: worth a refresh.
    Miss,
}

/// Check a JWT: header first (no key work for `none` or a disallowed
/// algorithm), then the key (refreshing the set once, rate-limited, when
/// the key id is unknown), then signature and claims.
async fn check_jwt(
    jwks: &JwksCache,
    allowed: &[Algorithm],
    rules: &Rules,
    token: &str,
) -> Result<Principal, AuthError> {
    let header = jwt::parse_header(token, allowed)?;
    let set = jwks.keys().await?;
    if let Attempt::Done(r) = attempt(&set, &header, token, rules)? {
        return r;
    }
    match jwks.refresh(set.generation, "unknown key id").await? {
        Refresh::Updated(fresh) => match attempt(&fresh, &header, token, rules)? {
            Attempt::Done(r) => r,
            Attempt::Miss => Err(unknown_key(&header)),
        },
        Refresh::Skipped(_) => Err(unknown_key(&header)),
    }
}

fn attempt(
    set: &KeySet,
    header: &JwtHeader,
    token: &str,
    rules: &Rules,
) -> Result<Attempt, AuthError> {
    Ok(match set.lookup(header.kid.as_deref(), header.alg)? {
        Lookup::Found(key) => Attempt::Done(jwt::verify(token, header.alg, key, rules)),
        Lookup::Candidates(keys) => {
            // No kid: the signature decides which key it is. Claim errors
            // come only after a signature matched, so they are final.
            for key in keys {
                match jwt::verify(token, header.alg, key, rules) {
                    Err(AuthError::BadSignature | AuthError::KeyMismatch(_)) => continue,
                    done => return Ok(Attempt::Done(done)),
                }
            }
            Attempt::Done(Err(AuthError::BadSignature))
        }
        Lookup::NotFound => Attempt::Miss,
    })
}

fn unknown_key(header: &JwtHeader) -> AuthError {
    AuthError::UnknownKey(match &header.kid {
        Some(kid) => format!("kid \"{}\"", shown(kid)),
        None => format!("no kid, and no published key fits {:?}", header.alg),
    })
}

/// Find the JWKS URL in the issuer's metadata: RFC 8414 first, then OpenID
/// Connect discovery. The metadata must name the configured issuer exactly
/// (RFC 8414 section 3.3), or a misconfiguration would go unnoticed.
async fn discover_jwks_url(http: &Http, issuer: &str) -> Result<String, AuthConfigError> {
    let fail = |message: String| AuthConfigError::Discovery {
        issuer: issuer.to_string(),
        message,
    };
    let parsed = Url::parse(issuer).map_err(|e| fail(format!("not a URL ({e})")))?;
    let mut tried = Vec::new();
    for url in metadata_urls(&parsed) {
        let doc = match http.get_json(&url).await {
            Ok(doc) => doc,
            Err(e) => {
                tried.push(e.to_string());
                continue;
            }
        };
        let said = doc.get("issuer").and_then(Value::as_str);
        if said != Some(issuer) {
            return Err(fail(format!(
                "{url} describes issuer {:?}, not {issuer:?}; set auth.issuer to exactly the \
                 issuer your tokens carry in iss",
                said.map(shown).unwrap_or_else(|| "(none)".to_string())
            )));
        }
        let Some(jwks) = doc.get("jwks_uri").and_then(Value::as_str) else {
            tried.push(format!("{url}: has no jwks_uri"));
            continue;
        };
        check_url("jwks_url", jwks).map_err(|e| {
            fail(format!(
                "{url} names a jwks_uri this server cannot use: {e}"
            ))
        })?;
        tracing::info!(issuer, metadata = %url, jwks_uri = jwks, "discovered the issuer's JWKS");
        return Ok(jwks.to_string());
    }
    Err(fail(format!(
        "{}; check auth.issuer, or set auth.jwks_url to skip discovery",
        tried.join("; ")
    )))
}

/// The RFC 8414 and OpenID Connect metadata URLs of `issuer`. For an issuer
/// with a path, RFC 8414 inserts the well-known segment before the path,
/// OpenID Connect appends it.
fn metadata_urls(issuer: &Url) -> [String; 2] {
    let origin = issuer.origin().ascii_serialization();
    let path = issuer.path().trim_end_matches('/');
    [
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}{path}/.well-known/openid-configuration"),
    ]
}

/// `s` as the inside of an HTTP quoted-string: `"` and `\` escaped, anything
/// outside printable ASCII percent-encoded.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c == ' ' || c.is_ascii_graphic() => out.push(c),
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    out
}

/// An `error_description`: RFC 6750 allows only `%x20-21 / %x23-5B /
/// %x5D-7E`, so quotes, backslashes and non-ASCII are replaced.
fn description(s: &str) -> String {
    s.replace('…', "...")
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c == ' ' || c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn jwt_auth() -> Authenticator {
        let mut c = AuthConfig::new(
            "https://auth.example.com",
            "https://dispatch.example.com/mcp",
        );
        // An explicit JWKS URL: no discovery, nothing fetched until a token comes.
        c.jwks_url = Some("https://auth.example.com/jwks".into());
        Authenticator::new(c).await.unwrap()
    }

    const META: &str = "https://dispatch.example.com/.well-known/oauth-protected-resource";

    #[tokio::test]
    async fn challenge_formats() {
        let a = jwt_auth().await;
        assert_eq!(
            a.challenge(META, None),
            format!(
                "Bearer resource_metadata=\"{META}\", scope=\"dispatch:read dispatch:run dispatch:write\""
            )
        );
        assert_eq!(
            a.challenge(META, Some(&AuthError::Missing)),
            a.challenge(META, None)
        );
        assert_eq!(
            a.challenge(META, Some(&AuthError::Unavailable("x".into()))),
            a.challenge(META, None)
        );
        assert_eq!(
            a.challenge(META, Some(&AuthError::Expired)),
            format!(
                "Bearer resource_metadata=\"{META}\", scope=\"dispatch:read dispatch:run dispatch:write\", \
                 error=\"invalid_token\", error_description=\"the token has expired\""
            )
        );
        let bad = a.challenge(META, Some(&AuthError::BadHeader("the Authorization header uses the Basic scheme; send `Authorization: Bearer <access token>`".into())));
        assert!(bad.contains("error=\"invalid_request\""), "{bad}");
        let kid = a.challenge(META, Some(&AuthError::UnknownKey("kid \"k…\"".into())));
        assert!(kid.contains("error_description=\"the token was signed with a key the issuer does not publish (kid 'k...')\""), "{kid}");
        assert_eq!(
            a.insufficient_scope(META, Scope::Run),
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"dispatch:run\", resource_metadata=\"{META}\", \
                 error_description=\"this request needs the dispatch:run scope\""
            )
        );
        // A caller-supplied URL cannot break out of the quoted string.
        let odd = a.challenge("https://x/\"a\\b\u{e9}", None);
        assert!(
            odd.starts_with("Bearer resource_metadata=\"https://x/\\\"a\\\\b%C3%A9\""),
            "{odd}"
        );
    }

    #[tokio::test]
    async fn resource_metadata_shape() {
        let a = jwt_auth().await;
        assert_eq!(
            a.resource_metadata(),
            json!({
                "resource": "https://dispatch.example.com/mcp",
                "authorization_servers": ["https://auth.example.com"],
                "scopes_supported": ["dispatch:read", "dispatch:run", "dispatch:write"],
                "bearer_methods_supported": ["header"],
                "resource_name": "dispatch",
            })
        );
        assert_eq!(a.jwks_url(), Some("https://auth.example.com/jwks"));
        let dbg = format!("{a:?}");
        assert!(dbg.contains("jwks_url"), "{dbg}");
    }

    #[tokio::test]
    async fn invalid_config_fails_construction() {
        let mut c = AuthConfig::new("https://auth.example.com", "https://d/mcp");
        c.algorithms = vec!["none".into()];
        let e = Authenticator::new(c).await.unwrap_err();
        assert!(e.to_string().contains("`none`"), "{e}");
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("  ")), Err(AuthError::Missing));
        assert_eq!(
            bearer_token(Some("Bearer abc.def-ghi_~+/==")),
            Ok("abc.def-ghi_~+/==")
        );
        assert_eq!(bearer_token(Some("bearer   tok")), Ok("tok"));
        assert_eq!(bearer_token(Some("BEARER\ttok ")), Ok("tok"));
        let basic = bearer_token(Some("Basic dXNlcjpwYXNz")).unwrap_err();
        assert!(basic.to_string().contains("the Basic scheme"), "{basic}");
        let raw = bearer_token(Some("eyJhbGciOi.eyJzdWIi.sig")).unwrap_err();
        assert!(!raw.to_string().contains("eyJ"), "{raw}");
        assert!(raw.to_string().contains("another scheme"), "{raw}");
        for bad in [
            "Bearer",
            "Bearer a b",
            "Bearer a,b",
            "Bearer ===",
            "Bearer tök",
            "Bearer a=b",
        ] {
            assert!(
                matches!(bearer_token(Some(bad)), Err(AuthError::BadHeader(_))),
                "{bad}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(
            matches!(bearer_token(Some(&long)), Err(AuthError::BadHeader(m)) if m.contains("longer"))
        );
    }

    #[test]
    fn metadata_url_forms() {
        let u = Url::parse("https://auth.example.com").unwrap();
        assert_eq!(
            metadata_urls(&u),
            [
                "https://auth.example.com/.well-known/oauth-authorization-server",
                "https://auth.example.com/.well-known/openid-configuration",
            ]
        );
        let u = Url::parse("http://127.0.0.1:8080/realms/main/").unwrap();
        assert_eq!(
            metadata_urls(&u),
            [
                "http://127.0.0.1:8080/.well-known/oauth-authorization-server/realms/main",
                "http://127.0.0.1:8080/realms/main/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn the_authenticate_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_sync<T: Send + Sync + Clone>() {}
        assert_sync::<Authenticator>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let a = rt.block_on(jwt_auth());
        let fut = a.authenticate(None);
        assert_send(&fut);
    }
}
