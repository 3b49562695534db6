//! A throwaway PostgreSQL cluster for tests: `initdb` into a fresh temporary directory, a server
//! listening on 127.0.0.1 only on a random free port (its Unix socket in the same directory),
//! `fsync` on. The system cluster is never touched. PostgreSQL refuses to run as root, so when the
//! tests run as root every PostgreSQL program is run as `nobody:nogroup` through `setpriv`, and
//! the directory is handed to that user. Every program is waited for with a timeout; the server
//! is stopped (`pg_ctl stop -m immediate`, then SIGKILL of the postmaster if need be) on drop.
//!
//! Self-contained (std and `tempfile` only): included with `#[path = ...] mod postgres;` both by
//! integration tests under `tests/` and by unit tests inside `ca-server/src`.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to become ready (start and restart alike).
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long `initdb` may take.
const INITDB_LIMIT: Duration = Duration::from_secs(60);
/// How long one `psql` invocation may take.
const PSQL_LIMIT: Duration = Duration::from_secs(30);
/// How long `pg_ctl stop` may take.
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// Ports tried when the picked one turns out to be taken by the time the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// Environment variables that would steer libpq or the server away from this cluster.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATA",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGCONNECT_TIMEOUT",
    "PGTZ",
    "PGCLIENTENCODING",
    "PSQLRC",
];

/// A running (or crashed, see [`TempPostgres::stop_immediate`]) throwaway PostgreSQL cluster.
pub struct TempPostgres {
    /// `.../bin` of the PostgreSQL version in use.
    bin: PathBuf,
    /// Running as root: the programs run as `nobody:nogroup`.
    drop_to_nobody: bool,
    /// The data directory (`<dir>/data`).
    data: PathBuf,
    /// The server log (`<dir>/postgres.log`).
    log: PathBuf,
    port: u16,
    running: bool,
    /// Owns everything; removed after the server is stopped (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl TempPostgres {
    /// Creates a cluster in a fresh temporary directory and starts it; returns once it accepts
    /// connections on 127.0.0.1. Panics (naming the problem) when PostgreSQL is not installed or
    /// the server does not come up within 30 s.
    pub fn start() -> TempPostgres {
        let bin = find_bin_dir();
        let drop_to_nobody = effective_uid() == 0;
        let dir = tempfile::Builder::new()
            .prefix("ca-pg-")
            .tempdir_in(std::env::temp_dir())
            .expect("create a temporary directory for the PostgreSQL cluster");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .expect("chmod 0700 the PostgreSQL temporary directory");
        if drop_to_nobody {
            let (uid, gid) = nobody_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL temporary directory to nobody:nogroup");
        }
        let mut pg = TempPostgres {
            bin,
            drop_to_nobody,
            data: dir.path().join("data"),
            log: dir.path().join("postgres.log"),
            port: 0,
            running: false,
            dir,
        };
        pg.initdb();
        pg.start_on_free_port();
        pg
    }

