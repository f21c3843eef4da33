//! OAuth 2.0 resource server: who an HTTP request is from, and what it may do.
//!
//! This module knows OAuth and JWTs but no HTTP server: the transport hands
//! [`Authenticator::authenticate`] the raw `Authorization` header and turns
//! the answer into a response (401 with [`Authenticator::challenge`], 403
//! with [`Authenticator::insufficient_scope`], 503 for
//! [`AuthError::Unavailable`]), and serves
//! [`Authenticator::resource_metadata`] at
//! `/.well-known/oauth-protected-resource` (RFC 9728).
//!
//! - [`config`](AuthConfig): `[auth]` in `dispatch.toml`, validated without
//!   touching the network.
//! - Tokens are checked either as JWTs against the issuer's JWKS (signature
//!   with an allow-listed asymmetric algorithm, `iss`, `aud`, `exp`, `nbf`,
//!   `sub`), with the key set cached and refreshed (rate-limited, coalesced)
//!   when a token names an unknown key; or by RFC 7662 introspection through
//!   the `oauth2` crate, with positive answers cached briefly.
//! - [`Scope`], [`required_scope`] and [`required_scope_for_method`] say
//!   which of the three dispatch scopes a call needs; [`Principal::has`]
//!   says whether the token grants it.
//!
//! Tokens and the introspection client secret never reach logs, errors or
//! `Debug` output.

mod authenticator;
mod config;
mod error;
mod fetch;
mod introspect;
mod jwks;
mod jwt;
mod scope;

pub use authenticator::{AuthTuning, Authenticator, EnvReader, MAX_TOKEN_BYTES};
pub use config::{
    AuthConfig, AuthConfigError, DEFAULT_ALGORITHMS, DEFAULT_LEEWAY_SECS, IntrospectionConfig,
    MAX_LEEWAY_SECS,
};
pub use error::AuthError;
pub use scope::{Principal, Scope, required_scope, required_scope_for_method};
