//! libFuzzer entry point of the `ocsp` target (`cargo +nightly fuzz run ocsp --features libfuzzer`).
#![no_main]
ca_fuzz::libfuzzer_target!("ocsp");
