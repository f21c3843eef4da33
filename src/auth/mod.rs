//! TEMPORARY interface stub: replaced by the real OAuth2 resource-server module.
#![allow(missing_docs, dead_code, clippy::unused_async)]

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
}

#[derive(Debug, thiserror::Error)]
#[error("auth config: {0}")]
pub struct AuthConfigError(String);

#[derive(Clone, Debug)]
pub struct Principal {
    pub subject: String,
    pub scopes: BTreeSet<String>,
}
impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Read,
    Run,
    Write,
}
impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Run, Scope::Write];
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "dispatch:read",
            Scope::Run => "dispatch:run",
            Scope::Write => "dispatch:write",
        }
    }
}
pub fn required_scope(_tool: &str) -> Scope {
    Scope::Read
}
pub fn required_scope_for_method(_method: &str) -> Option<Scope> {
    None
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone, Debug)]
pub struct Authenticator {
    config: AuthConfig,
}
impl Authenticator {
    pub async fn new(config: AuthConfig) -> Result<Authenticator, AuthConfigError> {
        Ok(Authenticator { config })
    }
    pub async fn authenticate(&self, _authorization: Option<&str>) -> Result<Principal, AuthError> {
        Err(AuthError::Missing)
    }
    pub fn resource_metadata(&self) -> serde_json::Value {
        serde_json::json!({"resource": self.config.audience})
    }
    pub fn challenge(&self, metadata_url: &str, _error: Option<&AuthError>) -> String {
        format!("Bearer resource_metadata=\"{metadata_url}\"")
    }
    pub fn insufficient_scope(&self, metadata_url: &str, needed: Scope) -> String {
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{metadata_url}\"",
            needed.as_str()
        )
    }
}
