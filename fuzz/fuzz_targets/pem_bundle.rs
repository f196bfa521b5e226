#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trustplane::fuzzing::pem_bundle(data));
