//! libFuzzer entry point of the `sealed` target (`cargo +nightly fuzz run sealed --features libfuzzer`).
#![no_main]
ca_fuzz::libfuzzer_target!("sealed");
