//! goinfo's buildinfo parser on arbitrary bytes: see goinfo::fuzzing::buildinfo for the input's format.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goinfo::fuzzing::buildinfo(data));
