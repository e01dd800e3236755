//! goinfo's pclntab parser on arbitrary bytes: see goinfo::fuzzing::pclntab for the input's format.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goinfo::fuzzing::pclntab(data));
