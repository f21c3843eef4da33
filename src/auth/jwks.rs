//! The issuer's signing keys: fetched on first use, cached, refreshed when a
//! token names a key id we do not have (key rotation) or when the set is
//! older than its maximum age (so removed keys stop being trusted).
//!
//! Refreshes are rate-limited (at most one attempt per `min_refresh`
//! interval, whatever the outcome) so a flood of tokens with made-up key ids
//! cannot turn this server into a load generator against the issuer, and
//! coalesced: callers that wait while another one refreshes use its result
//! instead of fetching again.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use super::error::{AuthError, shown};
use super::fetch::Http;
use crate::provider::Clock;

/// Keys beyond this many in one JWKS are ignored (real sets hold a handful).
const MAX_KEYS: usize = 100;

/// RSA keys shorter than this many bits are not trusted.
const MIN_RSA_BITS: usize = 2048;

/// What kind of public key a JWK holds, as far as choosing an algorithm goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA key",
            KeyKind::P256 => "a P-256 key",
            KeyKind::P384 => "a P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }

    /// Whether a key of this kind verifies `alg`.
    fn fits(self, alg: Algorithm) -> bool {
        match alg.family() {
            AlgorithmFamily::Rsa => self == KeyKind::Rsa,
            AlgorithmFamily::Ec => {
                (alg == Algorithm::ES256 && self == KeyKind::P256)
                    || (alg == Algorithm::ES384 && self == KeyKind::P384)
            }
            AlgorithmFamily::Ed => self == KeyKind::Ed25519,
            AlgorithmFamily::Hmac => false,
        }
    }
}

/// One usable signature-verification key.
pub(crate) struct VerifyKey {
    /// `kid`, if the JWK has one.
    pub kid: Option<String>,
    /// The JWK's `alg`, if it pins one.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub key: DecodingKey,
}

impl VerifyKey {
    /// `Ok` if this key may verify a token signed with `alg`, else why not.
    pub fn check_fits(&self, alg: Algorithm) -> Result<(), String> {
        if let Some(pinned) = self.alg
            && pinned != alg
        {
            return Err(format!("the key is for {pinned:?}, the token says {alg:?}"));
        }
        if !self.kind.fits(alg) {
            return Err(format!(
                "the key is {}, the token says {alg:?}",
                self.kind.name()
            ));
        }
        Ok(())
    }
}

/// One fetched key set.
#[derive(Default)]
pub(crate) struct KeySet {
    pub keys: Vec<VerifyKey>,
    /// Bumped by each successful fetch; 0 = nothing fetched yet.
    pub generation: u64,
    /// When this set was fetched.
    loaded_at: Option<Instant>,
}

/// How a lookup went.
pub(crate) enum Lookup<'a> {
    /// The key to verify with.
    Found(&'a VerifyKey),
    /// Several candidates (a token without `kid`): try each.
    Candidates(Vec<&'a VerifyKey>),
    /// Nothing fits: `kid` unknown or no key for the algorithm.
    NotFound,
}

impl KeySet {
    /// The key(s) for a token with this `kid` and `alg`. A key with the
    /// right id that cannot verify `alg` is an error, not a miss: refreshing
    /// would not help.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Result<Lookup<'_>, AuthError> {
        match kid {
            Some(kid) => {
                let mut same_id = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if same_id.peek().is_none() {
                    return Ok(Lookup::NotFound);
                }
                let mut why = String::new();
                for k in same_id {
                    match k.check_fits(alg) {
                        Ok(()) => return Ok(Lookup::Found(k)),
                        Err(e) => why = e,
                    }
                }
                Err(AuthError::KeyMismatch(format!(
                    "kid {:?}: {why}",
                    shown(kid)
                )))
            }
            None => {
                let fitting: Vec<&VerifyKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.check_fits(alg).is_ok())
                    .collect();
                Ok(if fitting.is_empty() {
                    Lookup::NotFound
                } else {
                    Lookup::Candidates(fitting)
                })
            }
        }
    }
}

/// Outcome of asking for a refresh.
pub(crate) enum Refresh {
    /// A fresh set (fetched by us or by a caller we waited for).
    Updated(Arc<KeySet>),
    /// No fetch allowed yet (rate limit); the current set.
    Skipped(Arc<KeySet>),
}

/// The cache.
pub(crate) struct JwksCache {
    url: String,
    http: Arc<Http>,
    clock: Arc<dyn Clock>,
    allowed: Vec<Algorithm>,
    min_refresh: Duration,
    max_age: Duration,
    current: RwLock<Arc<KeySet>>,
    /// Held for the whole fetch: this is what coalesces concurrent refreshes.
    refresh: tokio::sync::Mutex<Attempts>,
}

#[derive(Default)]
struct Attempts {
    last: Option<Instant>,
    last_error: Option<String>,
}

