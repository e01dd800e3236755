//! Decoding of the fixed-size events the BPF programs write to the ring buffer.
//! The layouts mirror `bpf/include/gotel.h` and the event structs of each program.

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

/// One request served by net/http (`struct http_server_event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpServerEvent {
    pub header: SpanHeader,
    pub status: u16,
    pub proto_major: u8,
    pub proto_minor: u8,
    pub tls: bool,
    pub method: String,
    pub path: String,
    pub query: String,
    pub host: String,
    pub remote_addr: String,
    /// The ServeMux pattern that matched ("GET /users/{id}"); empty when unknown.
    pub pattern: String,
    /// The W3C tracestate that came with an incoming traceparent.
    pub tracestate: String,
}

/// One call made by net/http's Transport (`struct http_client_event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpClientEvent {
    pub header: SpanHeader,
    /// 0 when there was no response.
    pub status: u16,
    /// Of the response; 0 without one.
    pub proto_major: u8,
    pub proto_minor: u8,
    /// The round trip returned an error.
    pub failed: bool,
    pub method: String,
    pub scheme: String,
    /// URL host, with the port if the URL has one.
    pub host: String,
    pub path: String,
    pub query: String,
}

/// One RPC served by grpc-go (`struct grpc_server_event`).
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
    pub peer: Option<(std::net::IpAddr, u16, u16)>,
}

/// One call made by a grpc-go client (`struct grpc_client_event`).
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
    pub peer: Option<(std::net::IpAddr, u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    HttpServer(HttpServerEvent),
    HttpClient(HttpClientEvent),
    GrpcServer(GrpcServerEvent),
    GrpcClient(GrpcClientEvent),
}

impl Event {
    pub fn header(&self) -> &SpanHeader {
        match self {
            Event::HttpServer(e) => &e.header,
            Event::HttpClient(e) => &e.header,
            Event::GrpcServer(e) => &e.header,
            Event::GrpcClient(e) => &e.header,
        }
    }

    /// Why the values read do not look like what the fields hold, if they do not: the sign of
    /// wrong offsets (an unknown version guessed from the database, say).
    pub fn implausible(&self) -> Option<String> {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        let bad_method = |m: &str| m.is_empty() || !m.bytes().all(token);
        match self {
            Event::HttpServer(e) if bad_method(&e.method) => {
                Some(format!("HTTP method {:?} is not a method", e.method))
            }
            Event::HttpServer(e) if !(1..=3).contains(&e.proto_major) => {
                Some(format!("HTTP major version {} is not 1, 2 or 3", e.proto_major))
            }
            // net/http sends "" as GET.
            Event::HttpClient(e) if !e.method.is_empty() && bad_method(&e.method) => {
                Some(format!("HTTP method {:?} is not a method", e.method))
            }
            Event::GrpcServer(e) if !e.method.starts_with('/') => {
                Some(format!("gRPC method {:?} does not start with /", e.method))
            }
            Event::GrpcServer(e) if e.status_code.is_some_and(|c| !(0..=16).contains(&c)) => {
                Some(format!("gRPC status {:?} is not a status code", e.status_code))
            }
            Event::GrpcClient(e) if !e.method.starts_with('/') => {
                Some(format!("gRPC method {:?} does not start with /", e.method))
            }
            Event::GrpcClient(e) if !(0..=16).contains(&e.status_code) => {
                Some(format!("gRPC status {} is not a status code", e.status_code))
            }
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes is too short for its kind {kind} (needs {need})")]
    TooShort { kind: u32, len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

const KIND_HTTP_SERVER: u32 = 1;
const KIND_HTTP_CLIENT: u32 = 2;
const KIND_GRPC_SERVER: u32 = 3;
const KIND_GRPC_CLIENT: u32 = 4;
const HEADER_SIZE: usize = 56;
/// sizeof(struct http_server_event), padded to 8.
pub const HTTP_SERVER_EVENT_SIZE: usize = 1184;
/// sizeof(struct http_client_event), padded to 8.
pub const HTTP_CLIENT_EVENT_SIZE: usize = 752;
/// sizeof(struct grpc_server_event).
pub const GRPC_SERVER_EVENT_SIZE: usize = 368;
/// sizeof(struct grpc_client_event).
pub const GRPC_CLIENT_EVENT_SIZE: usize = 496;

/// Little-endian field reader over one event; lengths were checked before any read.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&self, at: usize) -> u8 {
        self.0[at]
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.array(at))
    }
    /// A `struct conn_key` at `at`: (client address, client port, server port).
    fn conn(&self, at: usize) -> Option<(std::net::IpAddr, u16, u16)> {
        Some((self.address(at, self.u32(at + 36))?, self.u16(at + 32), self.u16(at + 34)))
    }
    /// The same, with the server's address instead of the client's.
    fn conn_server(&self, at: usize) -> Option<(std::net::IpAddr, u16, u16)> {
        Some((self.address(at + 16, self.u32(at + 36))?, self.u16(at + 32), self.u16(at + 34)))
    }
    fn address(&self, at: usize, family: u32) -> Option<std::net::IpAddr> {
        const AF_INET: u32 = 2;
        const AF_INET6: u32 = 10;
        let a: [u8; 16] = self.array(at);
        match family {
            AF_INET => Some(std::net::IpAddr::from([a[0], a[1], a[2], a[3]])),
            AF_INET6 => Some(std::net::IpAddr::from(a)),
            _ => None,
        }
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.0[at..at + N]);
        a
    }
    /// A captured string: `len_at` holds the captured length, `cap` bounds it.
    fn string(&self, len_at: usize, at: usize, cap: usize) -> String {
        let len = usize::from(self.u16(len_at)).min(cap);
        String::from_utf8_lossy(&self.0[at..at + len]).into_owned()
    }
}

