//! `struct grpc_server_event` (grpc_server.bpf.c): one RPC served.

use std::net::IpAddr;

use trace::{MonotonicClock, Span};

use crate::event::{EventBytes, Fields, SpanEvent, SpanHeader};
use crate::SpanOptions;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcServerEvent {
    pub header: SpanHeader,
    /// The gRPC status code sent; None when no status was seen.
    pub status_code: Option<i32>,
    pub status_message: String,
    /// "/package.Service/Method".
    pub method: String,
    pub stream_id: u32,
    /// (client address, client port, server port) of the connection, when it could be read.
    pub peer: Option<(IpAddr, u16, u16)>,
}

const METHOD: (usize, usize, usize) = (66, 112, 128);
const MESSAGE: (usize, usize, usize) = (68, 240, 128);
/// Where the `struct conn_key` is, and the slot of the client's address in it.
const CONN: (usize, usize) = (72, 0);

/// The bytes the BPF program would write for `e`.
pub fn encode(e: &GrpcServerEvent) -> Vec<u8> {
    let mut b = EventBytes::new(GrpcServerEvent::SIZE, super::KIND, &e.header);
    b.put(56, &e.status_code.unwrap_or(-1).to_le_bytes());
    b.put(60, &e.stream_id.to_le_bytes());
    if let Some(peer) = e.peer {
        b.put(64, &[1]);
        b.conn(CONN.0, CONN.1, peer);
    }
    let s = |(len_at, at, cap), v| (len_at, at, cap, v);
    b.strings(&[s(METHOD, &e.method), s(MESSAGE, &e.status_message)]);
    b.0
}

impl SpanEvent for GrpcServerEvent {
    /// sizeof(struct grpc_server_event).
    const SIZE: usize = 368;

    fn decode(bytes: &[u8]) -> Self {
        let f = Fields(bytes);
        let string = |(len_at, at, cap)| f.string(len_at, at, cap);
        let code = f.i32(56);
        GrpcServerEvent {
            header: SpanHeader::decode(&f),
            status_code: (code >= 0).then_some(code),
            stream_id: f.u32(60),
            peer: if f.u8(64) != 0 { f.conn(CONN.0, CONN.1) } else { None },
            method: string(METHOD),
            status_message: string(MESSAGE),
        }
    }

    fn implausible(&self) -> Option<String> {
        super::super::implausible_method(&self.method).or_else(|| {
            let bad = self.status_code.is_some_and(|c| !super::super::is_status_code(c));
            bad.then(|| format!("gRPC status {:?} is not a status code", self.status_code))
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
    fn round_trips_with_and_without_status_and_peer() {
        let e = GrpcServerEvent {
            header: crate::event::test_header(),
            status_code: Some(5),
            status_message: "no such user".into(),
            method: "/demo.Greeter/SayHello".into(),
            stream_id: 7,
            peer: Some(("127.0.0.1".parse().unwrap(), 40000, 50051)),
        };
        assert_eq!(GrpcServerEvent::decode(&encode(&e)), e);
        let unknown = GrpcServerEvent { status_code: None, peer: None, ..e };
        assert_eq!(GrpcServerEvent::decode(&encode(&unknown)), unknown);
    }

    #[test]
    fn methods_and_codes_that_cannot_be_are_implausible() {
        let e = GrpcServerEvent {
            header: crate::event::test_header(),
            status_code: Some(0),
            status_message: String::new(),
            method: "/a.B/C".into(),
            stream_id: 1,
            peer: None,
        };
        assert_eq!(e.implausible(), None);
        assert!(GrpcServerEvent { method: "a.B/C".into(), ..e.clone() }.implausible().is_some());
        assert!(GrpcServerEvent { status_code: Some(17), ..e }.implausible().is_some());
    }
}
