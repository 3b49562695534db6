//! libFuzzer entry point of the `csr` target: `scripts/fuzz.sh --libfuzzer csr` on stable Rust, or `cargo +nightly fuzz run csr --features libfuzzer` where cargo-fuzz is installed.
#![no_main]
ca_fuzz::libfuzzer_target!("csr");
