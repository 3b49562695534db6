//! `ca-server`: a private certificate authority with per-environment intermediates, a
//! deny-by-default issuance policy, a durable store and an operator CLI.
//!
//! Layers, one direction: `cli` → [`service`] → [`policy`], [`authority`], [`store`].
//! [`policy`] and [`authority`] are pure; only [`store`] speaks SQL.
#![forbid(unsafe_code)]

pub mod acme;
pub mod api;
pub mod authority;
pub mod cli;
pub mod clock;
pub mod csr;
pub mod duration;
pub mod error;
pub mod files;
pub mod ocsp;
pub mod pki;
pub mod policy;
#[cfg(test)]
mod redaction;
pub mod sealed;
pub mod server;
pub mod service;
pub mod store;
