//! `ca-agent`: enrolls once with a token, then renews over mTLS before expiry with a fresh key
//! every time, publishes files atomically, reloads the service and checks it took the new
//! certificate. Names only a public CA can make trusted are ordered from an ACME CA and handled
//! the same way.
#![forbid(unsafe_code)]

pub mod acme;
pub mod agent;
pub mod config;
pub mod hooks;
pub mod issue;
pub mod metrics;
#[cfg(test)]
mod redaction;
pub mod schedule;
pub mod status;
pub mod validate;
pub mod writer;
