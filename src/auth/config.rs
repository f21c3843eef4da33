//! `[auth]` in `dispatch.toml`: which authorization server to trust and how to
//! check its tokens. [`AuthConfig::validate`] is pure (no network, no
//! environment); reading the client secret and discovery happen in
//! [`super::Authenticator::new`].

use std::net::IpAddr;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use reqwest::Url;
use serde::Deserialize;

use super::Scope;

/// Clock skew tolerated on `exp` and `nbf` unless `leeway_secs` says otherwise.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// The largest `leeway_secs` accepted: more would keep expired tokens alive.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// Signature algorithms accepted unless `algorithms` says otherwise: every
/// asymmetric algorithm `jsonwebtoken` verifies. HMAC (`HS*`) and `none` are
/// never accepted.
pub const DEFAULT_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `[auth]`: run as an OAuth 2.0 resource server.
///
/// ```toml
/// [auth]
/// issuer = "https://auth.example.com"
/// audience = "https://dispatch.example.com/mcp"
/// # jwks_url = "https://auth.example.com/.well-known/jwks.json"  # else discovered
/// # [auth.introspection]                                          # instead of JWTs
/// # url = "https://auth.example.com/oauth2/introspect"
/// # client_id = "dispatch"
/// # client_secret_env = "DISPATCH_INTROSPECTION_SECRET"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The authorization server's issuer identifier, exactly as tokens carry it
    /// in `iss` (mind a trailing `/`). `https`, or `http` for a loopback host.
    pub issuer: String,
    /// This server's canonical URL (e.g. `https://dispatch.example.com/mcp`):
    /// tokens must name it in `aud`, and it is the RFC 9728 `resource`.
    pub audience: String,
    /// Where the issuer publishes its signing keys. When absent (and no
    /// `introspection`), it is discovered at startup from the issuer's
    /// metadata (RFC 8414, then OpenID Connect discovery).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Check tokens with RFC 7662 introspection instead of validating JWTs
    /// (for opaque tokens). Excludes `jwks_url`.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// JWT signature algorithms accepted (default: [`DEFAULT_ALGORITHMS`]).
    /// `none` and `HS*` are refused: anyone could forge such a token.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 30, at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Scopes advertised in the resource metadata and in 401 challenges
    /// (default: `dispatch:read`, `dispatch:run`, `dispatch:write`).
    #[serde(default = "default_scopes")]
    pub scopes_supported: Vec<String>,
    /// Subjects (`sub`) that may write to the KB's shared `context/` folder;
    /// every subject reads it, and has a KB space of its own (default: none).
    #[serde(default)]
    pub context_writers: Vec<String>,
}

/// `[auth.introspection]`: the RFC 7662 endpoint and this server's client
/// credentials there (sent with HTTP Basic authentication).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint. `https`, or `http` for a loopback host.
    pub url: String,
    /// This server's client id at the authorization server.
    pub client_id: String,
    /// Name of the environment variable that holds the client secret (never
    /// the secret itself).
    pub client_secret_env: String,
}

fn default_algorithms() -> Vec<String> {
    DEFAULT_ALGORITHMS.iter().map(|a| a.to_string()).collect()
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECS
}

fn default_scopes() -> Vec<String> {
    Scope::ALL.iter().map(|s| s.as_str().to_string()).collect()
}

/// Why the `[auth]` configuration cannot be used. Each message names the key
/// and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A key has a value that cannot work.
    #[error("auth.{key}: {message}")]
    Invalid {
        /// The key under `[auth]`, e.g. `issuer` or `introspection.url`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The environment variable that should hold the introspection secret is unset.
    #[error(
        "auth.introspection.client_secret_env: the environment variable {var} is not set \
         (or is empty); export the introspection client's secret in it"
    )]
    MissingSecret {
        /// The variable's name.
        var: String,
    },
    /// The issuer's metadata could not be fetched or does not name a JWKS.
    #[error("auth.issuer: cannot discover the signing keys of {issuer}: {message}")]
    Discovery {
        /// The configured issuer.
        issuer: String,
        /// Every URL tried and what went wrong there.
        message: String,
    },
    /// The HTTP client could not be built (a TLS setup problem).
    #[error("auth: cannot build the HTTP client: {0}")]
    Http(String),
}

