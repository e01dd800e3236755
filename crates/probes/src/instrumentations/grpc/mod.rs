//! google.golang.org/grpc: its server and its client, what both read of grpc-go (`grpc.h`: the
//! transport stream and a finished RPC's status), and the RPC semantic conventions for gRPC
//! both follow. Layout changes across versions: `fixtures/grpc/RESEARCH.md`.

pub mod client;
pub mod server;

use std::borrow::Cow;

use offsets::{FieldOffset, FieldSpec};
use trace::KeyValue;

use crate::plan::offset_of;
use crate::Target;

const MODULE: &str = "google.golang.org/grpc";
const GENPROTO: &str = "google.golang.org/genproto/googleapis/rpc";

/// The versions both sides support: from 1.14, where the transport became internal/transport.
const TARGET: Target = Target::Module { path: MODULE, oldest: (1, 14) };

const STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
/// The *status.Status a stream's final status is, by the packages it has lived in
/// (internal/status from 1.29; the public type is an alias of it since).
const STATUS: [&str; 2] =
    ["google.golang.org/grpc/internal/status.Status", "google.golang.org/grpc/status.Status"];
const SPB_STATUS: &str = "google.golang.org/genproto/googleapis/rpc/status.Status";

/// A field of a struct in `module`; its offset comes from the binary (DWARF or type
/// descriptors).
const fn field(
    module: &'static str,
    s: &'static str,
    f: &'static str,
    required: bool,
) -> FieldSpec {
    FieldSpec { module, struct_name: s, field: f, required }
}

/// The status fields both sides list: `s`, the *spb.Status, under either name.
const STATUS_FIELDS: [FieldSpec; 2] =
    [field(MODULE, STATUS[0], "s", false), field(MODULE, STATUS[1], "s", false)];

/// Status.s's offset, from whichever package the binary's Status is in.
fn status_s(fields: &[FieldOffset], grpc_version: &str) -> Result<u64, String> {
    STATUS.iter().find_map(|s| offset_of(fields, s, "s")).ok_or_else(|| {
        format!("neither {} nor {} has an s field (grpc {grpc_version})", STATUS[0], STATUS[1])
    })
}

/// How a stream pointer holds transport.Stream's fields (grpc.h's stream_embedding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEmbedding {
    /// grpc before 1.69: a *transport.Stream.
    Direct,
    /// grpc 1.69 to 1.76: a *ServerStream or *ClientStream embedding a *Stream.
    Pointer { at: u64 },
    /// grpc 1.77 on: one embedding the Stream by value.
    Value { at: u64 },
}

impl StreamEmbedding {
    /// (stream_embedding, offset of the embedded Stream) as the programs read them.
    fn rodata(self) -> (u8, u64) {
        match self {
            StreamEmbedding::Direct => (0, 0),
            StreamEmbedding::Pointer { at } => (1, at),
            StreamEmbedding::Value { at } => (2, at),
        }
    }
}

const CODE_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_name(code: i32) -> &'static str {
    usize::try_from(code).ok().and_then(|c| CODE_NAMES.get(c)).copied().unwrap_or("UNKNOWN")
}

/// Whether `code` can be a gRPC status code.
fn is_status_code(code: i32) -> bool {
    (0..CODE_NAMES.len() as i32).contains(&code)
}

/// "/pkg.Service/Method" -> ("pkg.Service", "Method"), if it has that shape.
fn service_and_method(full: &str) -> Option<(&str, &str)> {
    let (service, method) = full.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

/// rpc.system, rpc.service and rpc.method; returns the span name.
fn push_rpc(attrs: &mut Vec<KeyValue>, full_method: &str) -> Cow<'static, str> {
    attrs.push(KeyValue::new("rpc.system", "grpc"));
    match service_and_method(full_method) {
        Some((service, method)) => {
            attrs.push(KeyValue::new("rpc.service", service.to_string()));
            attrs.push(KeyValue::new("rpc.method", method.to_string()));
            format!("{service}/{method}").into()
        }
        None => "grpc".into(),
    }
}

/// Why a method read cannot be a gRPC method, if it cannot.
fn implausible_method(method: &str) -> Option<String> {
    (!method.starts_with('/')).then(|| format!("gRPC method {method:?} does not start with /"))
}
