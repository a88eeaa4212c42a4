//! libFuzzer over `perennial_fuzz::stored_state` (see crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| perennial_fuzz::stored_state(data));
