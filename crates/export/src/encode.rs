//! Spans straight to OTLP protobuf bytes (an ExportTraceServiceRequest), one ResourceSpans per
//! process, since one agent speaks for many services.
//!
//! Written by hand rather than through the generated message types: building those allocates
//! for every attribute, and encoding them recomputes each nested message's length once per
//! level above it. Here every length is computed once, bottom up, then the bytes are written
//! in field order, which is exactly what the generated encoder produces (a test checks it).

use std::sync::Arc;

use trace::{AttributeValue, KeyValue, Link, ProcessResource, Span, SpanKind, Status};

const LEN: u8 = 2; // wire type: length-delimited
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const FIXED32: u8 = 5;

fn tag(field: u8, wire: u8) -> u8 {
    field << 3 | wire
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    // Byte by byte: the varints here are one or two bytes, and a copy of a length known only
    // at run time would be a call to memmove.
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field of `len` bytes: tag, length, body.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_header(out: &mut Vec<u8>, field: u8, len: usize) {
    out.push(tag(field, LEN));
    put_varint(out, len as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    put_header(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

/// AnyValue { string_value = 1; bool_value = 2; int_value = 3 }
fn any_value_len(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::String(s) => field_len(s.len()),
        AttributeValue::Bool(_) => 2,
        AttributeValue::Int(i) => 1 + varint_len(*i as u64),
    }
}

fn put_any_value(out: &mut Vec<u8>, v: &AttributeValue) {
    match v {
        AttributeValue::String(s) => put_bytes(out, 1, s.as_bytes()),
        AttributeValue::Bool(b) => out.extend_from_slice(&[tag(2, VARINT), u8::from(*b)]),
        AttributeValue::Int(i) => {
            out.push(tag(3, VARINT));
            put_varint(out, *i as u64);
        }
    }
}

/// KeyValue { key = 1; value = 2 }
fn key_value_len(key: &str, value: &AttributeValue) -> usize {
    let key = if key.is_empty() { 0 } else { field_len(key.len()) };
    key + field_len(any_value_len(value))
}

fn put_key_value(out: &mut Vec<u8>, field: u8, key: &str, value: &AttributeValue) {
    put_header(out, field, key_value_len(key, value));
    if !key.is_empty() {
        put_bytes(out, 1, key.as_bytes());
    }
    put_header(out, 2, any_value_len(value));
    put_any_value(out, value);
}

fn kind_number(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

/// Status { message = 2; code = 3 (ERROR = 2) }
fn status_len(message: &str) -> usize {
    let message = if message.is_empty() { 0 } else { field_len(message.len()) };
    message + 2
}

/// Span.Link { trace_id = 1; span_id = 2; flags = 6 (fixed32: the W3C trace flags) }
fn link_len(l: &Link) -> usize {
    field_len(16) + field_len(8) + if l.sampled { 5 } else { 0 }
}

fn put_link(out: &mut Vec<u8>, l: &Link) {
    put_header(out, 13, link_len(l));
    put_bytes(out, 1, &l.trace_id);
    put_bytes(out, 2, &l.span_id);
    if l.sampled {
        out.push(tag(6, FIXED32));
        out.extend_from_slice(&1u32.to_le_bytes());
    }
}

/// A span as a `ScopeSpans.spans` field (2). Span: trace_id 1, span_id 2, trace_state 3,
/// parent_span_id 4, name 5, kind 6, start 7, end 8 (fixed64), attributes 9, links 13,
/// status 15. Empty fields are left out, as proto3 does.
///
/// The body is written first, behind room for a two-byte length (up to 16 KiB: nearly every
/// span), and the length put in front after: no pass over the attributes to size them first.
/// A shorter or longer length moves the body once, so the bytes stay the minimal encoding.
fn put_span(out: &mut Vec<u8>, s: &Span) {
    out.push(tag(2, LEN));
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    put_span_body(out, s);
    let (length, n) = varint(out.len() as u64 - at as u64 - 2);
    match n {
        2 => {}
        1 => {
            out.copy_within(at + 2.., at + 1);
            out.pop();
        }
        _ => drop(out.splice(at..at, std::iter::repeat_n(0, n - 2))),
    }
    out[at..at + n].copy_from_slice(&length[..n]);
}

/// `v` as a varint: its bytes, and how many of them.
fn varint(mut v: u64) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        bytes[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    bytes[n] = v as u8;
    (bytes, n + 1)
}

fn put_span_body(out: &mut Vec<u8>, s: &Span) {
    put_bytes(out, 1, &s.trace_id);
    put_bytes(out, 2, &s.span_id);
    if !s.trace_state.is_empty() {
        put_bytes(out, 3, s.trace_state.as_bytes());
    }
    if let Some(parent) = &s.parent_span_id {
        put_bytes(out, 4, parent);
    }
    if !s.name.is_empty() {
        put_bytes(out, 5, s.name.as_bytes());
    }
    out.extend_from_slice(&[tag(6, VARINT), kind_number(&s.kind) as u8]);
    out.push(tag(7, FIXED64));
    out.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    out.push(tag(8, FIXED64));
    out.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    for KeyValue { key, value } in &s.attributes {
        put_key_value(out, 9, key, value);
    }
    for link in &s.links {
        put_link(out, link);
    }
    if let Status::Error { message } = &s.status {
        put_header(out, 15, status_len(message));
        if !message.is_empty() {
            put_bytes(out, 2, message.as_bytes());
        }
        out.extend_from_slice(&[tag(3, VARINT), 2]);
    }
}

/// InstrumentationScope { name = 1; version = 2 }
pub(crate) const SCOPE_NAME: &str = "gotel";
pub(crate) const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn scope_len() -> usize {
    field_len(SCOPE_NAME.len()) + field_len(SCOPE_VERSION.len())
}

/// An export request encoded a span at a time, as spans arrive: each goes into its process's
/// ResourceSpans at once, on the thread that decoded it, so no span waits as a struct (nor is
/// freed on another thread), and `finish` only writes the headers around the bytes.
#[derive(Default)]
pub struct RequestEncoder {
    groups: Vec<Group>,
    spans: usize,
    /// The span buffers of requests already finished, kept for their capacity.
    spare: Vec<Vec<u8>>,
}

/// One process's spans, in order of arrival.
struct Group {
    resource: Arc<ProcessResource>,
    /// Each span as a whole `ScopeSpans.spans` field.
    spans: Vec<u8>,
}

impl RequestEncoder {
    /// Adds `span` to the request, under its process.
    pub fn push(&mut self, resource: &Arc<ProcessResource>, span: &Span) {
        let same = |g: &Group| Arc::ptr_eq(&g.resource, resource) || g.resource.pid == resource.pid;
        let at = match self.groups.iter().rposition(same) {
            Some(at) => at,
            None => {
                let spans = self.spare.pop().unwrap_or_default();
                self.groups.push(Group { resource: Arc::clone(resource), spans });
                self.groups.len() - 1
            }
        };
        put_span(&mut self.groups[at].spans, span);
        self.spans += 1;
    }

    /// Spans pushed since the last `finish`.
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The request of every span pushed since the last one, grouped by process in order of
    /// first appearance; the next request starts empty.
    pub fn finish(&mut self) -> Vec<u8> {
        let scope_spans_len = |g: &Group| field_len(scope_len()) + g.spans.len();
        // Resource { attributes = 1 }
        let resource_len = |g: &Group| -> usize {
            g.resource.attributes.iter().map(|(k, v)| field_len(key_value_len(k, v))).sum()
        };
        // ResourceSpans { resource = 1; scope_spans = 2 }
        let resource_spans_len =
            |g: &Group| field_len(resource_len(g)) + field_len(scope_spans_len(g));
        // Every length first, so the buffer is allocated once at its exact size: a request of
        // 512 spans is some 200 KB, and growing it cost a copy and fresh pages each time.
        let total = self.groups.iter().map(|g| field_len(resource_spans_len(g))).sum();
        let mut out = Vec::with_capacity(total);
        for mut g in self.groups.drain(..) {
            put_header(&mut out, 1, resource_spans_len(&g));
            put_header(&mut out, 1, resource_len(&g));
            for (k, v) in &g.resource.attributes {
                put_key_value(&mut out, 1, k, v);
            }
            // ScopeSpans { scope = 1; spans = 2 }
            put_header(&mut out, 2, scope_spans_len(&g));
            put_header(&mut out, 1, scope_len());
            put_bytes(&mut out, 1, SCOPE_NAME.as_bytes());
            put_bytes(&mut out, 2, SCOPE_VERSION.as_bytes());
            out.extend_from_slice(&g.spans);
            g.spans.clear();
            self.spare.push(g.spans);
        }
        debug_assert_eq!(out.len(), total, "the lengths computed first are the bytes written");
        self.spans = 0;
        out
    }
}

/// Encodes one export request from spans in arrival order, grouped by their process.
pub fn encode_request(spans: &[(Arc<ProcessResource>, Span)]) -> Vec<u8> {
    let mut request = RequestEncoder::default();
    for (resource, span) in spans {
        request.push(resource, span);
    }
    request.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1 as pb_common;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1 as pb;
    use prost::Message;

    /// The same request through the generated types: the oracle the bytes must equal.
    fn through_generated_types(spans: &[(Arc<ProcessResource>, Span)]) -> Vec<u8> {
        let kv = crate::metrics::key_value;
        let mut groups: Vec<(Arc<ProcessResource>, Vec<pb::Span>)> = Vec::new();
        for (resource, s) in spans {
            let span = pb::Span {
                trace_id: s.trace_id.to_vec(),
                span_id: s.span_id.to_vec(),
                trace_state: s.trace_state.clone(),
                parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
                name: s.name.to_string(),
                kind: kind_number(&s.kind) as i32,
                start_time_unix_nano: s.start_unix_nanos,
                end_time_unix_nano: s.end_unix_nanos,
                attributes: s.attributes.iter().map(|a| kv(a.key, &a.value)).collect(),
                links: s
                    .links
                    .iter()
                    .map(|l| pb::span::Link {
                        trace_id: l.trace_id.to_vec(),
                        span_id: l.span_id.to_vec(),
                        flags: u32::from(l.sampled),
                        ..Default::default()
                    })
                    .collect(),
                status: match &s.status {
                    Status::Unset => None,
                    Status::Error { message } => {
                        Some(pb::Status { message: message.clone(), code: 2 })
                    }
                },
                ..Default::default()
            };
            match groups.iter_mut().find(|(r, _)| r.pid == resource.pid) {
                Some((_, list)) => list.push(span),
                None => groups.push((resource.clone(), vec![span])),
            }
        }
        let resource_spans = groups
            .into_iter()
            .map(|(resource, spans)| pb::ResourceSpans {
                resource: Some(Resource {
                    attributes: resource.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                    ..Default::default()
                }),
                scope_spans: vec![pb::ScopeSpans {
                    scope: Some(pb_common::InstrumentationScope {
                        name: SCOPE_NAME.into(),
                        version: SCOPE_VERSION.into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }.encode_to_vec()
    }

    fn resource(pid: u32, name: &str) -> Arc<ProcessResource> {
        let attributes = vec![
            ("service.name".into(), name.to_string().into()),
            ("process.pid".into(), AttributeValue::Int(i64::from(pid))),
            ("telemetry.sdk.language".into(), "go".into()),
        ];
        Arc::new(ProcessResource { pid, attributes })
    }

    fn a_span(id: u8, status: Status) -> Span {
        Span {
            trace_id: [id; 16],
            span_id: [id; 8],
            parent_span_id: id.is_multiple_of(2).then_some([id + 1; 8]),
            name: format!("GET /x/{id}").into(),
            kind: if id.is_multiple_of(3) { SpanKind::Client } else { SpanKind::Server },
            start_unix_nanos: 1_700_000_000_000_000_000 + u64::from(id),
            end_unix_nanos: 1_700_000_000_000_500_000 + u64::from(id),
            attributes: vec![
                KeyValue::new("http.response.status_code", 500),
                KeyValue::new("url.path", "/x".repeat(usize::from(id) * 40)),
                KeyValue::new("client.port", -1),
                KeyValue::new("tls", AttributeValue::Bool(id.is_multiple_of(2))),
            ],
            status,
            trace_state: if id == 3 { "vendor=x".into() } else { String::new() },
            links: (0..id % 3)
                .map(|n| Link { trace_id: [n; 16], span_id: [id; 8], sampled: n == 1 })
                .collect(),
        }
    }

    #[test]
    fn bytes_equal_the_generated_encoders() {
        let (a, b) = (resource(1, "a"), resource(2, "b"));
        let spans = vec![
            (a.clone(), a_span(1, Status::Unset)),
            (b.clone(), a_span(2, Status::Error { message: String::new() })),
            (a.clone(), a_span(3, Status::Error { message: "transport error".into() })),
            (b.clone(), a_span(4, Status::Unset)),
        ];
        let bytes = encode_request(&spans);
        assert_eq!(bytes, through_generated_types(&spans));
        assert_eq!(bytes.capacity(), bytes.len(), "allocated once, at its size");
        assert_eq!(encode_request(&[]), through_generated_types(&[]));
    }

    #[test]
    fn spans_whose_length_takes_one_two_or_three_bytes_are_encoded_alike() {
        let r = resource(1, "a");
        let mut short = a_span(1, Status::Unset);
        short.attributes.clear();
        let mut long = a_span(2, Status::Unset);
        long.attributes.push(KeyValue::new("url.query", "q".repeat(20_000)));
        let spans = vec![(r.clone(), short), (r.clone(), a_span(3, Status::Unset)), (r, long)];
        assert_eq!(encode_request(&spans), through_generated_types(&spans));
    }

    #[test]
    fn an_encoder_used_again_writes_each_request_whole() {
        let (a, b) = (resource(1, "a"), resource(2, "b"));
        let first =
            vec![(a.clone(), a_span(1, Status::Unset)), (b.clone(), a_span(2, Status::Unset))];
        let second =
            vec![(b.clone(), a_span(3, Status::Unset)), (a.clone(), a_span(4, Status::Unset))];
        let mut encoder = RequestEncoder::default();
        for spans in [&first, &second] {
            for (resource, span) in spans {
                encoder.push(resource, span);
            }
            assert_eq!(encoder.len(), spans.len());
            assert_eq!(encoder.finish(), through_generated_types(spans));
            assert!(encoder.is_empty());
        }
    }

    #[test]
    fn the_collector_reads_what_is_written() {
        let spans = vec![(resource(7, "shop"), a_span(5, Status::Unset))];
        let req = ExportTraceServiceRequest::decode(&encode_request(&spans)[..]).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "GET /x/5");
        assert_eq!(span.attributes.len(), 4);
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_000_000_005);
    }
}