impl JwksCache {
    pub fn new(
        url: String,
        http: Arc<Http>,
        clock: Arc<dyn Clock>,
        allowed: Vec<Algorithm>,
        min_refresh: Duration,
        max_age: Duration,
    ) -> JwksCache {
        JwksCache {
            url,
            http,
            clock,
            allowed,
            min_refresh,
            max_age,
            current: RwLock::new(Arc::new(KeySet::default())),
            refresh: tokio::sync::Mutex::new(Attempts::default()),
        }
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The keys to check a token with: the cached set, fetched first if
    /// there is none yet, refreshed first if it is too old (keeping the old
    /// one if that refresh fails).
    pub async fn keys(&self) -> Result<Arc<KeySet>, AuthError> {
        let set = self.snapshot();
        let Some(loaded_at) = set.loaded_at else {
            return match self.refresh(set.generation, "first use").await? {
                Refresh::Updated(s) => Ok(s),
                Refresh::Skipped(s) if s.loaded_at.is_some() => Ok(s),
                Refresh::Skipped(_) => Err(self.unavailable()),
            };
        };
        if self.clock.now().saturating_duration_since(loaded_at) < self.max_age {
            return Ok(set);
        }
        match self.refresh(set.generation, "key set too old").await {
            Ok(Refresh::Updated(s) | Refresh::Skipped(s)) => Ok(s),
            Err(e) => {
                tracing::warn!(error = %e, "keeping the old JWKS");
                Ok(set)
            }
        }
    }

    /// The current set, without fetching.
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fetch the set again, unless a caller did since we saw generation
    /// `seen` (coalescing), or the last attempt was less than `min_refresh`
    /// ago (rate limit). A failed fetch keeps the old keys.
    pub async fn refresh(&self, seen: u64, reason: &str) -> Result<Refresh, AuthError> {
        let mut attempts = self.refresh.lock().await;
        let set = self.snapshot();
        if set.generation != seen {
            return Ok(Refresh::Updated(set));
        }
        let now = self.clock.now();
        if let Some(last) = attempts.last
            && now.saturating_duration_since(last) < self.min_refresh
        {
            tracing::debug!(url = %self.url, reason, "JWKS refresh skipped (rate limit)");
            return Ok(Refresh::Skipped(set));
        }
        attempts.last = Some(now);
        tracing::debug!(url = %self.url, reason, "fetching the JWKS");
        match self.fetch().await {
            Ok(keys) => {
                attempts.last_error = None;
                let fresh = Arc::new(KeySet {
                    keys,
                    generation: set.generation + 1,
                    loaded_at: Some(self.clock.now()),
                });
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                tracing::info!(url = %self.url, keys = fresh.keys.len(), reason, "JWKS loaded");
                Ok(Refresh::Updated(fresh))
            }
            Err(message) => {
                tracing::warn!(url = %self.url, error = %message, "cannot fetch the JWKS");
                attempts.last_error = Some(message.clone());
                Err(AuthError::Unavailable(message))
            }
        }
    }

    /// Why there are no keys, after a failed or skipped first fetch.
    fn unavailable(&self) -> AuthError {
        let last = self
            .refresh
            .try_lock()
            .ok()
            .and_then(|a| a.last_error.clone())
            .unwrap_or_else(|| format!("the JWKS at {} could not be fetched", self.url));
        AuthError::Unavailable(format!(
            "{last} (next attempt in at most {}s)",
            self.min_refresh.as_secs()
        ))
    }

    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let body = self.http.get_json(&self.url).await.map_err(|e| {
            format!("cannot fetch the issuer's signing keys from {e}; check auth.jwks_url (or the issuer's jwks_uri) and that it is reachable")
        })?;
        let (keys, skipped) =
            parse_jwks(&body, &self.allowed).map_err(|e| format!("{}: {e}", self.url))?;
        for s in &skipped {
            tracing::debug!(url = %self.url, "JWKS key skipped: {s}");
        }
        if keys.is_empty() {
            return Err(format!(
                "{}: the JWKS has no key this server can use (skipped: {}); check auth.algorithms",
                self.url,
                if skipped.is_empty() {
                    "none".to_string()
                } else {
                    skipped.join("; ")
                }
            ));
        }
        Ok(keys)
    }
}

/// The usable keys of a JWK Set document, and why each other key was
/// skipped. One bad key does not spoil the set: keys are parsed one by one.
pub(crate) fn parse_jwks(
    doc: &Value,
    allowed: &[Algorithm],
) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    let Some(list) = doc.get("keys").and_then(Value::as_array) else {
        return Err("not a JWK Set (no \"keys\" array)".to_string());
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in list.iter().take(MAX_KEYS).enumerate() {
        let label = match raw.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("kid {:?}", shown(kid)),
            None => format!("key #{i}"),
        };
        match parse_key(raw, allowed) {
            Ok(k) => keys.push(k),
            Err(why) => skipped.push(format!("{label}: {why}")),
        }
    }
    Ok((keys, skipped))
}

