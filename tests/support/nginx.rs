//! Debian's nginx as an independent mTLS server for tests: one HTTPS server on a unix socket in a
//! temp dir, requiring client certificates, answering `hello <client subject>`. Stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::s;

/// What the nginx server presents and whom it lets in.
pub struct Site<'a> {
    /// `server_name`, the name clients ask for.
    pub name: &'a str,
    /// Directory holding the server's `chain.pem` and `key.pem`.
    pub server_dir: &'a Path,
    /// PEM file of the CA certificates client certificates must chain to.
    pub client_ca: &'a Path,
    /// `ssl_verify_depth`.
    pub verify_depth: u8,
    /// PEM file of CRLs nginx checks client certificates against, if any.
    pub crl: Option<&'a Path>,
}

/// A running nginx master.
pub struct Nginx {
    prefix: PathBuf,
    conf: PathBuf,
    /// The unix socket it serves HTTPS on.
    pub socket: PathBuf,
    child: Option<std::process::Child>,
}

/// The nginx executable (Debian puts it in /usr/sbin, often not on a test's PATH).
pub fn binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

impl Nginx {
    /// The prefix directory nginx will use under `dir` (a reload hook needs its pid file).
    pub fn prefix(dir: &Path) -> PathBuf {
        dir.join("nginx")
    }

    /// A reload hook (shell) that sends SIGHUP to the nginx master of `prefix`, if it runs.
    pub fn reload_hook(prefix: &Path) -> String {
        let pid = prefix.join("nginx.pid");
        format!(
            "p=$(cat {pid} 2>/dev/null) && grep -q nginx /proc/$p/comm 2>/dev/null && kill -HUP $p; true",
            pid = s(&pid)
        )
    }

    /// Starts nginx under `dir` for `site` and waits until it serves.
    pub fn start(dir: &Path, site: &Site<'_>) -> Nginx {
        let prefix = Nginx::prefix(dir);
        std::fs::create_dir_all(prefix.join("logs")).expect("prefix");
        let socket = prefix.join("tls.sock");
        let conf = prefix.join("nginx.conf");
        let crl = site
            .crl
            .map(|c| format!("ssl_crl {};", s(c)))
            .unwrap_or_default();
        std::fs::write(
            &conf,
            format!(
                r#"daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen unix:{socket} ssl;
        server_name {name};
        ssl_certificate {server}/chain.pem;
        ssl_certificate_key {server}/key.pem;
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        ssl_verify_depth {depth};
        {crl}
        location / {{ return 200 "hello $ssl_client_s_dn\n"; }}
    }}
}}
"#,
                prefix = s(&prefix),
                socket = s(&socket),
                name = site.name,
                server = s(site.server_dir),
                client_ca = s(site.client_ca),
                depth = site.verify_depth,
            ),
        )
        .expect("conf");
        let child = Command::new(binary())
            .args(["-p", s(&prefix), "-c", s(&conf)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (scripts/test.sh installs it)");
        let mut n = Nginx {
            prefix,
            conf,
            socket,
            child: Some(child),
        };
        let start = Instant::now();
        while !(n.socket.exists() && n.prefix.join("nginx.pid").exists()) {
            if start.elapsed() > Duration::from_secs(15) {
                let log = n.log();
                n.stop();
                panic!("nginx did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    /// Its error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }

    /// `nginx -s reload`: new workers read the files (certificates, CRLs) again.
    pub fn reload(&self) {
        let st = Command::new(binary())
            .args(["-p", s(&self.prefix), "-c", s(&self.conf), "-s", "reload"])
            .stderr(Stdio::null())
            .status()
            .expect("nginx -s reload");
        assert!(st.success());
    }

    /// Stops it (`-s stop`, then kill after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new(binary())
                .args(["-p", s(&self.prefix), "-c", s(&self.conf), "-s", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
