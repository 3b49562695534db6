//! libFuzzer entry point of the `csr` target (`cargo +nightly fuzz run csr --features libfuzzer`).
#![no_main]
ca_fuzz::libfuzzer_target!("csr");
