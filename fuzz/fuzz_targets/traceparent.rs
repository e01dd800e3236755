//! Incoming W3C traceparent values, checked by the BPF programs' own code (c/traceparent.c
//! compiles `accept_traceparent` of bpf/include/traceparent.h for the host), given what the
//! HTTP server probe gives it: the value's length and its first 56 bytes. Besides never
//! crashing, whatever is accepted must be what W3C Trace Context allows (version two lower-case
//! hex digits, not ff; dashes in place; lower-case hex ids, not all zero; version 00 exactly 55
//! characters, a later one's extra fields after a dash), read as written.
#![no_main]

const LEN: usize = 55;

extern "C" {
    fn gotel_fuzz_accept_traceparent(text: *const u8, len: u64, out: *mut u8) -> i32;
}

fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

libfuzzer_sys::fuzz_target!(|value: &[u8]| {
    let mut text = [0u8; LEN + 1];
    let n = value.len().min(text.len());
    text[..n].copy_from_slice(&value[..n]);
    let mut out = [0u8; 25];
    // SAFETY: the check reads at most the 56 bytes of `text` and writes 25 of `out`.
    let accepted = unsafe {
        gotel_fuzz_accept_traceparent(text.as_ptr(), value.len() as u64, out.as_mut_ptr())
    };
    if accepted != 1 {
        return;
    }
    let (trace_id, span_id, sampled) = (&out[..16], &out[16..24], out[24]);
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    assert!(value.len() >= LEN);
    assert!(hex(&value[..2]) && &value[..2] != b"ff", "version {:?}", &value[..2]);
    assert!(value.len() == LEN || (value[LEN] == b'-' && &value[..2] != b"00"));
    assert_eq!([value[2], value[35], value[52]], [b'-'; 3]);
    assert_eq!(lower_hex(trace_id).as_bytes(), &value[3..35]);
    assert_eq!(lower_hex(span_id).as_bytes(), &value[36..52]);
    assert!(hex(&value[53..55]));
    assert!(trace_id.iter().any(|&b| b != 0) && span_id.iter().any(|&b| b != 0));
    let flags = u8::from_str_radix(std::str::from_utf8(&value[53..55]).unwrap(), 16).unwrap();
    assert_eq!(sampled, flags & 1);
});
