//! The span model handed to exporters: plain data, no SDK.

use std::borrow::Cow;

/// Strings are `Cow`: the many constant values ("http", "GET", "1.1") cost no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttributeValue {
    String(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for AttributeValue {
    fn from(s: &'static str) -> Self {
        AttributeValue::String(Cow::Borrowed(s))
    }
}
impl From<Cow<'static, str>> for AttributeValue {
    fn from(s: Cow<'static, str>) -> Self {
        AttributeValue::String(s)
    }
}
impl From<String> for AttributeValue {
    fn from(s: String) -> Self {
        AttributeValue::String(Cow::Owned(s))
    }
}
impl From<i64> for AttributeValue {
    fn from(v: i64) -> Self {
        AttributeValue::Int(v)
    }
}

impl std::fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttributeValue::String(s) => f.write_str(s),
            AttributeValue::Int(v) => write!(f, "{v}"),
            AttributeValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyValue {
    pub key: &'static str,
    pub value: AttributeValue,
}

impl KeyValue {
    pub fn new(key: &'static str, value: impl Into<AttributeValue>) -> Self {
        KeyValue { key, value: value.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error { message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// None for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    /// Unix epoch nanoseconds.
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
    /// W3C tracestate from the caller, kept as received.
    pub trace_state: String,
    /// Other spans this one is causally related to but not a child of.
    pub links: Vec<Link>,
}

/// A span of another (or the same) trace: for a client span, the context a traceparent the
/// program already carried named, which the server at the other end continues instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The W3C sampled flag the linked context carried.
    pub sampled: bool,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
    }

    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos)
    }
}
