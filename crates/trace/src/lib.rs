//! The span model every instrumentation produces and every exporter consumes, the clock that
//! turns probe times into wall-clock times, and the resource of the process each span came
//! from. Plain data: it depends on nothing else of gotel's.

mod clock;
pub mod metric;
mod resource;
mod span;

pub use clock::MonotonicClock;
pub use metric::{DurationMetric, DurationUnit, Shape};
pub use resource::{
    parse_resource_attributes, AgentIdentity, ProcessHints, ProcessResource, ResourceCache,
};
pub use span::{AttributeValue, KeyValue, Link, Span, SpanKind, Status};