    /// The URL of the `postgres` database, as superuser `postgres` (trust authentication).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `name` on this cluster.
    pub fn url_for(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port,
            percent_encode(name)
        )
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the data directory, the log and the Unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The postmaster's pid from `postmaster.pid`, if the file is there.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Creates database `name` (`CREATE DATABASE`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        self.psql(&self.url(), &sql);
        self.url_for(name)
    }

    /// Runs `sql` with `psql` (unaligned, tuples only, stop on the first error) against a
    /// database given by URL or by name; returns stdout. Panics on failure with psql's stderr.
    pub fn psql(&self, db_url_or_name: &str, sql: &str) -> String {
        let url = if db_url_or_name.contains("://") {
            db_url_or_name.to_string()
        } else {
            self.url_for(db_url_or_name)
        };
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&url)
            .arg("-c")
            .arg(sql);
        let out = run(cmd, "psql", PSQL_LIMIT).unwrap_or_else(|e| panic!("{e}"));
        if !out.status.success() {
            panic!(
                "psql failed ({}) on {url} running {sql:?}:\n{}{}",
                out.status, out.stderr, out.stdout
            );
        }
        out.stdout
    }

    /// A command for PostgreSQL program `prog` (`pg_dump`, `pg_restore`, ...) of the version in
    /// use, run as [`TempPostgres::psql`] is: in [`TempPostgres::dir`], as `nobody:nogroup` when
    /// this process is root, without PG* variables.
    pub fn program(&self, prog: &str) -> Command {
        self.command(prog)
    }

    /// Crashes the server: `pg_ctl stop -m immediate` (no shutdown checkpoint; the next start
    /// runs crash recovery from the WAL).
    pub fn stop_immediate(&mut self) {
        if let Err(e) = self.pg_ctl_stop() {
            panic!("{e}\nserver log tail:\n{}", self.log_tail());
        }
        self.running = false;
    }

    /// Starts the server again on the same port and data directory and waits until it accepts
    /// connections (at most 30 s). Panics if it does not come up, with the log tail.
    pub fn start_again(&mut self) {
        if self.running {
            return;
        }
        if let Err(e) = self.try_start(self.port) {
            panic!(
                "restarting PostgreSQL on port {}: {}\nserver log tail:\n{}",
                self.port,
                e.message(),
                self.log_tail()
            );
        }
    }

    /// A command for PostgreSQL program `prog` of the version in use: run as `nobody:nogroup`
    /// when this process is root, in the temporary directory, without PG* variables.
    fn command(&self, prog: &str) -> Command {
        let path = self.bin.join(prog);
        let mut cmd = if self.drop_to_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                .arg(path);
            c.env("HOME", self.dir.path());
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir(self.dir.path());
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    fn initdb(&self) {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        let out = run(cmd, "initdb", INITDB_LIMIT).unwrap_or_else(|e| panic!("{e}"));
        if !out.status.success() {
            let hint = if self.drop_to_nobody {
                "\n(run as nobody because this process is root: every parent directory of the \
                 temporary directory must be traversable by nobody)"
            } else {
                ""
            };
            panic!(
                "initdb failed ({}):\n{}{}{hint}",
                out.status, out.stderr, out.stdout
            );
        }
        // The port is given on the command line, so that a retry on another port needs no edit.
        let socket_dir = self.dir.path().to_string_lossy().replace('\'', "''");
        let settings = format!(
            "\n# TempPostgres (tests)\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = 100\n\
             fsync = on\n\
             logging_collector = off\n"
        );
        let conf = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf written by initdb");
        text.push_str(&settings);
        fs::write(&conf, text).expect("append the test settings to postgresql.conf");
    }

    /// Starts on a fresh port, trying another one if the picked port was taken meanwhile.
    fn start_on_free_port(&mut self) {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match self.try_start(port) {
                Ok(()) => return,
                Err(StartError::PortTaken(msg)) => last = msg,
                Err(StartError::Other(msg)) => {
                    panic!(
                        "starting PostgreSQL on port {port}: {msg}\nserver log tail:\n{}",
                        self.log_tail()
                    );
                }
            }
        }
        panic!(
            "starting PostgreSQL: every one of {PORT_ATTEMPTS} ports tried was taken; last: {last}\n\
             server log tail:\n{}",
            self.log_tail()
        );
    }

    /// `pg_ctl start` on `port`, then waits for readiness (within [`READY_LIMIT`] overall).
    fn try_start(&mut self, port: u16) -> Result<(), StartError> {
        let started = Instant::now();
        let log_len_before = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t"])
            .arg(READY_LIMIT.as_secs().to_string())
            .arg("-o")
            .arg(format!("-p {port}"));
        let out = run(cmd, "pg_ctl start", READY_LIMIT + Duration::from_secs(5));
        let new_log = || {
            let log = fs::read(&self.log).unwrap_or_default();
            let from = usize::try_from(log_len_before).unwrap_or(0).min(log.len());
            String::from_utf8_lossy(&log[from..]).into_owned()
        };
        let failure = match out {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "pg_ctl start failed ({}):\n{}{}",
                out.status, out.stderr, out.stdout
            )),
            Err(e) => Some(e),
        };
        if let Some(msg) = failure {
            let port_taken = new_log().contains("Address already in use");
            // Whatever state it is in, make sure no half-started server lingers.
            self.port = port;
            self.running = true;
            self.force_stop();
            return Err(if port_taken {
                StartError::PortTaken(msg)
            } else {
                StartError::Other(msg)
            });
        }
        self.port = port;
        self.running = true;
        // pg_ctl -w saw the postmaster report "ready"; confirm over TCP as clients will connect.
        loop {
            let mut cmd = self.command("pg_isready");
            cmd.args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "2",
                "-p",
            ])
            .arg(port.to_string());
            if let Ok(out) = run(cmd, "pg_isready", Duration::from_secs(5))
                && out.status.success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_LIMIT {
                self.force_stop();
                return Err(StartError::Other(format!(
                    "not accepting connections on 127.0.0.1:{port} after {READY_LIMIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pg_ctl stop -m immediate`, waiting for the postmaster to exit.
    fn pg_ctl_stop(&self) -> Result<(), String> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t"])
            .arg(STOP_LIMIT.as_secs().to_string());
        let out = run(cmd, "pg_ctl stop", STOP_LIMIT + Duration::from_secs(5))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl stop -m immediate failed ({}):\n{}{}",
                out.status, out.stderr, out.stdout
            ))
        }
    }

    /// Stops the server without panicking: `pg_ctl stop -m immediate`, then SIGKILL of the
    /// postmaster if it is still alive, and a bounded wait for it to go.
    fn force_stop(&mut self) {
        let pid = self.postmaster_pid();
        let stopped = self.pg_ctl_stop().is_ok();
        if let Some(pid) = pid
            && (!stopped || process_alive(pid))
        {
            let mut kill = Command::new("kill");
            kill.args(["-KILL", &pid.to_string()]);
            let _ = run(kill, "kill", Duration::from_secs(5));
            let deadline = Instant::now() + Duration::from_secs(5);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.running = false;
    }

    /// The last 40 lines of the server log.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Also after stop_immediate: a postmaster left behind by anything is killed.
        let leftover = self.postmaster_pid().is_some_and(process_alive);
        if self.running || leftover {
            self.force_stop();
        }
    }
}

