#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| advent::fuzz::image(data));
