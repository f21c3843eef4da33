//! Why a request was not authenticated.

/// Why a bearer token was refused, or could not be checked.
///
/// Display texts say what is wrong in words a client developer can act on.
/// They never contain the token: values taken from a token (an algorithm
/// name, a key id) are cut short and stripped of anything but plain
/// characters first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (or an empty one).
    #[error("no bearer token; send `Authorization: Bearer <access token>`")]
    Missing,
    /// An `Authorization` header that is not one bearer token.
    #[error("{0}")]
    BadHeader(String),
    /// The token is not a well-formed JWT (or an unusable one).
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The token's `alg` is not on the allow-list (`none`, HMAC, ...).
    #[error("the token is signed with algorithm {0}, which this server does not accept")]
    AlgorithmNotAllowed(String),
    /// No key in the issuer's JWKS has the token's key id (even after a refresh).
    #[error("the token was signed with a key the issuer does not publish ({0})")]
    UnknownKey(String),
    /// The key the token names cannot check the token's algorithm.
    #[error("the token's key does not fit its algorithm: {0}")]
    KeyMismatch(String),
    /// The signature does not match the token.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token was issued by another authorization server than the one this server trusts")]
    WrongIssuer,
    /// `aud` does not name this server.
    #[error("the token is meant for another resource (its aud does not name this server)")]
    WrongAudience,
    /// A claim this server needs is absent (`sub`, `exp`, ...).
    #[error("the token has no {0} claim")]
    MissingClaim(String),
    /// Introspection says the token is not active (revoked, expired or unknown).
    #[error("the token is not active (revoked, expired or unknown to the authorization server)")]
    Inactive,
    /// The JWKS or introspection endpoint could not be used, so the token
    /// could not be checked. Not the client's fault: answer 503.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status to answer with: 503 for [`AuthError::Unavailable`]
    /// (the client should retry, not re-authenticate), else 401.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Unavailable(_) => 503,
            _ => 401,
        }
    }

    /// The RFC 6750 `error` code for the `WWW-Authenticate` challenge:
    /// none when no token was sent (or the failure is ours),
    /// `invalid_request` for a malformed header, else `invalid_token`.
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing | AuthError::Unavailable(_) => None,
            AuthError::BadHeader(_) => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }
}

/// Make a value taken from a token safe to show: at most 40 plain printable
/// ASCII characters, quotes and backslashes replaced. A long value is cut so
/// that no message can carry a whole token.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = value
        .chars()
        .take(MAX)
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    if value.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        assert_eq!(AuthError::Missing.http_status(), 401);
        assert_eq!(AuthError::Missing.oauth_error(), None);
        assert_eq!(AuthError::Expired.oauth_error(), Some("invalid_token"));
        assert_eq!(
            AuthError::BadHeader("x".into()).oauth_error(),
            Some("invalid_request")
        );
        let u = AuthError::Unavailable("down".into());
        assert_eq!(u.http_status(), 503);
        assert_eq!(u.oauth_error(), None);
    }

    #[test]
    fn shown_cuts_and_cleans() {
        assert_eq!(shown("abc"), "abc");
        assert_eq!(shown("a\"b\\c\n"), "a'b'c?");
        let long = "x".repeat(100);
        let s = shown(&long);
        assert_eq!(s.chars().count(), 41);
        assert!(s.ends_with('…'));
    }
}
