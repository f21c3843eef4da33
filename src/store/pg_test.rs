//! A PostgreSQL server for the store's tests, and a fresh database on it for
//! each test, so that tests run in parallel without seeing each other.
//!
//! With `DISPATCH_TEST_POSTGRES_URL` set, that server is used (its user must
//! be allowed to create databases). Otherwise the first test that asks starts
//! a throwaway cluster for the whole test process: `initdb` and `pg_ctl`
//! found on PATH or under `/usr/lib/postgresql/*/bin`, the data in a new
//! temporary folder, listening on 127.0.0.1 on a free port with its socket
//! in that folder, trust authentication, fsync off. PostgreSQL refuses to
//! run as root, so as root it runs as the `postgres` user (`runuser`).
//! `pg_ctl start -w` waits until it takes connections.
//!
//! A watchdog stops it: a shell started before the server, in a process
//! group of its own (a Ctrl-C to the test run does not reach it), that reads
//! a pipe whose write end only this process holds. The kernel closes that
//! end when the process ends, however it ends (returning from `main`, a
//! panic that aborts, SIGKILL), and the watchdog then runs `pg_ctl stop -m
//! immediate` and removes the folder. No cluster outlives its test run.
//!
//! When there is no server to be had, [`server`] says why; the tests print
//! that and pass, or fail with `DISPATCH_REQUIRE_POSTGRES=1` (see `tests.rs`).
//!
//! This file avoids `unwrap` and `eprintln!` as library code must: the tidy
//! test reads it as such (only `tests.rs` files are exempt).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use sqlx::{Connection, Executor, PgConnection};

/// The server to test against instead of starting one.
pub(super) const URL_ENV: &str = "DISPATCH_TEST_POSTGRES_URL";

/// Set to `1` to make a missing server fail the PostgreSQL tests.
pub(super) const REQUIRE_ENV: &str = "DISPATCH_REQUIRE_POSTGRES";

/// A server the tests may create databases on.
#[derive(Debug)]
pub(super) struct Server {
    /// A URL to its maintenance database, as a user that may create databases.
    admin_url: String,
    /// The write end of the watchdog's pipe, for a cluster started here:
    /// held until the process ends.
    _watchdog: Option<ChildStdin>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// The server for this test process, started on first use unless
/// [`URL_ENV`] names one; or why there is none. Blocks while it starts.
pub(super) fn server() -> Result<&'static Server, String> {
    SERVER
        .get_or_init(|| match std::env::var(URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Ok(Server {
                admin_url: url,
                _watchdog: None,
            }),
            _ => start_cluster(),
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The test server's databases for the test `test`; `None` (after saying
/// so on stderr) when there is no server and [`REQUIRE_ENV`] is not `1`,
/// a panic when it is.
pub(super) fn databases_or_skip(test: &str) -> Option<Databases> {
    use std::io::Write;
    match server() {
        Ok(server) => Some(Databases::new(server)),
        Err(why) if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_ENV}=1, but there is no PostgreSQL: {why}")
        }
        Err(why) => {
            // Straight to the file, not through eprintln!, which the test
            // harness captures and shows only for failed tests.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no PostgreSQL (set {URL_ENV} or install initdb): {test}: {why}"
            );
            None
        }
    }
}

/// The databases one test made on a server, dropped together at its end.
#[derive(Debug, Clone)]
pub(super) struct Databases {
    server: &'static Server,
    made: Arc<Mutex<Vec<String>>>,
}

impl Databases {
    pub(super) fn new(server: &'static Server) -> Databases {
        Databases {
            server,
            made: Arc::default(),
        }
    }

    /// A new, empty database: its URL.
    pub(super) async fn fresh(&self) -> Result<String, String> {
        let name = format!("t_{:016x}", rand::random::<u64>());
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .map_err(|e| format!("cannot create database {name}: {e}"))?;
        let _ = admin.close().await;
        if let Ok(mut made) = self.made.lock() {
            made.push(name.clone());
        }
        Ok(with_database(&self.server.admin_url, &name))
    }

    /// Drops every database [`Databases::fresh`] made, ending their sessions.
    pub(super) async fn drop_all(&self) -> Result<(), String> {
        let names = match self.made.lock() {
            Ok(mut made) => std::mem::take(&mut *made),
            Err(_) => return Ok(()),
        };
        if names.is_empty() {
            return Ok(());
        }
        let mut admin = self.admin().await?;
        for name in names {
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .map_err(|e| format!("cannot drop database {name}: {e}"))?;
        }
        let _ = admin.close().await;
        Ok(())
    }

