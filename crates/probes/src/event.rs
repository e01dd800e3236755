//! What every span event the BPF programs write to the ring buffer shares: the header of
//! `bpf/include/gotel.h` (`struct span_header`), little-endian field reading over the rest, and
//! writing events back as bytes for tests and benchmarks. Each instrumentation's folder decodes
//! its own event's fields.

use std::borrow::Cow;
use std::net::IpAddr;

use trace::{DurationMetric, KeyValue, Link, MonotonicClock, Span, SpanKind, Status};

use crate::{Events, SpanOptions};

/// sizeof(struct span_header).
pub const HEADER_SIZE: usize = 56;

/// Fields every span event carries (`struct span_header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanHeader {
    pub pid: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero when the span is a root.
    pub parent_span_id: [u8; 8],
}

impl SpanHeader {
    /// The header of an event at least HEADER_SIZE long.
    pub(crate) fn decode(f: &Fields<'_>) -> Self {
        SpanHeader {
            pid: f.u32(4),
            start_ns: f.u64(8),
            end_ns: f.u64(16),
            trace_id: f.array(24),
            span_id: f.array(40),
            parent_span_id: f.array(48),
        }
    }

    /// The span of an event with this header: its ids, its parent (none when all zero) and its
    /// times on the wall clock.
    pub fn span(
        &self,
        clock: &MonotonicClock,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> Span {
        let parent = self.parent_span_id;
        Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: (parent != [0; 8]).then_some(parent),
            name,
            kind,
            start_unix_nanos: clock.to_unix_nanos(self.start_ns),
            end_unix_nanos: clock.to_unix_nanos(self.end_ns),
            attributes,
            status,
            trace_state: String::new(),
            links: Vec::new(),
        }
    }
}

/// One instrumentation's event, as its BPF program lays it out.
pub(crate) trait SpanEvent: Sized {
    /// sizeof the C struct: shorter samples never reach `decode`.
    const SIZE: usize;
    /// An event of at least SIZE bytes.
    fn decode(bytes: &[u8]) -> Self;
    /// Why the values read cannot be what the fields hold, if they cannot: the sign of wrong
    /// offsets.
    fn implausible(&self) -> Option<String>;
    /// The span, per the instrumentation's semantic conventions. Takes the event by value: its
    /// strings move into the span rather than being copied.
    fn span(self, clock: &MonotonicClock, options: &SpanOptions) -> Span;
}

impl Events {
    /// The events of kind `kind`, laid out as `E`.
    pub(crate) const fn of<E: SpanEvent>(kind: u32) -> Events {
        Events { kind, size: E::SIZE, span: span_of::<E>, metric: None }
    }

    /// Its spans' durations count in `metric`.
    pub(crate) const fn measured_in(self, metric: &'static DurationMetric) -> Events {
        Events { metric: Some(metric), ..self }
    }
}

fn span_of<E: SpanEvent>(
    bytes: &[u8],
    clock: &MonotonicClock,
    options: &SpanOptions,
) -> Result<Span, String> {
    let e = E::decode(bytes);
    match e.implausible() {
        Some(why) => Err(why),
        None => Ok(e.span(clock, options)),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes is too short for its kind {kind} (needs {need})")]
    TooShort { kind: u32, len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// Asks for every cache line of an event at once. The BPF programs wrote it on another CPU,
/// so the first read of each line misses; decoded one string after another, the misses came
/// one at a time, and the first byte of each string was most of decoding's time.
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = bytes.as_ptr() as usize & !63;
        let end = bytes.as_ptr() as usize + bytes.len();
        for line in (start..end).step_by(64) {
            // SAFETY: a prefetch is a hint: it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
        }
    }
}

/// Little-endian field reader over one event; its length was checked before any read.
pub(crate) struct Fields<'a>(pub(crate) &'a [u8]);

impl Fields<'_> {
    pub(crate) fn u8(&self, at: usize) -> u8 {
        self.0[at]
    }
    pub(crate) fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    pub(crate) fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }
    pub(crate) fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.array(at))
    }
    pub(crate) fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }
    pub(crate) fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.0[at..at + N]);
        a
    }
    /// A captured string: `len_at` holds the captured length, `cap` bounds it.
    pub(crate) fn string(&self, len_at: usize, at: usize, cap: usize) -> String {
        let len = usize::from(self.u16(len_at)).min(cap);
        let bytes = &self.0[at..at + len];
        // Valid UTF-8 (nearly always) takes the plain validator: the lossy conversion's
        // chunk walk showed in the agent's profile.
        match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        }
    }
    /// A `struct conn_key` (conn.h) at `at`: (the address in `slot`, client port, server
    /// port). `slot` 0 holds the client's address, 16 the server's.
    pub(crate) fn conn(&self, at: usize, slot: usize) -> Option<(IpAddr, u16, u16)> {
        let address = self.address(at + slot, self.u32(at + 36))?;
        Some((address, self.u16(at + 32), self.u16(at + 34)))
    }
    /// A `struct span_link` (traceparent.h) at `at`, if it holds one.
    pub(crate) fn link(&self, at: usize) -> Option<Link> {
        (self.u8(at + 24) != 0).then(|| Link {
            trace_id: self.array(at),
            span_id: self.array(at + 16),
            sampled: self.u8(at + 25) != 0,
        })
    }
    fn address(&self, at: usize, family: u32) -> Option<IpAddr> {
        let a: [u8; 16] = self.array(at);
        match family {
            AF_INET => Some(IpAddr::from([a[0], a[1], a[2], a[3]])),
            AF_INET6 => Some(IpAddr::from(a)),
            _ => None,
        }
    }
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// An event's bytes, written as the BPF programs lay them out: the inverse of `Fields`.
pub(crate) struct EventBytes(pub(crate) Vec<u8>);

