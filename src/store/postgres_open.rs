//! Opening a PostgreSQL store: the URL, the first connection, the schema,
//! and what to tell a user when any of them fails.
//!
//! A URL is never shown with its password: every message names it through
//! [`redact`]. A first connection is made alone, before the pool: a server
//! that cannot be reached then fails at once with its own reason, where the
//! pool would retry a refused connection until its acquire timeout and
//! report only the timeout.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::StoreError;
use super::postgres_sql::reason;

/// How a [`super::PostgresStore`] uses its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections the store opens at most.
    pub max_connections: u32,
    /// How long an operation waits for a free connection, and opening waits
    /// for the server's first answer, before failing.
    pub acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// What a user writes, for the messages that say how to write it.
const URL_FORM: &str = "postgres://USER:PASSWORD@HOST:PORT/DATABASE";

/// The query parameters sqlx understands in a PostgreSQL URL. sqlx logs any
/// other one with its value, which could be a mistyped secret, so those are
/// refused here before sqlx sees them.
const KNOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The schema's migrations, embedded: version, description and SQL, as
/// `sqlx::migrate!("migrations/postgres")` would embed them (that macro needs
/// sqlx's `macros` feature, which the crate leaves off, as for SQLite). A
/// test checks the list against the folder.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "leases",
        include_str!("../../migrations/postgres/0002_leases.sql"),
    ),
];

/// The schema's migrations (checksums as sqlx computes them from the SQL).
fn migrator() -> Migrator {
    super::migrator_of(MIGRATIONS)
}

/// Connects to the database at `url`, brings its schema up to date, and
/// gives the pool the store runs on, and a pool of one connection for the
/// listener (which keeps its connection: it would take one from the first).
pub(super) async fn connect(
    url: &str,
    options: &PostgresOptions,
) -> Result<(PgPool, PgPool), StoreError> {
    let open_err = |message: String| StoreError::Open {
        path: redact(url),
        message,
    };
    let connect = parse(url).map_err(open_err)?;
    let first = first_connection(&connect, options.acquire_timeout)
        .await
        .map_err(open_err)?;
    if let Err(e) = first.close().await {
        // It answered; that is all it was for.
        tracing::debug!("closing the first connection: {}", reason(&e));
    }
    let ear = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.acquire_timeout)
        .connect_lazy_with(connect.clone());
    // No ping before each use: every statement takes a connection, and the
    // ping doubled the round trips. A connection the server dropped fails
    // the one statement that meets it, which the caller reports (and sqlx
    // then closes it).
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(connect);
    migrate(&pool).await.map_err(open_err)?;
    tracing::debug!(url = %redact(url), "database open");
    Ok((pool, ear))
}

/// Whether sqlx knows a URL parameter (`options[NAME]` included).
fn is_known(key: &str) -> bool {
    KNOWN_PARAMETERS.contains(&key) || (key.starts_with("options[") && key.ends_with(']'))
}

/// The connect options a URL stands for, or what is wrong with it.
pub(super) fn parse(url: &str) -> Result<PgConnectOptions, String> {
    if let Some(unknown) = unknown_parameter(url) {
        return Err(format!(
            "unknown parameter `{unknown}` in the URL; the known ones are {}",
            KNOWN_PARAMETERS.join(", ")
        ));
    }
    let options =
        PgConnectOptions::from_str(url).map_err(|e| format!("{}; use {URL_FORM}", reason(&e)))?;
    // Names the store's connections in pg_stat_activity, unless the URL does.
    Ok(match options.get_application_name() {
        Some(_) => options,
        None => options.application_name("dispatch"),
    })
}

/// The first query parameter of `url` that sqlx does not know, if any.
fn unknown_parameter(url: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split('=').next().unwrap_or_default())
        .map(|key| percent_encoding::percent_decode_str(key).decode_utf8_lossy())
        .find(|key| !is_known(key))
        .map(|key| key.chars().take(40).collect())
}

