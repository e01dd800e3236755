//! goinfo's dwarf parser on arbitrary bytes: see goinfo::fuzzing::dwarf for the input's format.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goinfo::fuzzing::dwarf(data));