fn invalid(key: &str, message: impl Into<String>) -> AuthConfigError {
    AuthConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

impl AuthConfig {
    /// A configuration with every optional key at its default.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> AuthConfig {
        AuthConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url: None,
            introspection: None,
            algorithms: default_algorithms(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            scopes_supported: default_scopes(),
            context_writers: Vec::new(),
        }
    }

    /// Check every key without touching the network or the environment.
    /// Returns the first problem found.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        let issuer = check_url("issuer", &self.issuer)?;
        if issuer.query().is_some() || issuer.fragment().is_some() {
            return Err(invalid(
                "issuer",
                format!(
                    "{:?} has a query or fragment, which an issuer identifier cannot have (RFC 8414)",
                    self.issuer
                ),
            ));
        }
        check_audience(&self.audience)?;
        if let Some(url) = &self.jwks_url {
            check_url("jwks_url", url)?;
        }
        if let Some(i) = &self.introspection {
            if self.jwks_url.is_some() {
                return Err(invalid(
                    "jwks_url",
                    "set either jwks_url (validate JWTs) or [auth.introspection] (RFC 7662), not both",
                ));
            }
            check_url("introspection.url", &i.url)?;
            if i.client_id.trim().is_empty() {
                return Err(invalid(
                    "introspection.client_id",
                    "is empty; set the client id this server has at the authorization server",
                ));
            }
            if !is_env_name(&i.client_secret_env) {
                return Err(invalid(
                    "introspection.client_secret_env",
                    format!(
                        "{:?} is not an environment variable name; name the variable that holds \
                         the secret (e.g. DISPATCH_INTROSPECTION_SECRET), not the secret itself",
                        i.client_secret_env
                    ),
                ));
            }
        }
        self.parsed_algorithms()?;
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(invalid(
                "leeway_secs",
                format!(
                    "{} is more than {MAX_LEEWAY_SECS}; leeway only absorbs clock skew, fix the clocks instead",
                    self.leeway_secs
                ),
            ));
        }
        if self.scopes_supported.is_empty() {
            return Err(invalid(
                "scopes_supported",
                "is empty; list the scopes clients may ask for (or remove the key for the default)",
            ));
        }
        for s in &self.scopes_supported {
            if !is_scope_token(s) {
                return Err(invalid(
                    "scopes_supported",
                    format!(
                        "{s:?} is not a scope: scopes are non-empty and have no spaces, quotes or backslashes"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `algorithms` as `jsonwebtoken` values, refusing `none`, HMAC and
    /// unknown names.
    pub(crate) fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, AuthConfigError> {
        if self.algorithms.is_empty() {
            return Err(invalid(
                "algorithms",
                "is empty; list at least one (or remove the key for the default)",
            ));
        }
        let mut out = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            let name = name.trim();
            if name.eq_ignore_ascii_case("none") {
                return Err(invalid(
                    "algorithms",
                    "`none` means unsigned tokens, which anyone can forge; remove it",
                ));
            }
            let alg: Algorithm = name.parse().map_err(|_| {
                invalid(
                    "algorithms",
                    format!(
                        "unknown algorithm {name:?}; supported: {}",
                        DEFAULT_ALGORITHMS.join(", ")
                    ),
                )
            })?;
            if alg.family() == AlgorithmFamily::Hmac {
                return Err(invalid(
                    "algorithms",
                    format!(
                        "{name} is an HMAC (shared secret) algorithm; a resource server that \
                         checks tokens with the issuer's public keys must never accept it \
                         (algorithm confusion: the public key would serve as the HMAC secret); remove it"
                    ),
                ));
            }
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        Ok(out)
    }
}

/// Parse `value` as an `https` URL (or `http` on a loopback host) without
/// credentials in it.
pub(crate) fn check_url(key: &str, value: &str) -> Result<Url, AuthConfigError> {
    let url = Url::parse(value.trim())
        .map_err(|e| invalid(key, format!("{value:?} is not a URL ({e})")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key,
            "has credentials in it; remove them (they would end up in logs)",
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(invalid(
                key,
                format!(
                    "{value:?} uses http on a host that is not loopback; use https (tokens and \
                     keys must not travel in clear text)"
                ),
            ));
        }
        other => {
            return Err(invalid(
                key,
                format!("{value:?} has scheme {other:?}; use https"),
            ));
        }
    }
    if url.host().is_none() {
        return Err(invalid(key, format!("{value:?} has no host")));
    }
    Ok(url)
}

/// `localhost`, `127.0.0.0/8` or `::1`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // IPv6 hosts come bracketed: `[::1]`.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn check_audience(audience: &str) -> Result<(), AuthConfigError> {
    if audience.trim().is_empty() {
        return Err(invalid(
            "audience",
            "is empty; set this server's canonical URL, e.g. https://dispatch.example.com/mcp",
        ));
    }
    if audience
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "audience",
            format!("{audience:?} contains whitespace; use this server's canonical URL"),
        ));
    }
    Ok(())
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 6749 `scope-token`: `%x21 / %x23-5B / %x5D-7E`, at least one.
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> AuthConfig {
        AuthConfig::new(
            "https://auth.example.com",
            "https://dispatch.example.com/mcp",
        )
    }

    fn err(c: &AuthConfig) -> String {
        c.validate().expect_err("should be invalid").to_string()
    }

    #[test]
    fn defaults_are_valid_and_parse_from_toml() {
        base().validate().unwrap();
        let c: AuthConfig = toml::from_str(
            "issuer = \"https://auth.example.com\"\naudience = \"https://d.example.com/mcp\"\n",
        )
        .unwrap();
        assert_eq!(c.leeway_secs, 30);
        assert_eq!(c.algorithms.len(), DEFAULT_ALGORITHMS.len());
        assert_eq!(
            c.scopes_supported,
            ["dispatch:read", "dispatch:run", "dispatch:write"]
        );
        assert!(c.jwks_url.is_none() && c.introspection.is_none());
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<AuthConfig>(
            "issuer = \"https://a\"\naudience = \"x\"\njwks_uri = \"https://a/jwks\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("jwks_uri"), "{e}");
        let e = toml::from_str::<AuthConfig>(
            "issuer = \"https://a\"\naudience = \"x\"\n[introspection]\nurl = \"https://a/i\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("client_secret"), "{e}");
    }

    #[test]
    fn alg_none_and_hmac_are_refused() {
        let mut c = base();
        c.algorithms = vec!["ES256".into(), "none".into()];
        let e = err(&c);
        assert!(e.contains("auth.algorithms") && e.contains("`none`"), "{e}");
        c.algorithms = vec!["NONE".into()];
        assert!(err(&c).contains("`none`"));
        for hs in ["HS256", "HS384", "HS512"] {
            c.algorithms = vec!["RS256".into(), hs.into()];
            let e = err(&c);
            assert!(e.contains(hs) && e.contains("algorithm confusion"), "{e}");
        }
        c.algorithms = vec!["ES512".into()];
        assert!(err(&c).contains("unknown algorithm \"ES512\""));
        c.algorithms = vec![];
        assert!(err(&c).contains("is empty"));
        c.algorithms = vec!["ES256".into(), "EdDSA".into()];
        assert_eq!(
            c.parsed_algorithms().unwrap(),
            [Algorithm::ES256, Algorithm::EdDSA]
        );
    }

    #[test]
    fn http_only_on_loopback() {
        let mut c = base();
        c.issuer = "http://auth.example.com".into();
        let e = err(&c);
        assert!(
            e.starts_with("auth.issuer:") && e.contains("use https"),
            "{e}"
        );
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:9000/realms/x",
            "http://[::1]:1234",
            "http://127.1.2.3",
        ] {
            c.issuer = ok.into();
            c.validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        c.issuer = "http://10.0.0.1".into();
        assert!(err(&c).contains("not loopback"));
        c.issuer = "ftp://auth.example.com".into();
        assert!(err(&c).contains("scheme"));
        c.issuer = "auth.example.com".into();
        assert!(err(&c).contains("not a URL"));
        c.issuer = "https://auth.example.com/?tenant=1".into();
        assert!(err(&c).contains("query"));
        c.issuer = "https://user:pw@auth.example.com".into();
        assert!(err(&c).contains("credentials"));

        let mut c = base();
        c.jwks_url = Some("http://keys.example.com/jwks".into());
        assert!(err(&c).starts_with("auth.jwks_url:"));
    }

    #[test]
    fn introspection_checks() {
        let mut c = base();
        c.introspection = Some(IntrospectionConfig {
            url: "https://auth.example.com/introspect".into(),
            client_id: "dispatch".into(),
            client_secret_env: "DISPATCH_SECRET".into(),
        });
        c.validate().unwrap();
        c.jwks_url = Some("https://auth.example.com/jwks".into());
        assert!(err(&c).contains("not both"));
        c.jwks_url = None;
        if let Some(i) = c.introspection.as_mut() {
            i.client_secret_env = "s3cr3t value!".into();
        }
        let e = err(&c);
        assert!(
            e.starts_with("auth.introspection.client_secret_env:")
                && e.contains("not the secret itself"),
            "{e}"
        );
        if let Some(i) = c.introspection.as_mut() {
            i.client_secret_env = "OK_NAME".into();
            i.client_id = " ".into();
        }
        assert!(err(&c).contains("client_id"));
        if let Some(i) = c.introspection.as_mut() {
            i.client_id = "dispatch".into();
            i.url = "http://auth.example.com/introspect".into();
        }
        assert!(err(&c).starts_with("auth.introspection.url:"));
    }

    #[test]
    fn leeway_audience_and_scopes() {
        let mut c = base();
        c.leeway_secs = 301;
        assert!(err(&c).contains("leeway_secs"));
        c.leeway_secs = 300;
        c.validate().unwrap();
        c.audience = "".into();
        assert!(err(&c).starts_with("auth.audience:"));
        c.audience = "https://x/mcp extra".into();
        assert!(err(&c).contains("whitespace"));
        c.audience = "api://dispatch".into();
        c.validate().unwrap();
        c.scopes_supported = vec!["dispatch:read".into(), "has space".into()];
        assert!(err(&c).contains("\"has space\" is not a scope"));
        c.scopes_supported = vec!["a\"b".into()];
        assert!(err(&c).contains("not a scope"));
        c.scopes_supported = vec![];
        assert!(err(&c).contains("scopes_supported: is empty"));
    }
}
