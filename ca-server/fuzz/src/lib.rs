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

#[cfg(feature = "libfuzzer")]
#[doc(hidden)]
pub use libfuzzer_sys;

/// A libFuzzer entry point running the target called `$name` (feature `libfuzzer`).
#[cfg(feature = "libfuzzer")]
#[macro_export]
macro_rules! libfuzzer_target {
    ($name:literal) => {
        thread_local! {
            static TARGET: std::cell::RefCell<Box<dyn $crate::Target>> =
                std::cell::RefCell::new($crate::make($name).expect("a target of this name"));
        }
        $crate::libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            TARGET.with(|t| {
                t.borrow_mut().run(data);
            });
        });
    };
}
