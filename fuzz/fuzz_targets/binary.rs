//! goinfo's binary parser on arbitrary bytes: see goinfo::fuzzing::binary for the input's format.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goinfo::fuzzing::binary(data));
