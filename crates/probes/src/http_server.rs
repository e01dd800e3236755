//! net/http server spans: planning (which function, which RETs, which field offsets) and
//! attachment of `bpf/http_server.bpf.c` to one executable.

use std::mem::MaybeUninit;
use std::path::Path;

use goinfo::GoBinary;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use offsets::{FieldOffset, FieldSpec};

use crate::skel::http_server::HttpServerSkelBuilder;
use crate::{AttachOptions, Attached, Error, FunctionPlan, Placement, SharedMaps, Skip};

pub const NAME: &str = "net/http server";
const ENTRY: &str = "net/http.serverHandler.ServeHTTP";
/// Every HTTP/1 request served ends here, on the serving goroutine, right after ServeHTTP.
const HTTP1_END: &str = "net/http.(*response).finishRequest";
/// Every HTTP/2 request ends here (the package moved in Go 1.27).
const HTTP2_END: &[&str] = &[
    "net/http.(*http2responseWriter).handlerDone",
    "net/http/internal/http2.(*responseWriter).handlerDone",
];

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
    // Request headers, for an incoming traceparent: a bucket map before Go 1.24, swiss after.
    FieldSpec::std("net/http.Request", "Header", false),
    FieldSpec::std("runtime.hmap", "B", false),
    FieldSpec::std("runtime.hmap", "buckets", false),
    FieldSpec::std("internal/runtime/maps.Map", "dirPtr", false),
    FieldSpec::std("internal/runtime/maps.Map", "dirLen", false),
    FieldSpec::std("internal/runtime/maps.table", "groups", false),
    FieldSpec::std("internal/runtime/maps.groupsReference", "data", false),
    FieldSpec::std("internal/runtime/maps.groupsReference", "lengthMask", false),
];

/// How Request.Header is laid out in memory, as the BPF side reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMap {
    /// runtime.hmap: B and buckets.
    Buckets { b: u64, buckets: u64 },
    /// internal/runtime/maps: Map.dirPtr, Map.dirLen, table.groups, groupsReference.data and
    /// .lengthMask.
    Swiss { dir_ptr: u64, dir_len: u64, groups: u64, data: u64, length_mask: u64 },
}

/// Everything needed to attach to one executable, resolved without privileges.
#[derive(Debug, Clone)]
pub struct HttpServerPlan {
    pub serve: FunctionPlan,
    /// Where HTTP/1 and HTTP/2 requests end, for exit probes cheaper than ServeHTTP's RETs.
    pub request_ends: Option<(FunctionPlan, FunctionPlan)>,
    pub fields: Vec<FieldOffset>,
    /// None: incoming traceparent headers are not read.
    pub header_map: Option<HeaderMap>,
}

/// Decides whether and how the net/http server instrumentation applies to `bin`.
/// `layouts` must have been loaded for at least FIELDS.
pub fn plan(bin: &GoBinary, layouts: &offsets::Layouts) -> Result<HttpServerPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    crate::require_register_abi(bin).map_err(skip)?;
    let serve = FunctionPlan::new(bin, ENTRY).map_err(skip)?;
    let fields = offsets::resolve(bin, layouts, FIELDS).map_err(skip)?;
    for s in ["net/http.Request", "net/url.URL"] {
        if copy_bytes(&fields, s) > WINDOW_BYTES {
            return Err(skip(format!(
                "{s} fields lie past the {WINDOW_BYTES} bytes the probe copies"
            )));
        }
    }
    let header_map = header_map(bin, &fields);
    let request_ends =
        FunctionPlan::first_of(bin, &[HTTP1_END]).zip(FunctionPlan::first_of(bin, HTTP2_END));
    Ok(HttpServerPlan { serve, request_ends, fields, header_map })
}

/// The probe copies the head of a struct in one read (`struct window` in gotel.h).
const WINDOW_BYTES: u64 = 320;

