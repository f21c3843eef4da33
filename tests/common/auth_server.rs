//! A test OAuth 2.0 authorization server for integration tests.
//!
//! [`AuthServer::start`] serves, on `127.0.0.1` and a free port:
//! - `GET /.well-known/oauth-authorization-server` (RFC 8414) and
//!   `GET /.well-known/openid-configuration`: issuer, `jwks_uri`,
//!   `introspection_endpoint`, `token_endpoint`, `scopes_supported`;
//! - `GET /jwks`: the published public keys (an ES256 P-256 key that
//!   [`AuthServer::rotate`] replaces, a fixed RSA key for RS256/PS256, an
//!   Ed25519 key), counted by [`AuthServer::jwks_fetches`];
//! - `POST /introspect` (RFC 7662, HTTP Basic with [`CLIENT_ID`] /
//!   [`CLIENT_SECRET`]): `active: true` with the claims of a token this server
//!   issued and that is neither expired, premature nor revoked, else
//!   `active: false`; counted by [`AuthServer::introspections`];
//! - `POST /token`: the client-credentials grant (Basic auth), for tests that
//!   need a client to obtain a token by itself.
//!
//! Tokens come from [`AuthServer::token`] with a [`TokenSpec`], or from the
//! shortcuts (`valid`, `expired`, `badly_signed`, `alg_none`, ...). Faults
//! (an endpoint answering 503, metadata turned off or naming another issuer,
//! an introspection error that echoes the token) are switched on with the
//! `set_*` methods. No waiting is needed: every change is in place when the
//! call returns.
//!
//! Keys are made fresh at start (EC and Ed25519 from random scalars) except
//! the RSA key, a fixed test-only key read from `auth_server_rsa_key.pem`,
//! because generating RSA keys is slow.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

/// The client id the introspection and token endpoints accept.
pub const CLIENT_ID: &str = "dispatch-test-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "test-client-secret-5f1c9a";
/// The audience tokens carry unless a spec says otherwise.
pub const AUDIENCE: &str = "https://dispatch.test/mcp";
/// The three dispatch scopes.
pub const ALL_SCOPES: [&str; 3] = ["dispatch:read", "dispatch:run", "dispatch:write"];

const RSA_PEM: &str = include_str!("auth_server_rsa_key.pem");

/// Which key (and algorithm) signs a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ES256 with the current P-256 key (the one `rotate` replaces).
    Es256,
    /// RS256 with the RSA key.
    Rs256,
    /// PS256 with the RSA key.
    Ps256,
    /// EdDSA with the Ed25519 key.
    EdDsa,
}

/// Which `kid` the header carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kid {
    /// The signing key's own id.
    Own,
    /// No `kid` at all.
    Absent,
    /// This id, whatever the key.
    Named(String),
}

/// Everything about a token to issue. [`TokenSpec::new`] gives a valid one.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// `sub` (absent when `None`).
    pub sub: Option<String>,
    /// `scope`, space-separated (absent when `None`).
    pub scope: Option<String>,
    /// `scp`, an array (absent when `None`).
    pub scp: Option<Vec<String>>,
    /// `aud` (absent when `None`; a string or an array).
    pub aud: Option<Value>,
    /// `iss` (absent when `None`); the server's issuer by default.
    pub iss: Option<String>,
    /// `exp` as seconds from now (absent when `None`).
    pub exp_in: Option<i64>,
    /// `nbf` as seconds from now (absent when `None`).
    pub nbf_in: Option<i64>,
    /// Signing key and algorithm.
    pub kind: KeyKind,
    /// The header's `kid`.
    pub kid: Kid,
    /// Sign with a key that is *not* published (the header still says what `kid` says).
    pub rogue: bool,
    /// More claims.
    pub extra: Map<String, Value>,
}

impl TokenSpec {
    /// A valid ES256 token for `sub` with `scopes`, expiring in an hour.
    pub fn new(sub: &str, scopes: &[&str]) -> TokenSpec {
        TokenSpec {
            sub: Some(sub.to_string()),
            scope: Some(scopes.join(" ")),
            scp: None,
            aud: Some(Value::String(AUDIENCE.to_string())),
            iss: None,
            exp_in: Some(3600),
            nbf_in: None,
            kind: KeyKind::Es256,
            kid: Kid::Own,
            rogue: false,
            extra: Map::new(),
        }
    }
}

