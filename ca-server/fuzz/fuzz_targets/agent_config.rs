//! libFuzzer entry point of the `agent_config` target (`cargo +nightly fuzz run agent_config --features libfuzzer`).
#![no_main]
ca_fuzz::libfuzzer_target!("agent_config");
