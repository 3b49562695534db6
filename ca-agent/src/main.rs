//! `ca-agent`: the host agent that enrolls with the CA and keeps certificates fresh.
#![forbid(unsafe_code)]

use clap::Parser;

/// Host agent for the private CA. Enrollment and renewal arrive with the CA's HTTPS API; this
/// build only reports its version.
#[derive(Debug, Parser)]
#[command(name = "ca-agent", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!(
        "ca-agent {}: no commands yet; run `ca-agent --help`",
        env!("CARGO_PKG_VERSION")
    );
}
