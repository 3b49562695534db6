//! Fuzz targets for the CA's parsers of untrusted input and its pure decisions, and a small
//! mutation engine that runs them on stable Rust without extra tools.
//!
//! Each [`Target`] turns bytes into calls of the code under test, asserts the properties that
//! must hold for every input (a panic is a finding), and names the outcome it reached. The engine
//! keeps an input when it reaches an outcome not seen before, so the corpus grows with the
//! behaviours reached rather than with coverage (stable Rust offers no coverage feedback without
//! external tools). Inputs that pass signature checks are made reachable by format-aware
//! targets: the CSR target signs a fuzzed request body with a key generated at run time.
#![forbid(unsafe_code)]

pub mod der;
pub mod engine;
pub mod mutate;
pub mod rng;
pub mod targets;

pub use targets::{NAMES, Target, make};
