//! libFuzzer entry point of the `ocsp` target: `scripts/fuzz.sh --libfuzzer ocsp` on stable Rust, or `cargo +nightly fuzz run ocsp --features libfuzzer` where cargo-fuzz is installed.
#![no_main]
ca_fuzz::libfuzzer_target!("ocsp");
