//! `dispatch::auth::Authenticator` against the test authorization server
//! (`tests/common/auth_server.rs`): every kind of token, discovery, key
//! rotation with a rate-limited refresh, introspection, and secrets kept out
//! of error texts. Time-dependent behaviour (rate limit, cache lifetimes)
//! runs on a `ManualClock`: no test sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::auth_server::{
    ALL_SCOPES, AUDIENCE, AuthServer, CLIENT_ID, CLIENT_SECRET, KeyKind, Kid, TokenSpec,
};
use dispatch::auth::{
    AuthConfig, AuthConfigError, AuthError, AuthTuning, Authenticator, IntrospectionConfig,
    Principal, Scope,
};
use dispatch::provider::ManualClock;
use serde_json::json;

const META: &str = "https://dispatch.test/.well-known/oauth-protected-resource";
const SECRET_ENV: &str = "DISPATCH_TEST_INTROSPECTION_SECRET";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Tuning with a manual clock and the introspection secret `secret`
/// (read through the tuning, so no test touches the process environment).
fn tuning(clock: &Arc<ManualClock>, secret: Option<&'static str>) -> AuthTuning {
    AuthTuning {
        clock: clock.clone(),
        read_env: Arc::new(move |name| {
            (name == SECRET_ENV)
                .then(|| secret.map(str::to_string))
                .flatten()
        }),
        ..AuthTuning::default()
    }
}

fn jwt_config(server: &AuthServer) -> AuthConfig {
    let mut c = AuthConfig::new(server.issuer(), AUDIENCE);
    c.jwks_url = Some(server.jwks_url());
    c
}

async fn jwt_auth(server: &AuthServer) -> (Authenticator, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let a = Authenticator::with_tuning(jwt_config(server), tuning(&clock, None))
        .await
        .expect("authenticator");
    (a, clock)
}

fn introspection_config(server: &AuthServer) -> AuthConfig {
    let mut c = AuthConfig::new(server.issuer(), AUDIENCE);
    c.introspection = Some(IntrospectionConfig {
        url: server.introspection_url(),
        client_id: CLIENT_ID.to_string(),
        client_secret_env: SECRET_ENV.to_string(),
    });
    c
}

async fn introspection_auth(
    server: &AuthServer,
    secret: &'static str,
) -> (Authenticator, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let a = Authenticator::with_tuning(introspection_config(server), tuning(&clock, Some(secret)))
        .await
        .expect("authenticator");
    (a, clock)
}

/// Authenticate `token`, expecting a refusal; checks that neither the error
/// (Display or Debug) nor the 401 challenge carries the token.
async fn refused(a: &Authenticator, token: &str) -> AuthError {
    let e = a
        .authenticate(Some(&bearer(token)))
        .await
        .expect_err("token should be refused");
    assert_token_absent(token, &e.to_string());
    assert_token_absent(token, &format!("{e:?}"));
    assert_token_absent(token, &a.challenge(META, Some(&e)));
    e
}

/// Neither the token nor any 12-character piece of it is in `text`.
fn assert_token_absent(token: &str, text: &str) {
    assert!(!text.contains(token), "token leaked into: {text}");
    for piece in token.as_bytes().windows(12) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(
            !text.contains(piece),
            "token piece {piece:?} leaked into: {text}"
        );
    }
}

async fn accepted(a: &Authenticator, token: &str) -> Principal {
    a.authenticate(Some(&bearer(token)))
        .await
        .unwrap_or_else(|e| panic!("token should be accepted: {e}"))
}

#[tokio::test]
async fn valid_token_gives_subject_scopes_and_client() {
    let server = AuthServer::start().await;
    let (a, _) = jwt_auth(&server).await;
    assert_eq!(server.jwks_fetches(), 0, "the JWKS is fetched lazily");
    let p = accepted(
        &a,
        &server.valid("alice", &["dispatch:read", "dispatch:run"]),
    )
    .await;
    assert_eq!(p.subject, "alice");
    assert_eq!(
        p.scopes,
        ["dispatch:read", "dispatch:run"].map(String::from).into()
    );
    assert_eq!(p.client_id.as_deref(), Some(CLIENT_ID));
    assert!(p.has(Scope::Read) && p.has(Scope::Run) && !p.has(Scope::Write));
    // A second token: the cached key set serves it.
    accepted(&a, &server.valid("bob", &ALL_SCOPES)).await;
    assert_eq!(server.jwks_fetches(), 1);
}

