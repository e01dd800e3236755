//! Where finished spans go: the terminal view (the default) and OTLP over gRPC or HTTP.

pub mod console;
mod encode;
pub mod otlp;

pub use encode::encode_request;
