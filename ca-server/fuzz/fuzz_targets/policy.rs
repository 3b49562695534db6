//! libFuzzer entry point of the `policy` target (`cargo +nightly fuzz run policy --features libfuzzer`).
#![no_main]
ca_fuzz::libfuzzer_target!("policy");