#[tokio::test]
async fn every_key_type_and_algorithm_is_accepted() {
    let server = AuthServer::start().await;
    let (a, _) = jwt_auth(&server).await;
    for kind in [
        KeyKind::Es256,
        KeyKind::Rs256,
        KeyKind::Ps256,
        KeyKind::EdDsa,
    ] {
        let mut spec = TokenSpec::new("carol", &["dispatch:read"]);
        spec.kind = kind;
        let p = accepted(&a, &server.token(spec)).await;
        assert_eq!(p.subject, "carol", "{kind:?}");
    }
}

#[tokio::test]
async fn scp_arrays_audience_arrays_and_missing_kid() {
    let server = AuthServer::start().await;
    let (a, _) = jwt_auth(&server).await;

    let mut spec = TokenSpec::new("dave", &[]);
    spec.scope = None;
    spec.scp = Some(vec!["dispatch:write".into(), "openid".into()]);
    let p = accepted(&a, &server.token(spec)).await;
    assert!(p.has(Scope::Write) && !p.has(Scope::Read));
    assert!(p.scopes.contains("openid"));

    let mut spec = TokenSpec::new("dave", &["dispatch:read"]);
    spec.aud = Some(json!(["https://other.test", AUDIENCE]));
    accepted(&a, &server.token(spec)).await;

    let mut spec = TokenSpec::new("dave", &["dispatch:read"]);
    spec.aud = Some(json!(["https://other.test", "https://third.test"]));
    assert_eq!(
        refused(&a, &server.token(spec)).await,
        AuthError::WrongAudience
    );

    // No kid: the signature picks the key.
    for kind in [KeyKind::Es256, KeyKind::Rs256] {
        let mut spec = TokenSpec::new("dave", &["dispatch:read"]);
        spec.kind = kind;
        spec.kid = Kid::Absent;
        accepted(&a, &server.token(spec)).await;
    }
    let mut spec = TokenSpec::new("dave", &["dispatch:read"]);
    spec.kid = Kid::Absent;
    spec.rogue = true;
    assert_eq!(
        refused(&a, &server.token(spec)).await,
        AuthError::BadSignature
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_right_reason() {
    let server = AuthServer::start().await;
    let (a, _) = jwt_auth(&server).await;

    assert_eq!(refused(&a, &server.expired()).await, AuthError::Expired);
    assert_eq!(
        refused(&a, &server.not_yet_valid()).await,
        AuthError::NotYetValid
    );
    assert_eq!(
        refused(&a, &server.wrong_audience()).await,
        AuthError::WrongAudience
    );
    assert_eq!(
        refused(&a, &server.wrong_issuer()).await,
        AuthError::WrongIssuer
    );
    assert_eq!(
        refused(&a, &server.badly_signed()).await,
        AuthError::BadSignature
    );
    assert_eq!(
        refused(&a, &server.alg_none()).await,
        AuthError::AlgorithmNotAllowed("none".into())
    );
    assert_eq!(
        refused(&a, &server.hs256_with_public_key()).await,
        AuthError::AlgorithmNotAllowed("HS256".into())
    );

    let mut spec = TokenSpec::new("x", &ALL_SCOPES);
    spec.sub = None;
    assert_eq!(
        refused(&a, &server.token(spec)).await,
        AuthError::MissingClaim("sub".into())
    );
    let mut spec = TokenSpec::new("", &ALL_SCOPES);
    spec.sub = Some(String::new());
    assert_eq!(
        refused(&a, &server.token(spec)).await,
        AuthError::MissingClaim("sub".into())
    );
    let mut spec = TokenSpec::new("x", &ALL_SCOPES);
    spec.exp_in = None;
    assert_eq!(
        refused(&a, &server.token(spec)).await,
        AuthError::MissingClaim("exp".into())
    );
    let mut spec = TokenSpec::new("x", &ALL_SCOPES);
    spec.aud = None;
    assert_eq!(
        refused(&a, &server.token(spec)).await,
        AuthError::MissingClaim("aud".into())
    );

    // A key id the issuer never published (a refresh is not allowed yet: the
    // set was fetched a moment ago).
    let mut spec = TokenSpec::new("x", &ALL_SCOPES);
    spec.kid = Kid::Named("no-such-key".into());
    let e = refused(&a, &server.token(spec)).await;
    assert!(
        matches!(&e, AuthError::UnknownKey(m) if m.contains("no-such-key")),
        "{e}"
    );
    // The EC key's id on an RS256 token: the key cannot check it.
    let mut spec = TokenSpec::new("x", &ALL_SCOPES);
    spec.kind = KeyKind::Rs256;
    spec.kid = Kid::Named(server.current_kid());
    assert!(matches!(
        refused(&a, &server.token(spec)).await,
        AuthError::KeyMismatch(_)
    ));

    // Garbage of the right characters.
    assert!(matches!(
        refused(&a, "not-a-jwt").await,
        AuthError::Malformed(_)
    ));
    // No kid and a signature no published key made.
    assert_eq!(
        refused(&a, "eyJhbGciOiJFUzI1NiJ9.e30.c2ln").await,
        AuthError::BadSignature
    );

    // Every refusal is a 401 with invalid_token in the challenge.
    let e = refused(&a, &server.expired()).await;
    assert_eq!(e.http_status(), 401);
    let ch = a.challenge(META, Some(&e));
    assert!(
        ch.starts_with(&format!("Bearer resource_metadata=\"{META}\""))
            && ch.contains("error=\"invalid_token\", error_description=\"the token has expired\""),
        "{ch}"
    );
}

#[tokio::test]
async fn under_scoped_tokens_authenticate_but_lack_the_scope() {
    let server = AuthServer::start().await;
    let (a, _) = jwt_auth(&server).await;
    let p = accepted(&a, &server.under_scoped("erin", &["dispatch:read"])).await;
    assert!(p.has(Scope::Read));
    assert!(!p.has(dispatch::auth::required_scope("agent_run")));
    assert_eq!(
        a.insufficient_scope(META, Scope::Run),
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"dispatch:run\", resource_metadata=\"{META}\", \
             error_description=\"this request needs the dispatch:run scope\""
        )
    );
}

#[tokio::test]
async fn the_header_must_carry_one_bearer_token() {
    let server = AuthServer::start().await;
    let (a, _) = jwt_auth(&server).await;
    assert_eq!(a.authenticate(None).await, Err(AuthError::Missing));
    let token = server.valid("alice", &ALL_SCOPES);
    for header in [
        format!("Basic {token}"),
        format!("Bearer {token} {token}"),
        format!("Bearer {token},x"),
        "Bearer".to_string(),
    ] {
        let e = a.authenticate(Some(&header)).await.unwrap_err();
        assert!(matches!(e, AuthError::BadHeader(_)), "{header}: {e}");
        assert_token_absent(&token, &e.to_string());
    }
    accepted(&a, &token).await;
    assert!(
        a.authenticate(Some(&format!("bearer  {token}")))
            .await
            .is_ok(),
        "the scheme is case-insensitive"
    );
}

#[tokio::test]
async fn the_algorithm_allow_list_and_leeway_come_from_config() {
    let server = AuthServer::start().await;
    let mut c = jwt_config(&server);
    c.algorithms = vec!["ES256".into()];
    c.leeway_secs = 0;
    let a = Authenticator::new(c).await.unwrap();
    let mut spec = TokenSpec::new("x", &ALL_SCOPES);
    spec.kind = KeyKind::Rs256;
    assert_eq!(
        refused(&a, &server.token(spec)).await,
        AuthError::AlgorithmNotAllowed("RS256".into())
    );
    let mut just_expired = TokenSpec::new("x", &ALL_SCOPES);
    just_expired.exp_in = Some(-10);
    let just_expired = server.token(just_expired);
    assert_eq!(refused(&a, &just_expired).await, AuthError::Expired);

    // The default leeway (30 s) absorbs ten seconds of skew.
    let (lenient, _) = jwt_auth(&server).await;
    accepted(&lenient, &just_expired).await;
}

#[tokio::test]
async fn jwks_is_discovered_from_rfc8414_metadata() {
    let server = AuthServer::start().await;
    let c = AuthConfig::new(server.issuer(), AUDIENCE);
    let a = Authenticator::new(c).await.expect("discovery");
    assert_eq!(a.jwks_url(), Some(server.jwks_url().as_str()));
    assert_eq!(server.metadata_fetches(), 1);
    accepted(&a, &server.valid("alice", &ALL_SCOPES)).await;
}

#[tokio::test]
async fn discovery_falls_back_to_openid_configuration() {
    let server = AuthServer::start().await;
    server.set_metadata(false, true);
    let a = Authenticator::new(AuthConfig::new(server.issuer(), AUDIENCE))
        .await
        .expect("discovery");
    assert_eq!(a.jwks_url(), Some(server.jwks_url().as_str()));
    assert_eq!(server.metadata_fetches(), 2);
    accepted(&a, &server.valid("alice", &ALL_SCOPES)).await;
}

#[tokio::test]
async fn discovery_failures_say_what_to_fix() {
    let server = AuthServer::start().await;
    server.set_metadata(false, false);
    let e = Authenticator::new(AuthConfig::new(server.issuer(), AUDIENCE))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, AuthConfigError::Discovery { .. }), "{msg}");
    assert!(
        msg.contains("/.well-known/oauth-authorization-server")
            && msg.contains("/.well-known/openid-configuration")
            && msg.contains("404")
            && msg.contains("set auth.jwks_url"),
        "{msg}"
    );

    server.set_metadata(true, true);
    server.set_metadata_issuer(Some("https://someone-else.test"));
    let msg = Authenticator::new(AuthConfig::new(server.issuer(), AUDIENCE))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("someone-else.test") && msg.contains("set auth.issuer"),
        "{msg}"
    );

    // Nothing listening: the error names the URL.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let msg = Authenticator::new(AuthConfig::new(dead.clone(), AUDIENCE))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&dead) && msg.contains("cannot connect"),
        "{msg}"
    );
}

