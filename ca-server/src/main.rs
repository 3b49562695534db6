//! `ca-server` binary: the operator CLI (and, later, the HTTPS server).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ca_server::cli::main()
}
