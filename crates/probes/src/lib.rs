//! gotel's BPF side: the C programs in `bpf/`, what each needs from an executable (its plan),
//! and loading and attaching them. Planning needs no privileges; attaching needs root (or
//! CAP_BPF + CAP_PERFMON).

pub mod event;
pub mod http_server;
mod shared;
mod skel;

use goinfo::GoBinary;

pub use shared::{ProbeStats, SharedMaps};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        source: libbpf_rs::Error,
    },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSource {
    Dwarf,
}

impl std::fmt::Display for OffsetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OffsetSource::Dwarf => "DWARF",
        })
    }
}

/// One struct field an instrumentation reads, and where it lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldOffset {
    pub struct_name: &'static str,
    pub field: &'static str,
    pub required: bool,
    /// None: absent from this binary (allowed only for optional fields).
    pub offset: Option<u64>,
    pub source: Option<OffsetSource>,
}

/// Resolves (struct, field, required) triples; fails naming the first required field missing.
pub(crate) fn resolve_fields(
    bin: &GoBinary,
    wanted: &[(&'static str, &'static str, bool)],
) -> Result<Vec<FieldOffset>, String> {
    let mut structs: Vec<&str> = wanted.iter().map(|w| w.0).collect();
    structs.dedup();
    let layouts = bin.struct_layouts(&structs).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(wanted.len());
    for &(struct_name, field, required) in wanted {
        let offset = layouts
            .get(struct_name)
            .and_then(|fields| fields.get(field))
            .copied();
        if required && offset.is_none() {
            return Err(format!("field {struct_name}.{field} not found in DWARF"));
        }
        let source = offset.map(|_| http_server::field_source());
        out.push(FieldOffset {
            struct_name,
            field,
            required,
            offset,
            source,
        });
    }
    Ok(out)
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

/// Every instrumentation's plan for `bin`, in one table (for `gotel inspect` and attach).
#[derive(Debug)]
pub struct Plans {
    pub http_server: Result<http_server::HttpServerPlan, Skip>,
}

pub fn plan_all(bin: &GoBinary) -> Plans {
    Plans {
        http_server: http_server::plan(bin),
    }
}