#[tokio::test]
async fn key_rotation_refreshes_once_per_interval() {
    let server = AuthServer::start().await;
    let (a, clock) = jwt_auth(&server).await;
    let before = server.valid("alice", &ALL_SCOPES);
    accepted(&a, &before).await;
    assert_eq!(server.jwks_fetches(), 1);

    // Rotated right after our fetch: the new key id is unknown, and the rate
    // limit (30 s) forbids fetching again yet.
    let new_kid = server.rotate();
    let after = server.valid("alice", &ALL_SCOPES);
    assert!(matches!(refused(&a, &after).await, AuthError::UnknownKey(m) if m.contains(&new_kid)));
    assert_eq!(server.jwks_fetches(), 1);

    // Past the interval, a flood of tokens with the new key id costs one
    // fetch, and every one of them is accepted (the waiters use the fetch
    // they waited for).
    clock.advance(Duration::from_secs(31));
    let tokens: Vec<String> = (0..24)
        .map(|i| server.valid(&format!("u{i}"), &ALL_SCOPES))
        .collect();
    let results = futures_util::future::join_all(tokens.iter().map(|t| {
        let a = a.clone();
        let h = bearer(t);
        tokio::spawn(async move { a.authenticate(Some(&h)).await })
    }))
    .await;
    for r in results {
        r.expect("task").expect("new key accepted");
    }
    assert_eq!(server.jwks_fetches(), 2);

    // The old key is gone from the set.
    assert!(matches!(
        refused(&a, &before).await,
        AuthError::UnknownKey(_)
    ));
    // A flood of made-up key ids within the interval fetches nothing.
    let mut bogus = TokenSpec::new("mallory", &ALL_SCOPES);
    bogus.kid = Kid::Named("made-up".into());
    let bogus = server.token(bogus);
    let results = futures_util::future::join_all((0..50).map(|_| {
        let a = a.clone();
        let h = bearer(&bogus);
        tokio::spawn(async move { a.authenticate(Some(&h)).await })
    }))
    .await;
    for r in results {
        assert!(matches!(r.expect("task"), Err(AuthError::UnknownKey(_))));
    }
    assert_eq!(server.jwks_fetches(), 2);

    // The next interval allows one more.
    clock.advance(Duration::from_secs(31));
    for _ in 0..5 {
        refused(&a, &bogus).await;
    }
    assert_eq!(server.jwks_fetches(), 3);
}

