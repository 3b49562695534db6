//! libFuzzer entry point of the `agent_config` target: `scripts/fuzz.sh --libfuzzer agent_config` on stable Rust, or `cargo +nightly fuzz run agent_config --features libfuzzer` where cargo-fuzz is installed.
#![no_main]
ca_fuzz::libfuzzer_target!("agent_config");
