//! libFuzzer over `perennial_fuzz::log_row` (see crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| perennial_fuzz::log_row(data));
