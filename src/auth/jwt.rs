//! Checking a JWT access token: the header (read by us first, so `none` and
//! disallowed algorithms are refused before any key is looked at), the
//! signature and the registered claims (by `jsonwebtoken`), then the claims
//! dispatch needs (`sub`, scopes).

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::error::{AuthError, shown};
use super::jwks::VerifyKey;
use super::scope::Principal;

/// What the header says, once it passed the allow-list.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JwtHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Read the token's header and check its algorithm against `allowed`.
///
/// `jku`, `x5u` and `jwk` header parameters are ignored: keys come only
/// from the configured issuer, never from the token.
pub(crate) fn parse_header(token: &str, allowed: &[Algorithm]) -> Result<JwtHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "a JWT has three dot-separated parts (an opaque token needs auth.introspection)"
                .to_string(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("the header is not base64url".to_string()))?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("the header is not a JSON object".to_string()))?;
    let Some(alg) = header.get("alg").and_then(Value::as_str) else {
        return Err(AuthError::Malformed("the header has no alg".to_string()));
    };
    // Checked before parsing: `none` is no algorithm to jsonwebtoken, but it
    // deserves its own clear refusal.
    let parsed = alg
        .parse::<Algorithm>()
        .ok()
        .filter(|a| allowed.contains(a))
        .ok_or_else(|| AuthError::AlgorithmNotAllowed(shown(alg)))?;
    // RFC 7515 4.1.11: a recipient must refuse extensions it does not know.
    if header.contains_key("crit") {
        return Err(AuthError::Malformed(
            "the header lists critical extensions (crit), which this server does not support"
                .to_string(),
        ));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(AuthError::Malformed(
                "the header's kid is not a string".to_string(),
            ));
        }
    };
    Ok(JwtHeader { alg: parsed, kid })
}

/// The `jsonwebtoken` rules for our tokens, one set per allowed algorithm
/// (`jsonwebtoken` wants every algorithm of a `Validation` to be of the
/// verifying key's family): `iss`, `aud`, required `exp`, `iss`, `aud` and
/// `sub`, `nbf` honoured, leeway.
pub(crate) struct Rules {
    by_alg: Vec<(Algorithm, Validation)>,
}

impl Rules {
    pub fn new(allowed: &[Algorithm], issuer: &str, audience: &str, leeway_secs: u64) -> Rules {
        let by_alg = allowed
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.set_issuer(&[issuer]);
                v.set_audience(&[audience]);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.leeway = leeway_secs;
                (*alg, v)
            })
            .collect();
        Rules { by_alg }
    }

    fn for_alg(&self, alg: Algorithm) -> Option<&Validation> {
        self.by_alg.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }
}

/// Check the signature of a token whose header said `alg` with `key`, and
/// the claims with `rules`, then build the principal.
pub(crate) fn verify(
    token: &str,
    alg: Algorithm,
    key: &VerifyKey,
    rules: &Rules,
) -> Result<Principal, AuthError> {
    let validation = rules
        .for_alg(alg)
        .ok_or_else(|| AuthError::AlgorithmNotAllowed(format!("{alg:?}")))?;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
        .map_err(|e| map_error(e.kind()))?;
    principal_from_claims(&data.claims)
}

/// `jsonwebtoken`'s verdict in our words.
fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(shown(c)),
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Malformed(format!("the {} claim has the wrong type", shown(c)))
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::AlgorithmNotAllowed("(unsupported)".to_string())
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => {
            AuthError::KeyMismatch("the issuer's key cannot check this token".to_string())
        }
        ErrorKind::Base64(_) => AuthError::Malformed("a part is not base64url".to_string()),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("the claims are not a JSON object".to_string())
        }
        _ => AuthError::Malformed("the token cannot be decoded".to_string()),
    }
}

/// Subject, scopes and client from verified claims. `sub` must be a
/// non-empty string: it owns the tasks the request creates.
pub(crate) fn principal_from_claims(claims: &Map<String, Value>) -> Result<Principal, AuthError> {
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(AuthError::MissingClaim("sub".to_string())),
    };
    let client_id = ["client_id", "azp"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Value::as_str))
        .map(str::to_string);
    Ok(Principal {
        subject,
        scopes: scopes_from(claims.get("scope"), claims.get("scp")),
        client_id,
    })
}

