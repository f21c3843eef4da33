//! `dispatch store check` and `dispatch store migrate`: which of this
//! binary's migrations a database has, read without changing it.
//!
//! Opening a store ([`super::open`]) brings its schema up to date, so a
//! server never runs on an old one; `check` is for an operator who wants to
//! know before (several instances on one PostgreSQL, a backup restored).

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection, Row};

use super::{StoreError, postgres_open, scheme};

/// Which kind of database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// What a database holds of this binary's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaReport {
    /// The database kind.
    pub backend: Backend,
    /// Where it is (a PostgreSQL URL with its password replaced by `***`).
    pub location: String,
    /// Whether the database exists yet (a SQLite file is created on first open).
    pub exists: bool,
    /// The migrations it has applied, in order.
    pub applied: Vec<i64>,
    /// The migrations this binary knows, in order.
    pub known: Vec<i64>,
}

/// Where a schema stands against this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every known migration is applied, and no other.
    UpToDate,
    /// These known migrations are not applied yet.
    Behind(Vec<i64>),
    /// The database has migrations this binary does not know: it was made
    /// by a newer dispatch.
    Newer(Vec<i64>),
}

impl SchemaReport {
    /// Where the schema stands.
    pub fn state(&self) -> SchemaState {
        let newer: Vec<i64> = self
            .applied
            .iter()
            .filter(|v| !self.known.contains(v))
            .copied()
            .collect();
        if !newer.is_empty() {
            return SchemaState::Newer(newer);
        }
        let missing: Vec<i64> = self
            .known
            .iter()
            .filter(|v| !self.applied.contains(v))
            .copied()
            .collect();
        match missing.is_empty() {
            true => SchemaState::UpToDate,
            false => SchemaState::Behind(missing),
        }
    }
}

/// What the database at `url` has applied, read without changing anything
/// (a SQLite file that does not exist is not created).
pub async fn check(url: &str, timeout: Duration) -> Result<SchemaReport, StoreError> {
    match scheme(url) {
        Some(s) if super::is_postgres(s) => check_postgres(url, timeout).await,
        None => check_sqlite(url).await,
        Some(other) => Err(super::unsupported_scheme(url, other)),
    }
}

async fn check_postgres(url: &str, timeout: Duration) -> Result<SchemaReport, StoreError> {
    let location = postgres_open::redact(url);
    let open_err = |message: String| StoreError::Open {
        path: location.clone(),
        message,
    };
    let options = postgres_open::parse(url).map_err(open_err)?;
    let mut conn = postgres_open::first_connection(&options, timeout)
        .await
        .map_err(open_err)?;
    let applied = applied_postgres(&mut conn).await.map_err(open_err)?;
    let _ = conn.close().await;
    Ok(SchemaReport {
        backend: Backend::Postgres,
        location,
        exists: true,
        applied,
        known: postgres_open::MIGRATIONS.iter().map(|m| m.0).collect(),
    })
}

async fn check_sqlite(url: &str) -> Result<SchemaReport, StoreError> {
    let open_err = |message: String| StoreError::Open {
        path: url.to_string(),
        message,
    };
    let options = match super::sqlite_url(url) {
        Some(sqlite) => sqlx::sqlite::SqliteConnectOptions::from_str(&sqlite)
            .map_err(|e| open_err(e.to_string()))?,
        None => sqlx::sqlite::SqliteConnectOptions::new().filename(url),
    };
    let known = super::sqlite::MIGRATIONS.iter().map(|m| m.0).collect();
    let path = options.get_filename().to_path_buf();
    if !path.exists() {
        return Ok(SchemaReport {
            backend: Backend::Sqlite,
            location: path.display().to_string(),
            exists: false,
            applied: Vec::new(),
            known,
        });
    }
    let mut conn = sqlx::SqliteConnection::connect_with(&options.read_only(true))
        .await
        .map_err(|e| open_err(e.to_string()))?;
    let applied = applied_sqlite(&mut conn).await.map_err(open_err)?;
    let _ = conn.close().await;
    Ok(SchemaReport {
        backend: Backend::Sqlite,
        location: path.display().to_string(),
        exists: true,
        applied,
        known,
    })
}

/// The versions sqlx recorded as applied; none when it never ran here.
async fn applied_postgres(conn: &mut sqlx::PgConnection) -> Result<Vec<i64>, String> {
    let rows = sqlx::query(APPLIED).fetch_all(conn).await;
    versions(rows.map(|rows| rows.iter().map(|r| r.try_get("version")).collect()))
}

/// The versions sqlx recorded as applied; none when it never ran here.
async fn applied_sqlite(conn: &mut sqlx::SqliteConnection) -> Result<Vec<i64>, String> {
    let rows = sqlx::query(APPLIED).fetch_all(conn).await;
    versions(rows.map(|rows| rows.iter().map(|r| r.try_get("version")).collect()))
}

/// The migrations sqlx has applied, in order.
const APPLIED: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";

fn versions(read: Result<Result<Vec<i64>, sqlx::Error>, sqlx::Error>) -> Result<Vec<i64>, String> {
    match read {
        Ok(Ok(v)) => Ok(v),
        // No table: nothing was ever applied (an empty database).
        Err(sqlx::Error::Database(e)) if is_missing_table(e.message()) => Ok(Vec::new()),
        Ok(Err(e)) | Err(e) => Err(format!("cannot read the applied migrations: {e}")),
    }
}

fn is_missing_table(message: &str) -> bool {
    message.contains("no such table") || message.contains("does not exist")
}
