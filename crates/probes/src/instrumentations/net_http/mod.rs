//! net/http: its server and its client, and the HTTP semantic conventions (stable since
//! semconv 1.23) both follow.

pub mod client;
mod header_map;
pub mod server;

use std::borrow::Cow;

use trace::KeyValue;

const KNOWN_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"];

/// The method as the conventions' constant, None for one they do not know.
fn known_method(method: &str) -> Option<&'static str> {
    KNOWN_METHODS.iter().copied().find(|m| *m == method)
}

/// http.request.method, as _OTHER plus the original for a method the conventions do not know.
fn push_method(attrs: &mut Vec<KeyValue>, method: &str, known: Option<&'static str>) {
    if let Some(method) = known {
        attrs.push(KeyValue::new("http.request.method", method));
    } else {
        attrs.push(KeyValue::new("http.request.method", "_OTHER"));
        attrs.push(KeyValue::new("http.request.method_original", method.to_string()));
    }
}

/// network.protocol.version: constants for the versions there are.
fn protocol_version(major: u8, minor: u8) -> Cow<'static, str> {
    match (major, minor) {
        (1, 1) => "1.1".into(),
        (1, 0) => "1.0".into(),
        (2, _) => "2".into(),
        (3, _) => "3".into(),
        (major, minor) => format!("{major}.{minor}").into(),
    }
}

/// Whether `method` can be an HTTP method (a token): a read at wrong offsets rarely is.
fn is_token(method: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !method.is_empty() && method.bytes().all(token)
}
