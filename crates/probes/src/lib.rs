//! gotel's BPF side: the C programs in `bpf/`, what each needs from an executable (its plan),
//! and loading and attaching them. Planning needs no privileges; attaching needs root (or
//! CAP_BPF + CAP_PERFMON).

mod attach;
pub mod event;
pub mod execs;
pub mod goroutines;
pub mod grpc_client;
pub mod grpc_server;
pub mod http_client;
pub mod http_server;
pub mod inject;
mod sampler;
mod shared;
mod skel;

use goinfo::{Function, GoBinary};
use offsets::{FieldOffset, FieldSpec};

pub use attach::Attached;
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

/// Why an instrumentation does not apply to an executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub instrumentation: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.instrumentation, self.reason)
    }
}

/// Go before 1.17 passes arguments on the stack; our programs read Go's register ABI.
pub(crate) fn require_register_abi(bin: &GoBinary) -> Result<(), String> {
    match bin.build_info().go_semver() {
        Some((1, minor, _)) if minor < 17 => Err(format!(
            "built with {}; gotel needs Go 1.17 or later (register ABI)",
            bin.build_info().go_version
        )),
        _ => Ok(()),
    }
}

/// A function to probe: its entry, its stack-check jump if it has one, and every RET.
#[derive(Debug, Clone)]
pub struct FunctionPlan {
    pub function: Function,
    /// File offset of the prologue's stack-check jump: a cheaper entry probe.
    pub stack_check: Option<u64>,
    pub return_offsets: Vec<u64>,
}

impl FunctionPlan {
    fn new(bin: &GoBinary, name: &str) -> Result<Self, String> {
        let plan = Self::entry_only(bin, name)?;
        if plan.return_offsets.is_empty() {
            return Err(format!("no RET instruction found in {name}"));
        }
        Ok(plan)
    }

    /// A function probed only where it starts (its RETs are not required).
    fn entry_only(bin: &GoBinary, name: &str) -> Result<Self, String> {
        let function = bin.function(name).map_err(|_| format!("{name} is not in the binary"))?;
        let stack_check = bin.stack_check_offset(&function);
        let return_offsets = bin.ret_offsets(&function);
        Ok(FunctionPlan { function, stack_check, return_offsets })
    }

    /// The first of `names` the binary has (functions renamed across Go versions).
    fn first_of(bin: &GoBinary, names: &[&str]) -> Option<Self> {
        names.iter().find_map(|n| Self::entry_only(bin, n).ok())
    }
}

/// Where probes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On instructions the kernel emulates where the machine code allows (a function's
    /// stack-check jump; the entry of a function every request ends in), else entry and RETs.
    #[default]
    Emulated,
    /// Always the first instruction and every RET: the reference tools' way, for comparison.
    EntryRet,
}

/// (offset of the *netFD in a net.TCPConn, offset of the fd number in a netFD), when known.
fn conn_offsets(fields: &[FieldOffset]) -> Option<(u64, u64)> {
    let f = |s, f| offset_of(fields, s, f);
    Some((
        f("net.TCPConn", "conn")? + f("net.conn", "fd")?,
        f("net.netFD", "pfd")? + f("internal/poll.FD", "Sysfd")?,
    ))
}

fn offset_of(fields: &[FieldOffset], struct_name: &str, field: &str) -> Option<u64> {
    fields
        .iter()
        .find(|f| f.spec.struct_name == struct_name && f.spec.field == field)
        .and_then(|f| f.offset)
}

/// Every instrumentation's plan for `bin`, in one table (for `gotel inspect` and attach).
#[derive(Debug)]
pub struct Plans {
    pub http_server: Result<http_server::HttpServerPlan, Skip>,
    pub http_client: Result<http_client::HttpClientPlan, Skip>,
    pub grpc_server: Result<grpc_server::GrpcServerPlan, Skip>,
    pub grpc_client: Result<grpc_client::GrpcClientPlan, Skip>,
    /// Needed only where something can be a child of a span started on another goroutine.
    pub goroutines: Result<goroutines::GoroutinesPlan, Skip>,
}

pub fn plan_all(bin: &GoBinary) -> Plans {
    // DWARF and the type descriptors are read once, for every instrumentation's fields.
    let layouts = offsets::Layouts::load(bin, &declared_fields());
    Plans {
        http_server: http_server::plan(bin, &layouts),
        http_client: http_client::plan(bin, &layouts),
        grpc_server: grpc_server::plan(bin),
        grpc_client: grpc_client::plan(bin),
        goroutines: goroutines::plan(bin, &layouts),
    }
}

/// Every standard-library struct field any instrumentation reads: what the offsets database
/// must cover. (Third-party modules' fields, gRPC's, come from the binary itself for now.)
pub fn declared_fields() -> Vec<FieldSpec> {
    let mut all: Vec<FieldSpec> = Vec::new();
    for spec in http_server::FIELDS.iter().chain(http_client::FIELDS).chain(goroutines::FIELDS) {
        if !all.contains(spec) {
            all.push(*spec);
        }
    }
    all
}
