//! A real ACME server for tests: Debian's `pebble`, bound to 127.0.0.1 with a TLS certificate
//! generated here, resolving every name to 127.0.0.1 through `pebble-challtestsrv` (which also
//! takes the dns-01 TXT records). Both are killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::free_port;
use super::{openssl, s};

/// How many sets of ports pebble's first start tries before giving up.
const PORT_ATTEMPTS: usize = 5;

/// How to start pebble.
#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// The port pebble connects to for http-01 (where the agent's responder or a web server listens).
    pub http_port: u16,
    /// Lifetime of issued certificates, seconds.
    pub validity_secs: u64,
    /// External Account Binding keys (kid, base64url HMAC key); required when present.
    pub eab: Option<(String, String)>,
}

/// A running pebble and its DNS.
pub struct Pebble {
    dir: PathBuf,
    opts: PebbleOptions,
    pebble: Option<Child>,
    challtest: ChallTestSrv,
    /// ACME port.
    pub port: u16,
    /// Management port (roots).
    pub mgmt_port: u16,
    /// PEM of the TLS root pebble's HTTPS certificate chains to.
    pub tls_root: PathBuf,
}

impl Pebble {
    /// Starts challtestsrv and pebble in `dir` and waits until the directory answers.
    pub fn start(dir: &Path, opts: PebbleOptions) -> Pebble {
        std::fs::create_dir_all(dir).expect("pebble dir");
        // A root and a server certificate for 127.0.0.1 (a self-signed CA certificate cannot
        // serve as an end entity for rustls).
        let tls_root = dir.join("tls-root.pem");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (ca_key, key, csr, ext) = (
            dir.join("tls-root-key.pem"),
            dir.join("tls-key.pem"),
            dir.join("tls.csr"),
            dir.join("tls.ext"),
        );
        args.extend(["-keyout", s(&ca_key), "-out", s(&tls_root)]);
        args.extend(["-subj", "/CN=pebble test root", "-days", "2"]);
        openssl(&args).expect_code(0);
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend([
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&args).expect_code(0);
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        openssl([
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&tls_root),
            "-CAkey",
            s(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            s(&ext),
            "-out",
            s(&dir.join("tls-cert.pem")),
        ])
        .expect_code(0);
        let mut p = Pebble {
            dir: dir.to_path_buf(),
            opts,
            pebble: None,
            challtest: ChallTestSrv::start(dir),
            port: free_port(),
            mgmt_port: free_port(),
            tls_root,
        };
        p.start_pebble_on_free_ports();
        p
    }

    /// Starts pebble on its current ports; `Err(log)` when it exited before answering.
    fn start_pebble(&mut self) -> Result<(), String> {
        let mut cfg = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", self.port),
            "managementListenAddress": format!("127.0.0.1:{}", self.mgmt_port),
            "certificate": s(&self.dir.join("tls-cert.pem")),
            "privateKey": s(&self.dir.join("tls-key.pem")),
            "httpPort": self.opts.http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.opts.eab.is_some(),
            "certificateValidityPeriod": self.opts.validity_secs,
        });
        if let Some((kid, key)) = &self.opts.eab {
            cfg["externalAccountMACKeys"] = serde_json::json!({ kid.as_str(): key.as_str() });
        }
        let path = self.dir.join("pebble.json");
        std::fs::write(&path, serde_json::json!({ "pebble": cfg }).to_string())
            .expect("pebble config");
        let n = std::fs::read_dir(&self.dir).map(|r| r.count()).unwrap_or(0);
        let log = std::fs::File::create(self.dir.join(format!("pebble-{n}.log"))).expect("log");
        self.pebble = Some(
            Command::new("pebble")
                .args([
                    "-config",
                    s(&path),
                    "-dnsserver",
                    &format!("127.0.0.1:{}", self.challtest.dns_port),
                ])
                .current_dir(&self.dir)
                // No artificial validation delays, every order validated for real, and no
                // randomly refused nonces (a source of flakes, not of coverage).
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_AUTHZREUSE", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start pebble (scripts/test.sh installs it)"),
        );
        let start = Instant::now();
        while super::curl(&["--cacert", s(&self.tls_root), &self.directory()]).status != 200 {
            let exited = self
                .pebble
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                return Err(self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pebble did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Starts pebble on fresh ports, picking others when one was taken between the pick and
    /// pebble's bind (pebble cannot bind port 0 and report it).
    fn start_pebble_on_free_ports(&mut self) {
        for _ in 0..PORT_ATTEMPTS {
            match self.start_pebble() {
                Ok(()) => return,
                Err(log) if log.contains("address already in use") => {
                    self.port = free_port();
                    self.mgmt_port = free_port();
                }
                Err(log) => panic!("pebble exited at start: {log}"),
            }
        }
        panic!(
            "pebble did not start: every one of {PORT_ATTEMPTS} port sets was taken: {}",
            self.log()
        );
    }

    /// Stops pebble (it forgets every account and makes a new root) and starts it again.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The same ports: clients hold the directory URL. They were freed just now.
        if let Err(log) = self.start_pebble() {
            panic!("pebble exited at restart: {log}");
        }
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Where pebble serves its current issuing root.
    pub fn roots_url(&self) -> String {
        format!("https://127.0.0.1:{}/roots/0", self.mgmt_port)
    }

    /// Downloads the current issuing root to `path`.
    pub fn save_root(&self, path: &Path) {
        let code = super::curl_download(&["--cacert", s(&self.tls_root), &self.roots_url()], path);
        assert_eq!(code, 200, "pebble root");
    }

    /// challtestsrv's management URL (set-txt, clear-txt).
    pub fn dns_management(&self) -> String {
        self.challtest.management()
    }

    /// Everything pebble logged.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pebble-") && name.ends_with(".log") {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Debian's `pebble-challtestsrv` as a DNS server on 127.0.0.1: every A query answers
/// 127.0.0.1, TXT records are set through its management API. Killed on drop.
pub struct ChallTestSrv {
    child: Child,
    /// UDP/TCP port of its DNS server.
    pub dns_port: u16,
    /// Port of its management API.
    pub mgmt_port: u16,
}

impl ChallTestSrv {
    /// Starts it with its log in `dir` and waits until the management API accepts connections.
    pub fn start(dir: &Path) -> ChallTestSrv {
        let (dns_port, mgmt_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("challtestsrv.log")).expect("log");
        let child = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{mgmt_port}"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start pebble-challtestsrv (scripts/test.sh installs it)");
        let srv = ChallTestSrv {
            child,
            dns_port,
            mgmt_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", mgmt_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble-challtestsrv did not start: {}",
                std::fs::read_to_string(dir.join("challtestsrv.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        srv
    }

    /// The management URL (set-txt, clear-txt).
    pub fn management(&self) -> String {
        format!("http://127.0.0.1:{}", self.mgmt_port)
    }
}

impl Drop for ChallTestSrv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
