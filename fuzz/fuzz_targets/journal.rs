//! libFuzzer over `perennial_fuzz::journal` (see crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| perennial_fuzz::journal(data));