/// Bytes of `struct_name` to copy so every field read from it is inside: the last one's
/// offset plus a string's 16 bytes.
fn copy_bytes(fields: &[FieldOffset], struct_name: &str) -> u64 {
    fields
        .iter()
        .filter(|f| f.spec.struct_name == struct_name)
        .filter_map(|f| f.offset)
        .map(|o| o + 16)
        .max()
        .unwrap_or(0)
}

fn header_map(bin: &GoBinary, fields: &[FieldOffset]) -> Option<HeaderMap> {
    let f = |s, f| crate::offset_of(fields, s, f);
    f("net/http.Request", "Header")?;
    let no_swiss = bin
        .build_info()
        .settings
        .iter()
        .any(|(k, v)| k == "GOEXPERIMENT" && v.split(',').any(|e| e == "noswissmap"));
    let swiss = || {
        Some(HeaderMap::Swiss {
            dir_ptr: f("internal/runtime/maps.Map", "dirPtr")?,
            dir_len: f("internal/runtime/maps.Map", "dirLen")?,
            groups: f("internal/runtime/maps.table", "groups")?,
            data: f("internal/runtime/maps.groupsReference", "data")?,
            length_mask: f("internal/runtime/maps.groupsReference", "lengthMask")?,
        })
    };
    let buckets = || {
        Some(HeaderMap::Buckets {
            b: f("runtime.hmap", "B")?,
            buckets: f("runtime.hmap", "buckets")?,
        })
    };
    if no_swiss {
        buckets()
    } else {
        swiss().or_else(buckets)
    }
}

/// Loads the program with the plan's offsets and attaches it to `path` (the executable, or
/// /proc/PID/exe for a process's).
pub fn attach(
    plan: &HttpServerPlan,
    path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<Attached, Error> {
    let bpf = |what: &str| crate::bpf_error(NAME, path, what);
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
    (ro.sampler, ro.sampler_threshold) = options.sampler.rodata();
    ro.sampler_parent_based = options.sampler.parent_based;
    ro.req_copy_bytes = copy_bytes(&plan.fields, "net/http.Request") as u32;
    ro.url_copy_bytes = copy_bytes(&plan.fields, "net/url.URL") as u32;
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
    if let Some(header) = offset("net/http.Request", "Header") {
        ro.off_req_header = header;
        match plan.header_map {
            Some(HeaderMap::Buckets { b, buckets }) => {
                ro.map_layout = 1;
                (ro.off_hmap_b, ro.off_hmap_buckets) = (b, buckets);
            }
            Some(HeaderMap::Swiss { dir_ptr, dir_len, groups, data, length_mask }) => {
                ro.map_layout = 2;
                (ro.off_swiss_dir_ptr, ro.off_swiss_dir_len) = (dir_ptr, dir_len);
                ro.off_table_groups = groups;
                (ro.off_groups_data, ro.off_groups_length_mask) = (data, length_mask);
            }
            None => {}
        }
    }
    shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    match (&plan.request_ends, options.placement) {
        (Some((h1, h2)), Placement::Emulated) => {
            // The span ends where the request does: the exit program at two function
            // entries, instead of a single-stepped RET.
            let how = attached.entry(path, &plan.serve, &p.http_server_enter, options.placement)?;
            let end = &p.http_server_return_single;
            let h1_how = attached.entry(path, h1, end, options.placement)?;
            let h2_how = attached.entry(path, h2, end, options.placement)?;
            attached.probes.push(format!(
                "{}: entry on {how}; exit at {} (on {h1_how}) and {} (on {h2_how})",
                plan.serve.function.name, h1.function.name, h2.function.name
            ));
        }
        _ => attached.function(
            path,
            &plan.serve,
            &p.http_server_enter,
            &p.http_server_return_multi,
            &p.http_server_return_single,
            &options,
        )?,
    }
    // The links hold the programs, and the programs their maps: the object itself can go.
    Ok(attached)
}