/// Why a start attempt failed.
enum StartError {
    /// The port was taken between picking it and the server binding it: try another.
    PortTaken(String),
    Other(String),
}

impl StartError {
    fn message(&self) -> &str {
        match self {
            StartError::PortTaken(m) | StartError::Other(m) => m,
        }
    }
}

/// Whether process `pid` exists and is not a zombie (Linux `/proc`).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain ") ".
    match stat.rfind(')') {
        Some(i) => !matches!(
            stat[i + 1..].trim_start().chars().next(),
            Some('Z' | 'X') | None
        ),
        None => true,
    }
}

/// The `bin` directory of the highest PostgreSQL version under `/usr/lib/postgresql`.
fn find_bin_dir() -> PathBuf {
    const MISSING: &str = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; \
                           scripts/test.sh installs postgresql";
    let entries = fs::read_dir("/usr/lib/postgresql").unwrap_or_else(|e| panic!("{MISSING} ({e})"));
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = name
            .split('.')
            .map(|p| p.parse::<u32>().ok())
            .collect::<Option<Vec<u32>>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        let complete = ["initdb", "pg_ctl", "postgres", "psql", "pg_isready"]
            .iter()
            .all(|p| bin.join(p).is_file());
        if complete && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    match best {
        Some((_, bin)) => bin,
        None => panic!("{MISSING}"),
    }
}

/// This process's effective uid (the owner of `/proc/self`, else `id -u`).
fn effective_uid() -> u32 {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid();
    }
    let mut id = Command::new("id");
    id.arg("-u");
    let out = run(id, "id -u", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
    out.stdout.trim().parse().unwrap_or_else(|_| {
        panic!(
            "cannot tell the effective uid from `id -u`: {:?}",
            out.stdout
        )
    })
}

/// The uid of user `nobody` and the gid of group `nogroup`, from /etc/passwd and /etc/group.
fn nobody_ids() -> (u32, u32) {
    fn field(file: &str, name: &str, index: usize) -> Option<u32> {
        let text = fs::read_to_string(file).ok()?;
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(index)?.parse().ok())
    }
    let uid = field("/etc/passwd", "nobody", 2).expect(
        "running as root, but there is no user `nobody` in /etc/passwd to run PostgreSQL as",
    );
    let gid = field("/etc/group", "nogroup", 2).expect(
        "running as root, but there is no group `nogroup` in /etc/group to run PostgreSQL as",
    );
    (uid, gid)
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to pick a free port")
}

/// `name` as a double-quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for a URL path segment).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A finished command's status and output.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr to anonymous files, so that a daemon
/// inheriting them cannot make the read block) and waits at most `limit`; kills it on timeout.
fn run(mut cmd: Command, what: &str, limit: Duration) -> Result<Output, String> {
    let mut out_file = tempfile::tempfile().map_err(|e| format!("{what}: stdout file: {e}"))?;
    let mut err_file = tempfile::tempfile().map_err(|e| format!("{what}: stderr file: {e}"))?;
    let out_clone = out_file.try_clone().map_err(|e| format!("{what}: {e}"))?;
    let err_clone = err_file.try_clone().map_err(|e| format!("{what}: {e}"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_clone))
        .stderr(Stdio::from(err_clone));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {limit:?}: {cmd:?}"));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(25));
            }
            Err(e) => return Err(format!("{what}: waiting: {e}")),
        }
    };
    let read = |f: &mut fs::File| {
        let mut buf = Vec::new();
        let _ = f
            .seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut buf));
        String::from_utf8_lossy(&buf).into_owned()
    };
    Ok(Output {
        status,
        stdout: read(&mut out_file),
        stderr: read(&mut err_file),
    })
}