/// Decodes one ring-buffer sample.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::TooShort { kind: 0, len: bytes.len(), need: HEADER_SIZE });
    }
    let f = Fields(bytes);
    let kind = f.u32(0);
    let need = match kind {
        KIND_HTTP_SERVER => HTTP_SERVER_EVENT_SIZE,
        KIND_HTTP_CLIENT => HTTP_CLIENT_EVENT_SIZE,
        KIND_GRPC_SERVER => GRPC_SERVER_EVENT_SIZE,
        KIND_GRPC_CLIENT => GRPC_CLIENT_EVENT_SIZE,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if bytes.len() < need {
        return Err(DecodeError::TooShort { kind, len: bytes.len(), need });
    }
    let header = SpanHeader {
        pid: f.u32(4),
        start_ns: f.u64(8),
        end_ns: f.u64(16),
        trace_id: f.array(24),
        span_id: f.array(40),
        parent_span_id: f.array(48),
    };
    if kind == KIND_GRPC_CLIENT {
        // conn_key holds the server's address second when read from the client's side.
        let peer = (f.u8(64) != 0).then(|| f.conn_server(72)).flatten();
        return Ok(Event::GrpcClient(GrpcClientEvent {
            header,
            status_code: f.i32(56),
            stream_id: f.u32(60),
            peer,
            method: f.string(66, 112, 128),
            target: f.string(68, 240, 128),
            status_message: f.string(70, 368, 128),
        }));
    }
    if kind == KIND_GRPC_SERVER {
        let code = f.i32(56);
        return Ok(Event::GrpcServer(GrpcServerEvent {
            header,
            status_code: (code >= 0).then_some(code),
            stream_id: f.u32(60),
            peer: if f.u8(64) != 0 { f.conn(72) } else { None },
            method: f.string(66, 112, 128),
            status_message: f.string(68, 240, 128),
        }));
    }
    if kind == KIND_HTTP_CLIENT {
        return Ok(Event::HttpClient(HttpClientEvent {
            header,
            status: f.u16(56),
            proto_major: f.u8(58),
            proto_minor: f.u8(59),
            failed: f.u8(60) != 0,
            method: f.string(64, 76, 16),
            scheme: f.string(66, 92, 16),
            host: f.string(68, 108, 128),
            path: f.string(70, 236, 256),
            query: f.string(72, 492, 256),
        }));
    }
    Ok(Event::HttpServer(HttpServerEvent {
        header,
        status: f.u16(56),
        proto_major: f.u8(58),
        proto_minor: f.u8(59),
        tls: f.u8(60) != 0,
        method: f.string(64, 76, 16),
        path: f.string(66, 92, 256),
        query: f.string(68, 348, 256),
        host: f.string(70, 604, 128),
        remote_addr: f.string(72, 732, 64),
        pattern: f.string(74, 796, 128),
        tracestate: f.string(924, 926, 256),
    }))
}

