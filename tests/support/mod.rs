//! Shared harness for end-to-end tests: runs the real binaries in temp dirs and checks results
//! with independent tools (openssl). Every child process is bounded in time.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Absolute path of the repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example policy shipped in `policies/`.
pub fn example_policy() -> PathBuf {
    repo_root().join("policies/example.toml")
}

/// Result of one command run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless stderr contains `needle`; also checks no panic or backtrace leaked.
    #[track_caller]
    pub fn expect_stderr(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self.expect_clean_error()
    }

    /// Panics if the output shows a panic, a backtrace or a debug dump.
    #[track_caller]
    pub fn expect_clean_error(&self) -> &Run {
        for bad in [
            "panicked",
            "RUST_BACKTRACE",
            "stack backtrace",
            "Error {",
            "Os {",
        ] {
            assert!(
                !self.stderr.contains(bad),
                "stderr shows {bad:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// Runs `cmd` with a deadline, killing it if it overruns.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {limit:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("output: {e}"));
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `openssl` with `args`.
pub fn openssl<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new("openssl");
    c.args(args);
    run_bounded(c, Duration::from_secs(30))
}

/// A CA data directory in a temp dir, driven through the `ca-server` binary.
pub struct TestCa {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub passphrase_file: Option<PathBuf>,
}

impl TestCa {
    /// An uninitialised CA location.
    pub fn new() -> TestCa {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("ca");
        TestCa {
            tmp,
            data,
            passphrase_file: None,
        }
    }

    /// Initialised with the example policy and no passphrase.
    pub fn init_insecure() -> TestCa {
        let ca = TestCa::new();
        ca.server(&[
            "init",
            "--policy",
            example_policy().to_str().expect("utf8"),
            "--insecure-no-passphrase",
        ])
        .expect_code(0);
        ca
    }

    /// Initialised with the example policy and a passphrase file.
    pub fn init_sealed(passphrase: &str) -> TestCa {
        let mut ca = TestCa::new();
        let pf = ca.tmp.path().join("passphrase");
        std::fs::write(&pf, format!("{passphrase}\n")).expect("write passphrase");
        ca.passphrase_file = Some(pf);
        ca.server(&["init", "--policy", example_policy().to_str().expect("utf8")])
            .expect_code(0);
        ca
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `ca-server ARGS --data-dir <data>` (plus the passphrase file when sealed).
    pub fn server(&self, args: &[&str]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ca-server"));
        c.args(args).arg("--data-dir").arg(&self.data);
        if let Some(pf) = &self.passphrase_file {
            c.arg("--passphrase-file").arg(pf);
        }
        for var in [
            "CA_DATA_DIR",
            "CA_POLICY",
            "CA_PASSPHRASE",
            "CA_PASSPHRASE_FILE",
            "CA_PUBLIC_URL",
        ] {
            c.env_remove(var);
        }
        run_bounded(c, Duration::from_secs(60))
    }
}

/// Files in `dir` (empty when it does not exist).
pub fn list_dir(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}
