//! net/http server spans: planning (which function, which RETs, which field offsets) and
//! attachment of `bpf/http_server.bpf.c` to one executable.

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use goinfo::{Function, GoBinary};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject, UprobeMultiOpts};

use crate::skel::HttpServerSkelBuilder;
use offsets::{FieldOffset, FieldSpec};

use crate::{AttachOptions, Error, SharedMaps, Skip};

pub const NAME: &str = "net/http server";
const ENTRY: &str = "net/http.serverHandler.ServeHTTP";

/// The fields the program reads. Optional ones only enrich the span.
pub const FIELDS: &[FieldSpec] = &[
    FieldSpec::std("net/http.Request", "Method", true),
    FieldSpec::std("net/http.Request", "URL", true),
    FieldSpec::std("net/http.Request", "ProtoMajor", true),
    FieldSpec::std("net/http.Request", "ProtoMinor", true),
    FieldSpec::std("net/http.Request", "Host", true),
    FieldSpec::std("net/http.Request", "RemoteAddr", true),
    FieldSpec::std("net/http.Request", "TLS", true),
    FieldSpec::std("net/http.Request", "Pattern", false),
    FieldSpec::std("net/url.URL", "Path", true),
    FieldSpec::std("net/url.URL", "RawQuery", true),
    FieldSpec::std("net/http.response", "status", true),
    // HTTP/2 (Go before 1.27; 1.27 renamed the writer): without them HTTP/2 spans lack a status.
    FieldSpec::std("net/http.http2responseWriter", "rws", false),
    FieldSpec::std("net/http.http2responseWriterState", "status", false),
];

/// Everything needed to attach to one executable, resolved without privileges.
#[derive(Debug, Clone)]
pub struct HttpServerPlan {
    pub executable: PathBuf,
    pub entry: Function,
    pub return_offsets: Vec<u64>,
    pub fields: Vec<FieldOffset>,
}

impl HttpServerPlan {
    fn offset(&self, struct_name: &str, field: &str) -> Option<u64> {
        self.fields
            .iter()
            .find(|f| f.spec.struct_name == struct_name && f.spec.field == field)
            .and_then(|f| f.offset)
    }
}

/// Decides whether and how the net/http server instrumentation applies to `bin`.
pub fn plan(bin: &GoBinary) -> Result<HttpServerPlan, Skip> {
    let skip = |reason: String| Skip {
        instrumentation: NAME,
        reason,
    };
    crate::require_register_abi(bin).map_err(skip)?;
    let entry = bin.function(ENTRY).map_err(|_| {
        skip(format!(
            "{ENTRY} is not in the binary (net/http server not linked)"
        ))
    })?;
    let return_offsets = bin.ret_offsets(&entry);
    if return_offsets.is_empty() {
        return Err(skip(format!("no RET instruction found in {ENTRY}")));
    }
    let fields = offsets::resolve(bin, FIELDS).map_err(skip)?;
    Ok(HttpServerPlan {
        executable: bin.path().to_path_buf(),
        entry,
        return_offsets,
        fields,
    })
}

/// The live probes of one executable. Dropping it detaches them.
pub struct AttachedHttpServer {
    pub plan: HttpServerPlan,
    /// True when all RETs share one uprobe_multi link.
    pub multi: bool,
    _links: Vec<Link>,
}

/// Loads the program with the plan's offsets and attaches it to `attach_path` (the executable,
/// or /proc/PID/exe for a process's).
pub fn attach(
    plan: &HttpServerPlan,
    attach_path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<AttachedHttpServer, Error> {
    let AttachOptions {
        filter_pids,
        uprobe_multi,
    } = options;
    let bpf = |what: &str| {
        let what = format!("{what} ({NAME}, {})", plan.executable.display());
        move |source| Error::Bpf { what, source }
    };
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = HttpServerSkelBuilder::default()
        .open(&mut storage)
        .map_err(bpf("open"))?;
    {
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| Error::Internal {
                what: "http_server object has no .rodata".into(),
            })?;
        let req = |f| plan.offset("net/http.Request", f).unwrap_or(0);
        ro.filter_pids = filter_pids;
        ro.off_req_method = req("Method");
        ro.off_req_url = req("URL");
        ro.off_req_proto_major = req("ProtoMajor");
        ro.off_req_proto_minor = req("ProtoMinor");
        ro.off_req_host = req("Host");
        ro.off_req_remote_addr = req("RemoteAddr");
        ro.off_req_tls = req("TLS");
        if let Some(p) = plan.offset("net/http.Request", "Pattern") {
            ro.has_pattern = true;
            ro.off_req_pattern = p;
        }
        ro.off_url_path = plan.offset("net/url.URL", "Path").unwrap_or(0);
        ro.off_url_raw_query = plan.offset("net/url.URL", "RawQuery").unwrap_or(0);
        ro.off_response_status = plan.offset("net/http.response", "status").unwrap_or(0);
        let h2 = (
            plan.offset("net/http.http2responseWriter", "rws"),
            plan.offset("net/http.http2responseWriterState", "status"),
        );
        if let (Some(rws), Some(status)) = h2 {
            ro.has_h2 = true;
            ro.off_h2rw_rws = rws;
            ro.off_h2rws_status = status;
        }
    }
    let maps = &mut open.maps;
    shared.reuse_in(&mut maps.events, &mut maps.traced_pids, &mut maps.stats)?;
    let skel = open.load().map_err(bpf("load"))?;

    let mut links = Vec::with_capacity(plan.return_offsets.len() + 1);
    let entry = usize::try_from(plan.entry.file_offset).unwrap_or(usize::MAX);
    links.push(
        skel.progs
            .http_server_enter
            .attach_uprobe(false, -1, attach_path, entry)
            .map_err(bpf(&format!("attach uprobe at {ENTRY} entry")))?,
    );
    let offsets: Vec<usize> = plan
        .return_offsets
        .iter()
        .map(|&o| usize::try_from(o).unwrap_or(usize::MAX))
        .collect();
    let opts = UprobeMultiOpts {
        offsets: offsets.clone(),
        ..Default::default()
    };
    let multi_link = if uprobe_multi {
        let progs = &skel.progs;
        progs
            .http_server_return_multi
            .attach_uprobe_multi_with_opts(-1, attach_path, "", opts)
    } else {
        Err(libbpf_rs::Error::from(std::io::Error::other(
            "turned off by --no-uprobe-multi",
        )))
    };
    let multi = match multi_link {
        Ok(link) => {
            links.push(link);
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "no uprobe_multi link: one uprobe per RET");
            for &off in &offsets {
                links.push(
                    skel.progs
                        .http_server_return_single
                        .attach_uprobe(false, -1, attach_path, off)
                        .map_err(bpf(&format!("attach uprobe at {ENTRY}+RET {off:#x}")))?,
                );
            }
            false
        }
    };
    // The links hold the programs, and the programs their maps: the object itself can go.
    Ok(AttachedHttpServer {
        plan: plan.clone(),
        multi,
        _links: links,
    })
}

impl std::fmt::Debug for AttachedHttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedHttpServer")
            .field("executable", &self.plan.executable)
            .field("multi", &self.multi)
            .field("links", &self._links.len())
            .finish()
    }
}
