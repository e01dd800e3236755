//! Where finished spans go: the terminal view (the default) and OTLP over gRPC or HTTP; and
//! the metrics counted from them, over OTLP and in the Prometheus text format.

pub mod console;
mod encode;
pub mod metrics;
pub mod otlp;
mod summary;

pub use encode::{encode_request, RequestEncoder};