/// One signing key and its public JWK.
struct Key {
    kid: String,
    enc: EncodingKey,
    jwk: Value,
}

struct Inner {
    issuer: String,
    ec: Key,
    /// Previous EC keys still published (`rotate_keeping_old`).
    ec_old: Vec<Key>,
    ec_serial: u32,
    rsa: Key,
    ed: Key,
    /// Never published: signs `badly_signed` tokens.
    rogue: Key,
    /// Every token issued, with its claims (for introspection).
    issued: HashMap<String, Value>,
    revoked: HashSet<String>,
    jwks_status: Option<u16>,
    introspection_status: Option<u16>,
    echo_token_in_errors: bool,
    serve_rfc8414: bool,
    serve_oidc: bool,
    metadata_issuer: Option<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    jwks_fetches: AtomicUsize,
    metadata_fetches: AtomicUsize,
    introspections: AtomicUsize,
}

/// The running server; stops when dropped.
pub struct AuthServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl AuthServer {
    /// Start on 127.0.0.1 and a free port.
    pub async fn start() -> AuthServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("auth server: cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("auth server: no local address");
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                issuer: format!("http://{addr}"),
                ec: ec_key("ec-1"),
                ec_old: Vec::new(),
                ec_serial: 1,
                rsa: rsa_key("rsa-1"),
                ed: ed_key("ed-1"),
                rogue: ec_key("ec-1"),
                issued: HashMap::new(),
                revoked: HashSet::new(),
                jwks_status: None,
                introspection_status: None,
                echo_token_in_errors: false,
                serve_rfc8414: true,
                serve_oidc: true,
                metadata_issuer: None,
            }),
            jwks_fetches: AtomicUsize::new(0),
            metadata_fetches: AtomicUsize::new(0),
            introspections: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(|State(s): State<Arc<Shared>>| async move { metadata(&s, true) }),
            )
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<Arc<Shared>>| async move { metadata(&s, false) }),
            )
            .route("/jwks", get(jwks))
            .route("/introspect", post(introspect))
            .route("/token", post(token_endpoint))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AuthServer {
            addr,
            shared,
            server,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    /// `http://127.0.0.1:<port>`: the issuer identifier (no trailing `/`).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The JWKS endpoint.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    /// The introspection endpoint.
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.issuer())
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// The audience tokens carry by default.
    pub fn audience(&self) -> &'static str {
        AUDIENCE
    }

    /// The client id for introspection.
    pub fn client_id(&self) -> &'static str {
        CLIENT_ID
    }

    /// The client secret for introspection.
    pub fn client_secret(&self) -> &'static str {
        CLIENT_SECRET
    }

    /// How many times `/jwks` was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many metadata documents were fetched (either kind).
    pub fn metadata_fetches(&self) -> usize {
        self.shared.metadata_fetches.load(Ordering::SeqCst)
    }

    /// How many introspection requests arrived (authenticated or not).
    pub fn introspections(&self) -> usize {
        self.shared.introspections.load(Ordering::SeqCst)
    }

    /// The current EC key's id.
    pub fn current_kid(&self) -> String {
        self.inner().ec.kid.clone()
    }

    /// Replace the EC signing key with a new one (new `kid`); the old one is
    /// no longer published. Returns the new `kid`.
    pub fn rotate(&self) -> String {
        self.rotate_inner(false)
    }

    /// Like [`AuthServer::rotate`], but the old key stays published.
    pub fn rotate_keeping_old(&self) -> String {
        self.rotate_inner(true)
    }

    fn rotate_inner(&self, keep_old: bool) -> String {
        let mut g = self.inner();
        g.ec_serial += 1;
        let kid = format!("ec-{}", g.ec_serial);
        let old = std::mem::replace(&mut g.ec, ec_key(&kid));
        if keep_old {
            g.ec_old.push(old);
        }
        kid
    }

    /// Make `/jwks` answer with `status` (None: serve normally).
    pub fn set_jwks_status(&self, status: Option<u16>) {
        self.inner().jwks_status = status;
    }

    /// Make `/introspect` answer with `status` (None: serve normally).
    pub fn set_introspection_status(&self, status: Option<u16>) {
        self.inner().introspection_status = status;
    }

    /// Make introspection errors quote the token back (as some servers do).
    pub fn set_echo_token_in_errors(&self, on: bool) {
        self.inner().echo_token_in_errors = on;
    }

    /// Serve (or 404) the RFC 8414 and OpenID Connect metadata documents.
    pub fn set_metadata(&self, rfc8414: bool, oidc: bool) {
        let mut g = self.inner();
        g.serve_rfc8414 = rfc8414;
        g.serve_oidc = oidc;
    }

    /// Make the metadata name another issuer (None: the real one).
    pub fn set_metadata_issuer(&self, issuer: Option<&str>) {
        self.inner().metadata_issuer = issuer.map(str::to_string);
    }

    /// Revoke a token: introspection says `active: false` from now on.
    pub fn revoke(&self, token: &str) {
        self.inner().revoked.insert(token.to_string());
    }

    /// Issue a token as `spec` says.
    pub fn token(&self, spec: TokenSpec) -> String {
        issue(&self.shared, spec)
    }

    /// A valid ES256 token for `sub` with `scopes`.
    pub fn valid(&self, sub: &str, scopes: &[&str]) -> String {
        self.token(TokenSpec::new(sub, scopes))
    }

    /// A valid token with fewer scopes than a call needs (the same as
    /// [`AuthServer::valid`]; named for readability).
    pub fn under_scoped(&self, sub: &str, scopes: &[&str]) -> String {
        self.valid(sub, scopes)
    }

    /// A token that expired an hour ago.
    pub fn expired(&self) -> String {
        let mut s = TokenSpec::new("alice", &ALL_SCOPES);
        s.exp_in = Some(-3600);
        self.token(s)
    }

    /// A token valid only from an hour from now.
    pub fn not_yet_valid(&self) -> String {
        let mut s = TokenSpec::new("alice", &ALL_SCOPES);
        s.nbf_in = Some(3600);
        s.exp_in = Some(7200);
        self.token(s)
    }

    /// A token for another resource.
    pub fn wrong_audience(&self) -> String {
        let mut s = TokenSpec::new("alice", &ALL_SCOPES);
        s.aud = Some(json!("https://other.test/api"));
        self.token(s)
    }

    /// A token that names another issuer.
    pub fn wrong_issuer(&self) -> String {
        let mut s = TokenSpec::new("alice", &ALL_SCOPES);
        s.iss = Some("https://evil.test".to_string());
        self.token(s)
    }

    /// A token signed by an unpublished key, with the `kid` of the published one.
    pub fn badly_signed(&self) -> String {
        let mut s = TokenSpec::new("alice", &ALL_SCOPES);
        s.rogue = true;
        self.token(s)
    }

    /// An unsigned token: header `alg: none`, empty signature.
    pub fn alg_none(&self) -> String {
        let g = self.inner();
        let spec = TokenSpec::new("alice", &ALL_SCOPES);
        let header = json!({"alg": "none", "typ": "JWT", "kid": g.ec.kid});
        let claims = claims_of(&spec, &g.issuer);
        format!("{}.{}.", b64(&header), b64(&claims))
    }

    /// Algorithm confusion: HS256 with the published EC key's JWK as the
    /// HMAC secret, and that key's `kid`.
    pub fn hs256_with_public_key(&self) -> String {
        let g = self.inner();
        let spec = TokenSpec::new("alice", &ALL_SCOPES);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(g.ec.kid.clone());
        let secret = g.ec.jwk.to_string();
        jsonwebtoken::encode(
            &header,
            &claims_of(&spec, &g.issuer),
            &EncodingKey::from_secret(secret.as_bytes()).expect("auth server: HMAC key"),
        )
        .expect("auth server: sign HS256")
    }

    /// An opaque (non-JWT) token known to introspection, valid for an hour.
    pub fn opaque(&self, sub: &str, scopes: &[&str]) -> String {
        let issuer = self.issuer();
        self.opaque_with(claims_of(&TokenSpec::new(sub, scopes), &issuer))
    }

    /// An opaque token whose introspection answer carries exactly `claims`
    /// (plus `active: true` when it is not expired).
    pub fn opaque_with(&self, claims: Value) -> String {
        let mut g = self.inner();
        let token = format!("opaque-{}", hex(&rand::random::<[u8; 24]>()));
        g.issued.insert(token.clone(), claims);
        token
    }
}