impl EventBytes {
    /// `size` bytes of zeros starting with the header.
    pub(crate) fn new(size: usize, kind: u32, h: &SpanHeader) -> Self {
        let mut b = vec![0u8; size];
        b[0..4].copy_from_slice(&kind.to_le_bytes());
        b[4..8].copy_from_slice(&h.pid.to_le_bytes());
        b[8..16].copy_from_slice(&h.start_ns.to_le_bytes());
        b[16..24].copy_from_slice(&h.end_ns.to_le_bytes());
        b[24..40].copy_from_slice(&h.trace_id);
        b[40..48].copy_from_slice(&h.span_id);
        b[48..56].copy_from_slice(&h.parent_span_id);
        EventBytes(b)
    }

    pub(crate) fn put(&mut self, at: usize, bytes: &[u8]) {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// (length offset, bytes offset, capacity, value) per captured string.
    pub(crate) fn strings(&mut self, strings: &[(usize, usize, usize, &String)]) {
        for &(len_at, at, cap, s) in strings {
            let n = s.len().min(cap);
            self.put(len_at, &(n as u16).to_le_bytes());
            self.put(at, &s.as_bytes()[..n]);
        }
    }

    /// A `struct span_link` at `at` (see `Fields::link`).
    pub(crate) fn link(&mut self, at: usize, link: Option<Link>) {
        if let Some(l) = link {
            self.put(at, &l.trace_id);
            self.put(at + 16, &l.span_id);
            self.put(at + 24, &[1, u8::from(l.sampled)]);
        }
    }

    /// A `struct conn_key` at `at` with `address` in `slot` (see `Fields::conn`).
    pub(crate) fn conn(
        &mut self,
        at: usize,
        slot: usize,
        (address, client_port, server_port): (IpAddr, u16, u16),
    ) {
        let family = match address {
            IpAddr::V4(v4) => {
                self.put(at + slot, &v4.octets());
                AF_INET
            }
            IpAddr::V6(v6) => {
                self.put(at + slot, &v6.octets());
                AF_INET6
            }
        };
        self.put(at + 32, &client_port.to_le_bytes());
        self.put(at + 34, &server_port.to_le_bytes());
        self.put(at + 36, &family.to_le_bytes());
    }
}

/// Set in a header's kind when the sampler dropped the span (EVENT_UNSAMPLED, gotel.h): it
/// counts in metrics and is not exported.
pub(crate) const UNSAMPLED: u32 = 0x8000_0000;

/// The kind of a sample and whether its span was sampled, or why it has none.
pub(crate) fn kind(bytes: &[u8]) -> Result<(u32, bool), DecodeError> {
    match bytes.get(..4) {
        Some(k) => {
            let k = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
            Ok((k & !UNSAMPLED, k & UNSAMPLED == 0))
        }
        None => Err(DecodeError::TooShort { kind: 0, len: bytes.len(), need: HEADER_SIZE }),
    }
}

/// A header for tests of the instrumentations' events.
#[cfg(test)]
pub(crate) fn test_header() -> SpanHeader {
    SpanHeader {
        pid: 42,
        start_ns: 1_000,
        end_ns: 2_000,
        trace_id: [7; 16],
        span_id: [9; 8],
        parent_span_id: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_cut_at_their_cap_and_invalid_utf8_is_replaced() {
        // length 5 at 0, bytes at 2: "héllo" cut to 5 bytes, then a lone continuation byte
        let mut bytes = vec![5, 0];
        bytes.extend_from_slice("héllo".as_bytes());
        assert_eq!(Fields(&bytes).string(0, 2, 16), "héll");
        assert_eq!(Fields(&bytes).string(0, 2, 2), "h\u{fffd}", "a cap inside a character");
        let invalid = [2, 0, b'a', 0x80];
        assert_eq!(Fields(&invalid).string(0, 2, 16), "a\u{fffd}");
    }
}