/// The first connection, within `timeout`: a host that drops packets would
/// otherwise hold the open for as long as the system's TCP timeout.
pub(super) async fn first_connection(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, String> {
    let at = server_address(options);
    match tokio::time::timeout(timeout, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(explain_connect_error(&e, &at)),
        Err(_) => Err(format!(
            "no answer from the server at {at} within {} s; check that PostgreSQL is running \
             there, that the host and port are right and that no firewall drops the connection",
            timeout.as_secs()
        )),
    }
}

/// Where the options point: `host:port`, or the socket folder.
fn server_address(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(dir) => format!("{} (port {})", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// A failed first connection, with what to check.
fn explain_connect_error(e: &sqlx::Error, at: &str) -> String {
    let why = reason(e);
    match e {
        // rustls' verdicts on the server's certificate arrive as I/O errors.
        sqlx::Error::Io(_) if why.contains("certificate") => format!(
            "cannot reach PostgreSQL at {at} over TLS: {why}; TLS is verified against the \
             system's root certificates: name the server's CA with sslrootcert=PATH, or check \
             the certificate's host name and sslmode"
        ),
        sqlx::Error::Io(_) => format!(
            "cannot reach PostgreSQL at {at}: {why}; check that the server is running there and \
             that the host and port are right"
        ),
        sqlx::Error::Tls(_) => format!(
            "{why}; TLS is verified against the system's root certificates: check the \
             server's certificate and sslmode (sslrootcert= names another CA)"
        ),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => format!(
                "{why}; check the user name and password (in the URL, PGPASSWORD or ~/.pgpass) \
                 and the server's pg_hba.conf"
            ),
            // invalid_catalog_name
            Some("3D000") => {
                format!("{why}; create the database first (createdb NAME) or name another one")
            }
            // too_many_connections
            Some("53300") => format!(
                "{why}; the server has no connection left: close some or raise its \
                 max_connections"
            ),
            // cannot_connect_now
            Some("57P03") => format!("{why}; the server is starting or stopping: try again"),
            _ => format!("{why}; check the server at {at} and the credentials in the URL"),
        },
        _ => format!(
            "{why}; check that PostgreSQL is running at {at}, that the host and port are right, \
             and the user name and password"
        ),
    }
}

/// Brings the schema up to date, or says why it cannot be.
///
/// On the pool, not on a connection of its own: `Migrator::run` on a
/// `&mut PgConnection` makes every future that awaits it fail the `Send`
/// check ("implementation of `Acquire` is not general enough", sqlx issue
/// 1015). When a migration is refused, sqlx keeps its advisory lock on the
/// pooled connection; the pool is then dropped, and the lock with it.
async fn migrate(pool: &PgPool) -> Result<(), String> {
    migrator().run(pool).await.map_err(|e| match e {
        MigrateError::VersionMissing(version) => format!(
            "the database schema is newer than this dispatch (migration {version}): upgrade \
             dispatch, or point DISPATCH_DATABASE_URL at another database"
        ),
        MigrateError::VersionMismatch(version) => format!(
            "migration {version} in the database differs from this dispatch's: another build of \
             dispatch created it; run that build, or point DISPATCH_DATABASE_URL at another \
             database"
        ),
        MigrateError::Dirty(version) => format!(
            "migration {version} failed partway in an earlier run: restore the database from a \
             backup, or point DISPATCH_DATABASE_URL at another database"
        ),
        other => format!("cannot bring the schema up to date: {other}"),
    })
}

/// `url` as it may be shown: any password in it replaced by `***`
/// (`postgres://user:secret@host` gives `postgres://user:***@host`).
///
/// Errs towards hiding: everything between the first `:` after the scheme
/// and the last `@` goes, even when the password itself holds a `@`, `/`
/// or `?` that was not percent-encoded, and so do the values of query
/// parameters other than the known harmless ones (`sslmode=`, `host=`...).
pub(crate) fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return redact_query(url);
    };
    let (head, rest) = url.split_at(start);
    let userinfo = match (rest.find(':'), rest.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => {
            format!("{head}{}***{}", &rest[..=colon], &rest[at..])
        }
        _ => url.to_string(),
    };
    redact_query(&userinfo)
}

/// Hides the values of query parameters, but for those sqlx knows that
/// hold no secret: a `password=` and a misspelt name alike.
fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key == "password" || !is_known(key) => {
                format!("{key}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}