fn parse_key(raw: &Value, allowed: &[Algorithm]) -> Result<VerifyKey, String> {
    let jwk: Jwk =
        serde_json::from_value(raw.clone()).map_err(|e| format!("not a JWK we read ({e})"))?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key (use)".to_string());
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("not a verification key (key_ops)".to_string());
    }
    let alg = match jwk.common.key_algorithm {
        Some(ka) => Some(
            ka.to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("algorithm {ka} is not a signature algorithm"))?,
        ),
        None => None,
    };
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD
                .decode(p.n.trim_end_matches('='))
                .map_err(|_| "the RSA modulus is not base64url".to_string())?;
            let bits = significant_bits(&n);
            if bits < MIN_RSA_BITS {
                return Err(format!("a {bits}-bit RSA key is too weak"));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        // A symmetric key in a public JWKS would let anyone who reads it sign
        // tokens (and enables algorithm confusion): never use one.
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric (oct) key".to_string()),
        _ => return Err("an unknown key type".to_string()),
    };
    if !allowed
        .iter()
        .any(|a| kind.fits(*a) && alg.is_none_or(|pinned| pinned == *a))
    {
        return Err(format!(
            "{} is for no algorithm in auth.algorithms",
            kind.name()
        ));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key ({e})"))?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        kind,
        key,
    })
}

/// Bit length of a big-endian unsigned integer.
fn significant_bits(be: &[u8]) -> usize {
    let Some(pos) = be.iter().position(|b| *b != 0) else {
        return 0;
    };
    (be.len() - pos - 1) * 8 + (8 - be[pos].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALL: [Algorithm; 4] = [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn ec_p256(kid: &str) -> Value {
        // The P-256 generator point: a valid public key.
        json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
            "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU",
        })
    }

    fn rsa(bits: usize) -> Value {
        let mut n = vec![0xC5u8; bits / 8];
        n[bits / 8 - 1] |= 1;
        json!({"kty": "RSA", "kid": format!("rsa{bits}"), "n": b64(&n), "e": "AQAB"})
    }

    #[test]
    fn usable_keys_are_kept_and_others_skipped_with_reasons() {
        let doc = json!({"keys": [
            ec_p256("ec1"),
            rsa(2048),
            rsa(1024),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "rsa-oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird", "kid": "w"},
        ]});
        let (keys, skipped) = parse_jwks(&doc, &ALL).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["ec1", "rsa2048", "ed"]);
        let skipped = skipped.join("\n");
        for needle in [
            "kid \"rsa1024\": a 1024-bit RSA key is too weak",
            "kid \"hmac\": a symmetric (oct) key",
            "kid \"p521\"",
            "kid \"enc\": not a signature key",
            "kid \"rsa-oaep\": algorithm",
            "kid \"w\"",
        ] {
            assert!(skipped.contains(needle), "{needle} in\n{skipped}");
        }
        assert!(parse_jwks(&json!({"nokeys": []}), &ALL).is_err());
    }

    #[test]
    fn keys_for_no_allowed_algorithm_are_skipped() {
        let doc = json!({"keys": [ec_p256("ec1"), rsa(2048)]});
        let (keys, skipped) = parse_jwks(&doc, &[Algorithm::RS256]).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(skipped[0].contains("P-256"), "{skipped:?}");
    }

    #[test]
    fn lookup_by_kid_and_algorithm() {
        let mut pinned = ec_p256("pinned");
        pinned["alg"] = json!("ES256");
        let doc = json!({"keys": [ec_p256("ec1"), rsa(2048), pinned]});
        let (keys, _) = parse_jwks(&doc, &ALL).unwrap();
        let set = KeySet {
            keys,
            generation: 1,
            loaded_at: None,
        };
        assert!(matches!(
            set.lookup(Some("ec1"), Algorithm::ES256),
            Ok(Lookup::Found(k)) if k.kid.as_deref() == Some("ec1")
        ));
        assert!(matches!(
            set.lookup(Some("nope"), Algorithm::ES256),
            Ok(Lookup::NotFound)
        ));
        // The right key id with the wrong kind of key: refused, no refresh.
        let e = set.lookup(Some("ec1"), Algorithm::RS256).err().unwrap();
        assert!(
            matches!(e, AuthError::KeyMismatch(ref m) if m.contains("P-256")),
            "{e}"
        );
        let e = set.lookup(Some("ec1"), Algorithm::ES384).err().unwrap();
        assert!(matches!(e, AuthError::KeyMismatch(_)), "{e}");
        // Without kid: every key that fits.
        assert!(matches!(
            set.lookup(None, Algorithm::ES256),
            Ok(Lookup::Candidates(c)) if c.len() == 2
        ));
        assert!(matches!(
            set.lookup(None, Algorithm::EdDSA),
            Ok(Lookup::NotFound)
        ));
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[1]), 1);
        assert_eq!(significant_bits(&[0, 0x80, 0]), 16);
        assert_eq!(significant_bits(&[0xFF; 256]), 2048);
    }
}
