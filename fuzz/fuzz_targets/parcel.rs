//! libFuzzer over `perennial_fuzz::parcel` (see crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| perennial_fuzz::parcel(data));