/// Scopes from `scope` (RFC 9068: a space-separated string) and `scp`
/// (an array at several providers, a string at others); both forms are
/// accepted in both claims.
pub(crate) fn scopes_from(scope: Option<&Value>, scp: Option<&Value>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for v in [scope, scp].into_iter().flatten() {
        match v {
            Value::String(s) => out.extend(s.split_whitespace().map(str::to_string)),
            Value::Array(items) => out.extend(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .flat_map(str::split_whitespace)
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token_with_header(h: Value) -> String {
        format!("{}.{}.sig", b64(&h), b64(&json!({"sub": "a"})))
    }

    const ALLOWED: [Algorithm; 2] = [Algorithm::ES256, Algorithm::RS256];

    #[test]
    fn header_is_read_and_checked() {
        let t = token_with_header(json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}));
        assert_eq!(
            parse_header(&t, &ALLOWED).unwrap(),
            JwtHeader {
                alg: Algorithm::ES256,
                kid: Some("k1".into())
            }
        );
        let t = token_with_header(json!({"alg": "RS256"}));
        assert_eq!(parse_header(&t, &ALLOWED).unwrap().kid, None);
    }

    #[test]
    fn none_hmac_and_unlisted_algorithms_are_refused() {
        for alg in ["none", "None", "HS256", "PS256", "ES999", ""] {
            let t = token_with_header(json!({"alg": alg, "kid": "k1"}));
            assert_eq!(
                parse_header(&t, &ALLOWED),
                Err(AuthError::AlgorithmNotAllowed(alg.to_string())),
                "{alg}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases = [
            "onlyonepart".to_string(),
            "a.b".to_string(),
            "a.b.c.d".to_string(),
            "!!!.b.c".to_string(),
            format!("{}.b.c", URL_SAFE_NO_PAD.encode("not json")),
            token_with_header(json!({"kid": "k"})),
            token_with_header(json!({"alg": "ES256", "kid": 5})),
            token_with_header(json!({"alg": "ES256", "crit": ["exp"]})),
            token_with_header(json!(["alg", "ES256"])),
        ];
        for t in cases {
            assert!(
                matches!(parse_header(&t, &ALLOWED), Err(AuthError::Malformed(_))),
                "{t}"
            );
        }
    }

    #[test]
    fn scopes_from_scope_and_scp_in_either_form() {
        let s = scopes_from(Some(&json!("dispatch:read  dispatch:run")), None);
        assert_eq!(
            s,
            ["dispatch:read", "dispatch:run"].map(String::from).into()
        );
        let s = scopes_from(None, Some(&json!(["dispatch:write", "openid"])));
        assert_eq!(s, ["dispatch:write", "openid"].map(String::from).into());
        let s = scopes_from(Some(&json!("dispatch:read")), Some(&json!("dispatch:run")));
        assert_eq!(s.len(), 2);
        let s = scopes_from(Some(&json!(42)), Some(&json!([1, "a b"])));
        assert_eq!(s, ["a", "b"].map(String::from).into());
        assert!(scopes_from(None, None).is_empty());
    }

    #[test]
    fn principal_needs_a_subject() {
        let claims = |v: Value| v.as_object().cloned().unwrap();
        let p = principal_from_claims(&claims(
            json!({"sub": "alice", "scope": "dispatch:read", "azp": "cli"}),
        ))
        .unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.client_id.as_deref(), Some("cli"));
        assert!(p.has(super::super::Scope::Read));
        let p = principal_from_claims(&claims(json!({"sub": "a", "client_id": "c", "azp": "z"})))
            .unwrap();
        assert_eq!(p.client_id.as_deref(), Some("c"));
        for bad in [
            json!({}),
            json!({"sub": ""}),
            json!({"sub": "  "}),
            json!({"sub": 7}),
        ] {
            assert_eq!(
                principal_from_claims(&claims(bad)),
                Err(AuthError::MissingClaim("sub".into()))
            );
        }
    }

    #[test]
    fn rules_require_the_registered_claims() {
        let rules = Rules::new(&ALLOWED, "https://i", "https://a", 30);
        for alg in ALLOWED {
            let v = rules.for_alg(alg).unwrap();
            for c in ["exp", "iss", "aud", "sub"] {
                assert!(v.required_spec_claims.contains(c), "{c}");
            }
            assert!(v.validate_nbf && v.validate_exp && v.validate_aud);
            assert_eq!(v.leeway, 30);
            assert_eq!(v.algorithms, [alg]);
        }
        assert!(rules.for_alg(Algorithm::EdDSA).is_none());
    }
}