/// Sign a token as `spec` says and remember it for introspection.
fn issue(shared: &Shared, spec: TokenSpec) -> String {
    let mut g = shared.inner.lock().unwrap();
    let claims = claims_of(&spec, &g.issuer);
    let key = match (spec.rogue, spec.kind) {
        (true, _) => &g.rogue,
        (false, KeyKind::Es256) => &g.ec,
        (false, KeyKind::Rs256 | KeyKind::Ps256) => &g.rsa,
        (false, KeyKind::EdDsa) => &g.ed,
    };
    let alg = match spec.kind {
        KeyKind::Es256 => Algorithm::ES256,
        KeyKind::Rs256 => Algorithm::RS256,
        KeyKind::Ps256 => Algorithm::PS256,
        KeyKind::EdDsa => Algorithm::EdDSA,
    };
    let mut header = Header::new(alg);
    header.kid = match &spec.kid {
        // A rogue token claims the published EC key's id.
        Kid::Own if spec.rogue => Some(g.ec.kid.clone()),
        Kid::Own => Some(key.kid.clone()),
        Kid::Absent => None,
        Kid::Named(k) => Some(k.clone()),
    };
    let token = jsonwebtoken::encode(&header, &claims, &key.enc).expect("auth server: sign");
    g.issued.insert(token.clone(), claims);
    token
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn claims_of(spec: &TokenSpec, issuer: &str) -> Value {
    let now = now();
    let mut c = Map::new();
    c.insert(
        "iss".into(),
        json!(spec.iss.clone().unwrap_or_else(|| issuer.to_string())),
    );
    if let Some(sub) = &spec.sub {
        c.insert("sub".into(), json!(sub));
    }
    if let Some(aud) = &spec.aud {
        c.insert("aud".into(), aud.clone());
    }
    if let Some(exp) = spec.exp_in {
        c.insert("exp".into(), json!(now + exp));
    }
    if let Some(nbf) = spec.nbf_in {
        c.insert("nbf".into(), json!(now + nbf));
    }
    c.insert("iat".into(), json!(now));
    if let Some(scope) = &spec.scope {
        c.insert("scope".into(), json!(scope));
    }
    if let Some(scp) = &spec.scp {
        c.insert("scp".into(), json!(scp));
    }
    c.insert("client_id".into(), json!(CLIENT_ID));
    c.insert("jti".into(), json!(hex(&rand::random::<[u8; 8]>())));
    for (k, v) in &spec.extra {
        c.insert(k.clone(), v.clone());
    }
    Value::Object(c)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A P-256 key from a random scalar, as PKCS#8 DER (what jsonwebtoken reads).
fn ec_key(kid: &str) -> Key {
    let mut scalar: [u8; 32] = rand::random();
    // Below the group order (which starts 0xFFFFFFFF) and non-zero.
    scalar[0] &= 0x7F;
    scalar[31] |= 1;
    let mut der = vec![
        0x30, 0x41, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02,
        0x01, 0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x04, 0x27, 0x30, 0x25,
        0x02, 0x01, 0x01, 0x04, 0x20,
    ];
    der.extend_from_slice(&scalar);
    let enc = EncodingKey::from_ec_der(&der);
    make_key(kid, enc, Algorithm::ES256, true)
}

/// An Ed25519 key from a random seed, as PKCS#8 DER.
fn ed_key(kid: &str) -> Key {
    let seed: [u8; 32] = rand::random();
    let mut der = vec![
        0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    make_key(kid, EncodingKey::from_ed_der(&der), Algorithm::EdDSA, true)
}

/// The fixed test RSA key (PKCS#1). Its JWK pins no `alg`, so it serves
/// both RS256 and PS256.
fn rsa_key(kid: &str) -> Key {
    // The lines between the PEM armour (the file starts with a note).
    let b64: String = RSA_PEM
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = STANDARD
        .decode(b64)
        .expect("auth server: RSA test key is base64");
    make_key(
        kid,
        EncodingKey::from_rsa_der(&der),
        Algorithm::RS256,
        false,
    )
}

fn make_key(kid: &str, enc: EncodingKey, alg: Algorithm, pin_alg: bool) -> Key {
    let mut jwk = Jwk::from_encoding_key(&enc, alg).expect("auth server: public JWK");
    jwk.common.key_id = Some(kid.to_string());
    if !pin_alg {
        jwk.common.key_algorithm = None;
    }
    let mut jwk = serde_json::to_value(&jwk).expect("auth server: JWK to JSON");
    jwk["use"] = json!("sig");
    Key {
        kid: kid.to_string(),
        enc,
        jwk,
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn metadata(s: &Shared, rfc8414: bool) -> Response {
    s.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    let g = s.inner.lock().unwrap();
    if (rfc8414 && !g.serve_rfc8414) || (!rfc8414 && !g.serve_oidc) {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
    }
    let base = g.issuer.clone();
    json_response(
        StatusCode::OK,
        json!({
            "issuer": g.metadata_issuer.clone().unwrap_or_else(|| base.clone()),
            "jwks_uri": format!("{base}/jwks"),
            "introspection_endpoint": format!("{base}/introspect"),
            "token_endpoint": format!("{base}/token"),
            "scopes_supported": ALL_SCOPES,
            "response_types_supported": ["code"],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        }),
    )
}

async fn jwks(State(s): State<Arc<Shared>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let g = s.inner.lock().unwrap();
    if let Some(status) = g.jwks_status {
        return json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({"error": "temporarily_unavailable"}),
        );
    }
    let mut keys = vec![g.ec.jwk.clone(), g.rsa.jwk.clone(), g.ed.jwk.clone()];
    keys.extend(g.ec_old.iter().map(|k| k.jwk.clone()));
    json_response(StatusCode::OK, json!({ "keys": keys }))
}

/// `application/x-www-form-urlencoded` into pairs.
fn form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Whether the request carries our client credentials (RFC 6749 2.3.1:
/// each part form-urlencoded, then HTTP Basic).
fn client_authenticated(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(raw) = STANDARD.decode(b64.trim()) else {
        return false;
    };
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let Some((id, secret)) = raw.split_once(':') else {
        return false;
    };
    let pairs = form(format!("id={id}&secret={secret}").as_bytes());
    pairs.get("id").map(String::as_str) == Some(CLIENT_ID)
        && pairs.get("secret").map(String::as_str) == Some(CLIENT_SECRET)
}

fn invalid_client() -> Response {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "invalid_client", "error_description": "client authentication failed"}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"test\""),
    );
    r
}

async fn introspect(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.introspections.fetch_add(1, Ordering::SeqCst);
    let params = form(&body);
    let token = params.get("token").cloned().unwrap_or_default();
    let g = s.inner.lock().unwrap();
    if let Some(status) = g.introspection_status {
        let description = if g.echo_token_in_errors {
            format!("cannot introspect {token}")
        } else {
            "unavailable".to_string()
        };
        return json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({"error": "server_error", "error_description": description}),
        );
    }
    if !client_authenticated(&headers) {
        return invalid_client();
    }
    let inactive = || json_response(StatusCode::OK, json!({"active": false}));
    if g.revoked.contains(&token) {
        return inactive();
    }
    let Some(claims) = g.issued.get(&token) else {
        return inactive();
    };
    let now = now();
    if claims["exp"].as_i64().is_some_and(|e| e < now)
        || claims["nbf"].as_i64().is_some_and(|n| n > now)
    {
        return inactive();
    }
    let mut answer = claims.as_object().cloned().unwrap_or_default();
    // Introspection carries scopes as one space-separated string.
    if let Some(scp) = answer.remove("scp").and_then(|v| v.as_array().cloned()) {
        let mut scopes: Vec<String> = scp
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect();
        if let Some(s) = answer.get("scope").and_then(Value::as_str) {
            scopes.push(s.to_string());
        }
        answer.insert("scope".into(), json!(scopes.join(" ")));
    }
    answer.insert("active".into(), json!(true));
    answer.insert("token_type".into(), json!("Bearer"));
    json_response(StatusCode::OK, Value::Object(answer))
}

async fn token_endpoint(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if !client_authenticated(&headers) {
        return invalid_client();
    }
    let params = form(&body);
    if params.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type"}),
        );
    }
    let scope = params
        .get("scope")
        .cloned()
        .unwrap_or_else(|| ALL_SCOPES.join(" "));
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let token = issue(&s, TokenSpec::new(CLIENT_ID, &scopes));
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": scope}),
    )
}
