//! gotel's instrumentations and what they share. Each instrumentation is one folder under
//! `instrumentations/`, holding its BPF C, its plan (what it needs from an executable, decided
//! without privileges), its attachment, its event layout and the semantic conventions its
//! spans follow; `instrumentations::ALL` lists them, and everything else iterates that list.
//! Shared here: the BPF headers (`bpf/include`), loading and attaching, the maps every program
//! uses, the sampler, event decoding and span assembly, and the propagation to other hosts.
//! Planning needs no privileges; attaching needs root (or CAP_BPF + CAP_PERFMON).

mod assemble;
mod attach;
pub mod event;
pub mod execs;
pub mod inject;
mod instrumentation;
pub mod instrumentations;
mod load;
mod plan;
mod registry;
mod sampler;
mod semconv;
mod shared;

pub use assemble::{Assembled, Assembler, EventError};
pub use attach::Attached;
pub use instrumentation::{
    AttachContext, Depends, Events, Instrumentation, Plan, Report, Skip, SpanOptions, Target,
    REGISTER_ABI,
};
pub use plan::{CallReturn, FunctionPlan, Placement};
pub use registry::{declared_fields, plan_all, Planned, Selection};
pub use sampler::{RootSampler, Sampler, SamplerError};
pub use shared::{ProbeStats, SharedMaps, DEFAULT_RINGBUF_MIB};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Bpf { what: String, source: libbpf_rs::Error },
    #[error("{what}")]
    Internal { what: String },
}

/// How programs are attached.
#[derive(Debug, Clone, Copy)]
pub struct AttachOptions {
    /// Trace only pids in the shared set (`run`, `attach --pid`); else every process of the file.
    pub filter_pids: bool,
    /// One uprobe_multi link for all RETs of a function (Linux 6.6+); false forces one uprobe
    /// per RET, the fallback for older kernels.
    pub uprobe_multi: bool,
    pub sampler: Sampler,
    /// Spans the sampler dropped still write their events (marked unsampled), so that metrics
    /// count every request.
    pub events_for_unsampled: bool,
    /// Outgoing traceparent injection is on: clients mark their processes for it.
    pub inject: bool,
    pub placement: Placement,
}

/// Wraps a libbpf error with what failed, in which instrumentation, on which file.
fn bpf_error(
    instrumentation: &str,
    path: &std::path::Path,
    what: &str,
) -> impl FnOnce(libbpf_rs::Error) -> Error {
    let what = format!("{what} ({instrumentation}, {})", path.display());
    move |source| Error::Bpf { what, source }
}
