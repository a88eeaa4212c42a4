//! libFuzzer over `perennial_fuzz::http_call` (see crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| perennial_fuzz::http_call(data));