/// Builds the bytes of an HTTP server event as the BPF program lays them out; for tests and
/// benchmarks of the stages after decoding.
pub fn encode_http_server(e: &HttpServerEvent) -> Vec<u8> {
    let mut b = vec![0u8; HTTP_SERVER_EVENT_SIZE];
    encode_header(&mut b, KIND_HTTP_SERVER, &e.header);
    b[56..58].copy_from_slice(&e.status.to_le_bytes());
    b[58] = e.proto_major;
    b[59] = e.proto_minor;
    b[60] = u8::from(e.tls);
    let strings = [
        (64, 76, 16, &e.method),
        (66, 92, 256, &e.path),
        (68, 348, 256, &e.query),
        (70, 604, 128, &e.host),
        (72, 732, 64, &e.remote_addr),
        (74, 796, 128, &e.pattern),
        (924, 926, 256, &e.tracestate),
    ];
    encode_strings(&mut b, &strings);
    b
}

/// Builds the bytes of an HTTP client event as the BPF program lays them out.
pub fn encode_http_client(e: &HttpClientEvent) -> Vec<u8> {
    let mut b = vec![0u8; HTTP_CLIENT_EVENT_SIZE];
    encode_header(&mut b, KIND_HTTP_CLIENT, &e.header);
    b[56..58].copy_from_slice(&e.status.to_le_bytes());
    b[58] = e.proto_major;
    b[59] = e.proto_minor;
    b[60] = u8::from(e.failed);
    let strings = [
        (64, 76, 16, &e.method),
        (66, 92, 16, &e.scheme),
        (68, 108, 128, &e.host),
        (70, 236, 256, &e.path),
        (72, 492, 256, &e.query),
    ];
    encode_strings(&mut b, &strings);
    b
}

/// Builds the bytes of a gRPC server event as the BPF program lays them out.
pub fn encode_grpc_server(e: &GrpcServerEvent) -> Vec<u8> {
    let mut b = vec![0u8; GRPC_SERVER_EVENT_SIZE];
    encode_header(&mut b, KIND_GRPC_SERVER, &e.header);
    b[56..60].copy_from_slice(&e.status_code.unwrap_or(-1).to_le_bytes());
    b[60..64].copy_from_slice(&e.stream_id.to_le_bytes());
    if let Some(peer) = e.peer {
        b[64] = 1;
        encode_conn(&mut b[72..112], 0, peer);
    }
    encode_strings(&mut b, &[(66, 112, 128, &e.method), (68, 240, 128, &e.status_message)]);
    b
}

/// Builds the bytes of a gRPC client event as the BPF program lays them out.
pub fn encode_grpc_client(e: &GrpcClientEvent) -> Vec<u8> {
    let mut b = vec![0u8; GRPC_CLIENT_EVENT_SIZE];
    encode_header(&mut b, KIND_GRPC_CLIENT, &e.header);
    b[56..60].copy_from_slice(&e.status_code.to_le_bytes());
    b[60..64].copy_from_slice(&e.stream_id.to_le_bytes());
    if let Some(peer) = e.peer {
        b[64] = 1;
        encode_conn(&mut b[72..112], 16, peer);
    }
    let strings =
        [(66, 112, 128, &e.method), (68, 240, 128, &e.target), (70, 368, 128, &e.status_message)];
    encode_strings(&mut b, &strings);
    b
}

/// A `struct conn_key` with `address` at `slot` (0: the client's, 16: the server's).
fn encode_conn(
    b: &mut [u8],
    slot: usize,
    (address, client_port, server_port): (std::net::IpAddr, u16, u16),
) {
    let family: u32 = match address {
        std::net::IpAddr::V4(v4) => {
            b[slot..slot + 4].copy_from_slice(&v4.octets());
            2
        }
        std::net::IpAddr::V6(v6) => {
            b[slot..slot + 16].copy_from_slice(&v6.octets());
            10
        }
    };
    b[32..34].copy_from_slice(&client_port.to_le_bytes());
    b[34..36].copy_from_slice(&server_port.to_le_bytes());
    b[36..40].copy_from_slice(&family.to_le_bytes());
}