#[tokio::test]
async fn keys_kept_published_stay_valid_after_a_refresh() {
    let server = AuthServer::start().await;
    let (a, clock) = jwt_auth(&server).await;
    let before = server.valid("alice", &ALL_SCOPES);
    accepted(&a, &before).await;
    server.rotate_keeping_old();
    clock.advance(Duration::from_secs(31));
    accepted(&a, &server.valid("alice", &ALL_SCOPES)).await;
    assert_eq!(server.jwks_fetches(), 2);
    accepted(&a, &before).await;
}

#[tokio::test]
async fn an_unreachable_jwks_is_unavailable_not_invalid() {
    let server = AuthServer::start().await;
    server.set_jwks_status(Some(503));
    let (a, clock) = jwt_auth(&server).await;
    let token = server.valid("alice", &ALL_SCOPES);
    let e = refused(&a, &token).await;
    assert_eq!(e.http_status(), 503);
    let msg = e.to_string();
    assert!(
        matches!(e, AuthError::Unavailable(_))
            && msg.contains(&server.jwks_url())
            && msg.contains("503")
            && msg.contains("auth.jwks_url"),
        "{msg}"
    );
    // No error code in the challenge: the token is not at fault.
    assert!(!a.challenge(META, Some(&e)).contains("error="));
    assert_eq!(server.jwks_fetches(), 1);

    // Back up, but a failed attempt also counts for the rate limit.
    server.set_jwks_status(None);
    assert!(matches!(
        refused(&a, &token).await,
        AuthError::Unavailable(_)
    ));
    assert_eq!(server.jwks_fetches(), 1);
    clock.advance(Duration::from_secs(31));
    accepted(&a, &token).await;
    assert_eq!(server.jwks_fetches(), 2);
}

