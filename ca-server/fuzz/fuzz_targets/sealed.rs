//! libFuzzer entry point of the `sealed` target: `scripts/fuzz.sh --libfuzzer sealed` on stable Rust, or `cargo +nightly fuzz run sealed --features libfuzzer` where cargo-fuzz is installed.
#![no_main]
ca_fuzz::libfuzzer_target!("sealed");