fn encode_header(b: &mut [u8], kind: u32, h: &SpanHeader) {
    b[0..4].copy_from_slice(&kind.to_le_bytes());
    b[4..8].copy_from_slice(&h.pid.to_le_bytes());
    b[8..16].copy_from_slice(&h.start_ns.to_le_bytes());
    b[16..24].copy_from_slice(&h.end_ns.to_le_bytes());
    b[24..40].copy_from_slice(&h.trace_id);
    b[40..48].copy_from_slice(&h.span_id);
    b[48..56].copy_from_slice(&h.parent_span_id);
}

/// (length offset, bytes offset, capacity, value) per captured string.
fn encode_strings(b: &mut [u8], strings: &[(usize, usize, usize, &String)]) {
    for &(len_at, at, cap, s) in strings {
        let n = s.len().min(cap);
        b[len_at..len_at + 2].copy_from_slice(&(n as u16).to_le_bytes());
        b[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HttpServerEvent {
        HttpServerEvent {
            header: SpanHeader {
                pid: 42,
                start_ns: 1_000,
                end_ns: 2_000,
                trace_id: [7; 16],
                span_id: [9; 8],
                parent_span_id: [0; 8],
            },
            status: 404,
            proto_major: 1,
            proto_minor: 1,
            tls: false,
            method: "GET".into(),
            path: "/users/7".into(),
            query: "a=1".into(),
            host: "localhost:8080".into(),
            remote_addr: "127.0.0.1:5555".into(),
            pattern: "GET /users/{id}".into(),
            tracestate: "vendor=x".into(),
        }
    }

    #[test]
    fn round_trips_a_grpc_server_event() {
        let e = GrpcServerEvent {
            header: sample().header,
            status_code: Some(5),
            status_message: "no such user".into(),
            method: "/demo.Greeter/SayHello".into(),
            stream_id: 7,
            peer: Some(("127.0.0.1".parse().unwrap(), 40000, 50051)),
        };
        assert_eq!(decode(&encode_grpc_server(&e)), Ok(Event::GrpcServer(e.clone())));
        let unknown = GrpcServerEvent { status_code: None, peer: None, ..e };
        assert_eq!(decode(&encode_grpc_server(&unknown)), Ok(Event::GrpcServer(unknown)));
    }

    #[test]
    fn round_trips_a_grpc_client_event() {
        let e = GrpcClientEvent {
            header: sample().header,
            status_code: 14,
            status_message: "connection refused".into(),
            method: "/demo.Greeter/Count".into(),
            target: "dns:///greeter:50051".into(),
            stream_id: 3,
            peer: Some(("::1".parse().unwrap(), 40001, 50051)),
        };
        assert_eq!(decode(&encode_grpc_client(&e)), Ok(Event::GrpcClient(e)));
    }

    #[test]
    fn round_trips_an_http_server_event() {
        let e = sample();
        assert_eq!(decode(&encode_http_server(&e)), Ok(Event::HttpServer(e)));
    }

    #[test]
    fn values_that_cannot_be_what_the_fields_hold_are_implausible() {
        assert_eq!(Event::HttpServer(sample()).implausible(), None);
        let mut garbage = sample();
        garbage.method = "\u{1}\u{7f}x".into();
        assert!(Event::HttpServer(garbage).implausible().unwrap().contains("not a method"));
        let mut bad_proto = sample();
        bad_proto.proto_major = 77;
        assert!(Event::HttpServer(bad_proto).implausible().is_some());
    }

    #[test]
    fn round_trips_an_http_client_event() {
        let e = HttpClientEvent {
            header: sample().header,
            status: 503,
            proto_major: 1,
            proto_minor: 1,
            failed: false,
            method: "POST".into(),
            scheme: "http".into(),
            host: "b.internal:8080".into(),
            path: "/orders".into(),
            query: "id=1".into(),
        };
        assert_eq!(decode(&encode_http_client(&e)), Ok(Event::HttpClient(e)));
    }

    #[test]
    fn rejects_short_and_unknown_events() {
        let bytes = encode_http_server(&sample());
        assert!(matches!(decode(&bytes[..100]), Err(DecodeError::TooShort { kind: 1, .. })));
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn a_captured_length_past_its_buffer_is_clamped() {
        let mut bytes = encode_http_server(&sample());
        bytes[64..66].copy_from_slice(&500u16.to_le_bytes()); // method_len beyond 16
        let Ok(Event::HttpServer(e)) = decode(&bytes) else { panic!("decodes") };
        assert_eq!(e.method.len(), 16);
    }
}
