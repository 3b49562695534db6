//! libFuzzer entry point of the `agent_status` target: `scripts/fuzz.sh --libfuzzer agent_status` on stable Rust, or `cargo +nightly fuzz run agent_status --features libfuzzer` where cargo-fuzz is installed.
#![no_main]
ca_fuzz::libfuzzer_target!("agent_status");
