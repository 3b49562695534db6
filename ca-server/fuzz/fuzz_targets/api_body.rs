//! libFuzzer entry point of the `api_body` target: `scripts/fuzz.sh --libfuzzer api_body` on stable Rust, or `cargo +nightly fuzz run api_body --features libfuzzer` where cargo-fuzz is installed.
#![no_main]
ca_fuzz::libfuzzer_target!("api_body");
