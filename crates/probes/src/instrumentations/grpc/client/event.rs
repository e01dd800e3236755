//! `struct grpc_client_event` (grpc_client.bpf.c): one call made.

use std::net::IpAddr;

use trace::{Link, MonotonicClock, Span};

use crate::event::{EventBytes, Fields, SpanEvent, SpanHeader};
use crate::SpanOptions;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcClientEvent {
    pub header: SpanHeader,
    pub status_code: i32,
    pub status_message: String,
    pub method: String,
    /// What the ClientConn was created for ("127.0.0.1:50051", "dns:///svc:443").
    pub target: String,
    pub stream_id: u32,
    /// (server address, client port, server port) of the connection, when it could be read.
    pub peer: Option<(IpAddr, u16, u16)>,
    /// The context of a traceparent the call's metadata carried already, with injection on.
    pub link: Option<Link>,
}

const METHOD: (usize, usize, usize) = (66, 112, 128);
const TARGET: (usize, usize, usize) = (68, 240, 128);
const MESSAGE: (usize, usize, usize) = (70, 368, 128);
/// Where the `struct conn_key` is, and the slot of the server's address in it: read from the
/// client's side, the connection's key holds the server second.
const CONN: (usize, usize) = (72, 16);
/// `struct span_link`.
const LINK: usize = 496;

/// The bytes the BPF program would write for `e`.
pub fn encode(e: &GrpcClientEvent) -> Vec<u8> {
    let mut b = EventBytes::new(GrpcClientEvent::SIZE, super::KIND, &e.header);
    b.put(56, &e.status_code.to_le_bytes());
    b.put(60, &e.stream_id.to_le_bytes());
    if let Some(peer) = e.peer {
        b.put(64, &[1]);
        b.conn(CONN.0, CONN.1, peer);
    }
    let s = |(len_at, at, cap), v| (len_at, at, cap, v);
    b.strings(&[s(METHOD, &e.method), s(TARGET, &e.target), s(MESSAGE, &e.status_message)]);
    b.link(LINK, e.link);
    b.0
}

impl SpanEvent for GrpcClientEvent {
    /// sizeof(struct grpc_client_event).
    const SIZE: usize = 528;

    fn decode(bytes: &[u8]) -> Self {
        let f = Fields(bytes);
        let string = |(len_at, at, cap)| f.string(len_at, at, cap);
        GrpcClientEvent {
            header: SpanHeader::decode(&f),
            status_code: f.i32(56),
            stream_id: f.u32(60),
            peer: (f.u8(64) != 0).then(|| f.conn(CONN.0, CONN.1)).flatten(),
            method: string(METHOD),
            target: string(TARGET),
            status_message: string(MESSAGE),
            link: f.link(LINK),
        }
    }

    fn implausible(&self) -> Option<String> {
        super::super::implausible_method(&self.method).or_else(|| {
            let bad = !super::super::is_status_code(self.status_code);
            bad.then(|| format!("gRPC status {} is not a status code", self.status_code))
        })
    }

    fn span(self, clock: &MonotonicClock, _: &SpanOptions) -> Span {
        super::span::span(self, clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let e = GrpcClientEvent {
            header: crate::event::test_header(),
            status_code: 14,
            status_message: "connection refused".into(),
            method: "/demo.Greeter/Count".into(),
            target: "dns:///greeter:50051".into(),
            stream_id: 3,
            peer: Some(("::1".parse().unwrap(), 40001, 50051)),
            link: Some(Link { trace_id: [4; 16], span_id: [5; 8], sampled: false }),
        };
        assert_eq!(GrpcClientEvent::decode(&encode(&e)), e);
        assert_eq!(e.implausible(), None);
        assert!(GrpcClientEvent { status_code: -1, ..e }.implausible().is_some());
    }
}