#[tokio::test]
async fn oversized_and_silent_endpoints_are_cut_off() {
    let server = AuthServer::start().await;
    let clock = Arc::new(ManualClock::new());
    let small = AuthTuning {
        max_response_bytes: 64,
        ..tuning(&clock, None)
    };
    let a = Authenticator::with_tuning(jwt_config(&server), small)
        .await
        .unwrap();
    let msg = refused(&a, &server.valid("alice", &ALL_SCOPES))
        .await
        .to_string();
    assert!(
        msg.contains("larger than 64 bytes") && msg.contains(&server.jwks_url()),
        "{msg}"
    );

    // A server that accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = jwt_config(&server);
    c.jwks_url = Some(format!("http://{}/jwks", silent.local_addr().unwrap()));
    let quick = AuthTuning {
        request_timeout: Duration::from_millis(300),
        ..tuning(&clock, None)
    };
    let a = Authenticator::with_tuning(c, quick).await.unwrap();
    let e = refused(&a, &server.valid("alice", &ALL_SCOPES)).await;
    let msg = e.to_string();
    assert_eq!(e.http_status(), 503);
    assert!(msg.contains("timed out") || msg.contains("within"), "{msg}");
    drop(silent);
}

#[tokio::test]
async fn an_old_key_set_is_refetched_and_kept_if_the_refetch_fails() {
    let server = AuthServer::start().await;
    let (a, clock) = jwt_auth(&server).await;
    let token = server.valid("alice", &ALL_SCOPES);
    accepted(&a, &token).await;
    clock.advance(Duration::from_secs(11 * 60));
    accepted(&a, &token).await;
    assert_eq!(server.jwks_fetches(), 2, "an old set is fetched again");
    server.set_jwks_status(Some(500));
    clock.advance(Duration::from_secs(11 * 60));
    accepted(&a, &token).await;
    assert_eq!(server.jwks_fetches(), 3, "tried, failed, kept the old keys");
}

#[tokio::test]
async fn introspection_accepts_active_tokens_and_caches_them() {
    let server = AuthServer::start().await;
    let (a, clock) = introspection_auth(&server, CLIENT_SECRET).await;
    assert_eq!(a.jwks_url(), None);
    let token = server.opaque("frank", &["dispatch:run", "dispatch:read"]);
    let p = accepted(&a, &token).await;
    assert_eq!(p.subject, "frank");
    assert!(p.has(Scope::Run) && p.has(Scope::Read) && !p.has(Scope::Write));
    assert_eq!(p.client_id.as_deref(), Some(CLIENT_ID));
    assert_eq!(server.introspections(), 1);
    accepted(&a, &token).await;
    assert_eq!(server.introspections(), 1, "the answer is cached");
    clock.advance(Duration::from_secs(31));
    accepted(&a, &token).await;
    assert_eq!(server.introspections(), 2, "the cache entry expired");

    // JWTs work through introspection too.
    let jwt = server.valid("gina", &["dispatch:write"]);
    assert!(accepted(&a, &jwt).await.has(Scope::Write));
}

