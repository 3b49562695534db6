//! libFuzzer entry point of the `policy` target: `scripts/fuzz.sh --libfuzzer policy` on stable Rust, or `cargo +nightly fuzz run policy --features libfuzzer` where cargo-fuzz is installed.
#![no_main]
ca_fuzz::libfuzzer_target!("policy");
