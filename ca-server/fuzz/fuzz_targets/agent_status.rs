//! libFuzzer entry point of the `agent_status` target (`cargo +nightly fuzz run agent_status --features libfuzzer`).
#![no_main]
ca_fuzz::libfuzzer_target!("agent_status");
