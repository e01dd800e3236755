//! goinfo's types parser on arbitrary bytes: see goinfo::fuzzing::types for the input's format.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goinfo::fuzzing::types(data));
