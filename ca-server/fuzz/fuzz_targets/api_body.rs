//! libFuzzer entry point of the `api_body` target (`cargo +nightly fuzz run api_body --features libfuzzer`).
#![no_main]
ca_fuzz::libfuzzer_target!("api_body");