    /// A URL to a database that does not exist on the server.
    pub(super) fn missing(&self) -> String {
        with_database(&self.server.admin_url, "no_such_database_here")
    }

    async fn admin(&self) -> Result<PgConnection, String> {
        PgConnection::connect(&self.server.admin_url)
            .await
            .map_err(|e| {
                format!(
                    "cannot connect to the test server ({URL_ENV} or the one started here): {e}"
                )
            })
    }
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let start = base.find("://").map_or(0, |i| i + 3);
    let path = base[start..].find('/').map_or(base.len(), |i| start + i);
    let mut out = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The programs a cluster needs.
struct Programs {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

/// `initdb` and `pg_ctl` from one folder: the first on PATH that has both,
/// else the newest `/usr/lib/postgresql/N/bin` (Debian keeps them there).
fn find_programs() -> Result<Programs, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    let debian = versions.into_iter().rev().map(|(_, dir)| dir);
    on_path
        .into_iter()
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .map(|dir| Programs {
            initdb: dir.join("initdb"),
            pg_ctl: dir.join("pg_ctl"),
        })
        .ok_or_else(|| "no initdb and pg_ctl on PATH or under /usr/lib/postgresql".to_string())
}

/// Who runs the cluster's programs: this process's user, or as root the
/// `postgres` user (uid, gid), whom they are run as through `runuser`.
fn cluster_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| format!("cannot run id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                "running as root, and there is no `postgres` user to run PostgreSQL as".to_string()
            })
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// A command for one of the cluster's programs, as the cluster's user.
fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    match user {
        Some(_) => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs a command to its end; its output when it fails.
fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Starts the throwaway cluster (see the module's documentation).
fn start_cluster() -> Result<Server, String> {
    let programs = find_programs()?;
    let user = cluster_user()?;
    let dir = tempfile::Builder::new()
        .prefix("dispatch-pg-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary folder: {e}"))?
        // The watchdog removes it; a TempDir would be gone with this function.
        .keep();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to postgres: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let watchdog = spawn_watchdog(&programs.pg_ctl, &data, &dir, user)?;

    let mut initdb = command(&programs.initdb, user);
    initdb
        .current_dir(&dir)
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
        .arg("--no-sync");
    run(initdb, "initdb")?;

    let port = start_server(&programs.pg_ctl, &data, &dir, user)?;
    Ok(Server {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        _watchdog: Some(watchdog),
    })
}

/// Starts the server on a free port (another tried if one was taken in the
/// meantime), waiting until it takes connections; the port.
fn start_server(
    pg_ctl: &Path,
    data: &Path,
    dir: &Path,
    user: Option<(u32, u32)>,
) -> Result<u16, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='{}' \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300",
            dir.display()
        );
        let log = dir.join("server.log");
        let mut start = command(pg_ctl, user);
        start
            .current_dir(dir)
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        match run(start, "pg_ctl start") {
            Ok(()) => return Ok(port),
            Err(e) => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                last = format!("{e}; server log: {}", tail.trim());
            }
        }
    }
    Err(last)
}

/// What the watchdog runs: `$1` is the folder, the rest the stop command.
const WATCHDOG: &str =
    r#"dir=$1; shift; cat >/dev/null; "$@" >/dev/null 2>&1; cd /; rm -rf "$dir""#;

/// Starts the watchdog (see the module's documentation); the write end of
/// its pipe.
fn spawn_watchdog(
    pg_ctl: &Path,
    data: &Path,
    dir: &Path,
    user: Option<(u32, u32)>,
) -> Result<ChildStdin, String> {
    use std::os::unix::process::CommandExt;
    let mut stop: Vec<OsString> = Vec::new();
    if user.is_some() {
        stop.extend(["runuser", "-u", "postgres", "--"].map(OsString::from));
    }
    stop.push(pg_ctl.into());
    stop.extend(["-D".into(), data.into()]);
    stop.extend(["stop", "-m", "immediate"].map(OsString::from));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("dispatch-pg-watchdog")
        .arg(dir)
        .args(stop)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the watchdog shell: {e}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| "the watchdog has no stdin".to_string())
}