#[tokio::test]
async fn introspection_refusals() {
    let server = AuthServer::start().await;
    let (a, _) = introspection_auth(&server, CLIENT_SECRET).await;

    assert_eq!(
        refused(&a, "unknown-opaque-token-1234567890").await,
        AuthError::Inactive
    );
    let revoked = server.opaque("frank", &ALL_SCOPES);
    server.revoke(&revoked);
    assert_eq!(refused(&a, &revoked).await, AuthError::Inactive);
    assert_eq!(refused(&a, &server.expired()).await, AuthError::Inactive);
    assert_eq!(
        refused(&a, &server.wrong_audience()).await,
        AuthError::WrongAudience
    );
    assert_eq!(
        refused(&a, &server.wrong_issuer()).await,
        AuthError::WrongIssuer
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let by_username = server.opaque_with(json!({
        "username": "hank", "scope": "dispatch:read", "aud": AUDIENCE, "exp": now + 600,
    }));
    assert_eq!(accepted(&a, &by_username).await.subject, "hank");
    let nobody = server.opaque_with(json!({"scope": "dispatch:read", "exp": now + 600}));
    assert_eq!(
        refused(&a, &nobody).await,
        AuthError::MissingClaim("sub".into())
    );
}

#[tokio::test]
async fn introspection_with_a_wrong_secret_is_a_clear_configuration_error() {
    let server = AuthServer::start().await;
    let (a, _) = introspection_auth(&server, "wrong-secret-value-42").await;
    let token = server.opaque("frank", &ALL_SCOPES);
    let e = refused(&a, &token).await;
    let msg = e.to_string();
    assert_eq!(e.http_status(), 503);
    assert!(
        msg.contains("client credentials")
            && msg.contains(SECRET_ENV)
            && msg.contains("auth.introspection.client_id")
            && msg.contains("401")
            && msg.contains("invalid_client"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-secret-value-42"), "{msg}");
    assert!(!format!("{a:?}").contains("wrong-secret-value-42"));
}

#[tokio::test]
async fn introspection_errors_never_echo_the_token() {
    let server = AuthServer::start().await;
    let (a, _) = introspection_auth(&server, CLIENT_SECRET).await;
    server.set_introspection_status(Some(500));
    server.set_echo_token_in_errors(true);
    let token = server.opaque("frank", &ALL_SCOPES);
    let e = refused(&a, &token).await;
    let msg = e.to_string();
    assert!(
        matches!(e, AuthError::Unavailable(_))
            && msg.contains(&server.introspection_url())
            && msg.contains("500"),
        "{msg}"
    );
    // And the same for a JWT (long enough to be cut rather than scrubbed).
    let jwt = server.valid("frank", &ALL_SCOPES);
    refused(&a, &jwt).await;
}

#[tokio::test]
async fn a_missing_secret_variable_fails_startup() {
    let server = AuthServer::start().await;
    let clock = Arc::new(ManualClock::new());
    let e = Authenticator::with_tuning(introspection_config(&server), tuning(&clock, None))
        .await
        .unwrap_err();
    assert!(matches!(e, AuthConfigError::MissingSecret { .. }));
    assert!(e.to_string().contains(SECRET_ENV), "{e}");
}

#[tokio::test]
async fn the_test_server_token_endpoint_issues_usable_tokens() {
    let server = AuthServer::start().await;
    let (a, _) = jwt_auth(&server).await;
    let resp = reqwest::Client::new()
        .post(server.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=dispatch%3Aread")
        .send()
        .await
        .expect("token request");
    assert!(resp.status().is_success());
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let token = body["access_token"].as_str().expect("access_token");
    let p = accepted(&a, token).await;
    assert_eq!(p.subject, CLIENT_ID);
    assert!(p.has(Scope::Read) && !p.has(Scope::Run));
}
