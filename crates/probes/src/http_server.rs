//! net/http server spans: planning (which function, which RETs, which field offsets) and
//! attachment of `bpf/http_server.bpf.c` to one executable.

use std::mem::MaybeUninit;
use std::path::Path;

use goinfo::GoBinary;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use offsets::{FieldOffset, FieldSpec};

use crate::skel::http_server::HttpServerSkelBuilder;
use crate::{AttachOptions, Attached, Error, FunctionPlan, SharedMaps, Skip};

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
    // The connection, for same-host parents: response.conn.rwc -> *net.TCPConn -> fd.
    FieldSpec::std("net/http.response", "conn", false),
    FieldSpec::std("net/http.conn", "rwc", false),
    FieldSpec::std("net.TCPConn", "conn", false),
    FieldSpec::std("net.conn", "fd", false),
    FieldSpec::std("net.netFD", "pfd", false),
    FieldSpec::std("internal/poll.FD", "Sysfd", false),
];

/// Everything needed to attach to one executable, resolved without privileges.
#[derive(Debug, Clone)]
pub struct HttpServerPlan {
    pub serve: FunctionPlan,
    pub fields: Vec<FieldOffset>,
}

/// Decides whether and how the net/http server instrumentation applies to `bin`.
pub fn plan(bin: &GoBinary) -> Result<HttpServerPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    crate::require_register_abi(bin).map_err(skip)?;
    let serve = FunctionPlan::new(bin, ENTRY).map_err(skip)?;
    let fields = offsets::resolve(bin, FIELDS).map_err(skip)?;
    Ok(HttpServerPlan { serve, fields })
}

/// Loads the program with the plan's offsets and attaches it to `path` (the executable, or
/// /proc/PID/exe for a process's).
pub fn attach(
    plan: &HttpServerPlan,
    path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<Attached, Error> {
    let bpf = |what: &str| {
        let what = format!("{what} ({NAME}, {})", path.display());
        move |source| Error::Bpf { what, source }
    };
    let offset = |s, f| crate::offset_of(&plan.fields, s, f);
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = HttpServerSkelBuilder::default().open(&mut storage).map_err(bpf("open"))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::Internal { what: "http_server object has no .rodata".into() })?;
    let req = |f| offset("net/http.Request", f).unwrap_or(0);
    ro.filter_pids = options.filter_pids;
    ro.off_req_method = req("Method");
    ro.off_req_url = req("URL");
    ro.off_req_proto_major = req("ProtoMajor");
    ro.off_req_proto_minor = req("ProtoMinor");
    ro.off_req_host = req("Host");
    ro.off_req_remote_addr = req("RemoteAddr");
    ro.off_req_tls = req("TLS");
    if let Some(p) = offset("net/http.Request", "Pattern") {
        ro.has_pattern = true;
        ro.off_req_pattern = p;
    }
    ro.off_url_path = offset("net/url.URL", "Path").unwrap_or(0);
    ro.off_url_raw_query = offset("net/url.URL", "RawQuery").unwrap_or(0);
    ro.off_response_status = offset("net/http.response", "status").unwrap_or(0);
    let h2 = (
        offset("net/http.http2responseWriter", "rws"),
        offset("net/http.http2responseWriterState", "status"),
    );
    if let (Some(rws), Some(status)) = h2 {
        ro.has_h2 = true;
        ro.off_h2rw_rws = rws;
        ro.off_h2rws_status = status;
    }
    if let (Some(conn), Some(rwc), Some(conn_offsets)) = (
        offset("net/http.response", "conn"),
        offset("net/http.conn", "rwc"),
        crate::conn_offsets(&plan.fields),
    ) {
        ro.off_response_conn = conn;
        ro.off_conn_rwc_data = rwc + 8; // an interface's data word follows its itab
        (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
        ro.has_conn_offsets = true;
    }
    shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    attached.function(
        path,
        &plan.serve.function,
        &plan.serve.return_offsets,
        &p.http_server_enter,
        &p.http_server_return_multi,
        &p.http_server_return_single,
        options.uprobe_multi,
    )?;
    // The links hold the programs, and the programs their maps: the object itself can go.
    Ok(attached)
}
