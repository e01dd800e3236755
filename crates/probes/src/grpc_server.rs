//! gRPC server spans (google.golang.org/grpc): planning and attachment of
//! `bpf/grpc_server.bpf.c`. One span per RPC, unary or streaming, from handleStream's entry to
//! its return, with the status the transport wrote for the stream.

use std::mem::MaybeUninit;
use std::path::Path;

use goinfo::GoBinary;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use offsets::{FieldOffset, FieldSpec};

use crate::skel::grpc_server::GrpcServerSkelBuilder;
use crate::{AttachOptions, Attached, Error, FunctionPlan, SharedMaps, Skip};

pub const NAME: &str = "gRPC server";
pub const MODULE: &str = "google.golang.org/grpc";
pub(crate) const GENPROTO: &str = "google.golang.org/genproto/googleapis/rpc";
const HANDLE_STREAM: &str = "google.golang.org/grpc.(*Server).handleStream";
/// Where the final status is sent (renamed in grpc 1.69).
const WRITE_STATUS: &[&str] = &[
    "google.golang.org/grpc/internal/transport.(*http2Server).writeStatus",
    "google.golang.org/grpc/internal/transport.(*http2Server).WriteStatus",
];

/// Decodes each request's HEADERS frame: where an incoming traceparent is read.
const OPERATE_HEADERS: &str =
    "google.golang.org/grpc/internal/transport.(*http2Server).operateHeaders";
const XNET: &str = "golang.org/x/net";
const META_HEADERS_FRAME: &str = "golang.org/x/net/http2.MetaHeadersFrame";
const HEADERS_FRAME: &str = "golang.org/x/net/http2.HeadersFrame";
const FRAME_HEADER: &str = "golang.org/x/net/http2.FrameHeader";
const HEADER_FIELD: &str = "golang.org/x/net/http2/hpack.HeaderField";

const STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
const SERVER_STREAM: &str = "google.golang.org/grpc/internal/transport.ServerStream";
const HTTP2_SERVER: &str = "google.golang.org/grpc/internal/transport.http2Server";
const STATUS: &str = "google.golang.org/grpc/internal/status.Status";
const SPB_STATUS: &str = "google.golang.org/genproto/googleapis/rpc/status.Status";

pub(crate) const fn field(
    module: &'static str,
    s: &'static str,
    f: &'static str,
    required: bool,
) -> FieldSpec {
    FieldSpec { module, struct_name: s, field: f, required }
}

/// The fields the program reads; the module's own struct layouts come from the binary (DWARF or
/// type descriptors).
pub const FIELDS: &[FieldSpec] = &[
    field(MODULE, STREAM, "id", true),
    field(MODULE, STREAM, "method", true),
    field(MODULE, SERVER_STREAM, "Stream", false), // grpc 1.69+
    field(MODULE, HTTP2_SERVER, "conn", false),
    field(MODULE, STATUS, "s", true),
    field(GENPROTO, SPB_STATUS, "Code", true),
    field(GENPROTO, SPB_STATUS, "Message", true),
    // The request's HEADERS frame, for an incoming traceparent.
    field(XNET, META_HEADERS_FRAME, "HeadersFrame", false),
    field(XNET, META_HEADERS_FRAME, "Fields", false),
    field(XNET, HEADERS_FRAME, "FrameHeader", false),
    field(XNET, FRAME_HEADER, "StreamID", false),
    field(XNET, HEADER_FIELD, "Name", false),
    field(XNET, HEADER_FIELD, "Value", false),
    field(XNET, HEADER_FIELD, "Sensitive", false),
    // The connection's socket, for the peer's address.
    FieldSpec::std("net.TCPConn", "conn", false),
    FieldSpec::std("net.conn", "fd", false),
    FieldSpec::std("net.netFD", "pfd", false),
    FieldSpec::std("internal/poll.FD", "Sysfd", false),
];

/// How handleStream's stream argument holds transport.Stream's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEmbedding {
    /// grpc before 1.69: the argument is a *transport.Stream.
    Direct,
    /// grpc 1.69 to 1.76: a *ServerStream embedding a *Stream.
    Pointer { at: u64 },
    /// grpc 1.77 on: a *ServerStream embedding the Stream by value.
    Value { at: u64 },
}

/// Where operateHeaders finds the HEADERS frame's stream id and fields.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub operate_headers: FunctionPlan,
    /// The frame is the 4th argument from grpc 1.60 (ctx came before it), else the 2nd.
    pub frame_in_arg4: bool,
    pub headers_frame: u64,
    pub stream_id: u64,
    pub fields: u64,
}

#[derive(Debug, Clone)]
pub struct GrpcServerPlan {
    pub grpc_version: String,
    pub handle_stream: FunctionPlan,
    pub write_status: FunctionPlan,
    pub stream: StreamEmbedding,
    pub fields: Vec<FieldOffset>,
    /// None: incoming traceparent metadata is not read (and why).
    pub metadata: Result<Metadata, String>,
}

pub fn plan(bin: &GoBinary) -> Result<GrpcServerPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    let grpc_version = bin
        .build_info()
        .module_version(MODULE)
        .ok_or_else(|| skip(format!("{MODULE} is not in the binary")))?
        .to_string();
    crate::require_register_abi(bin).map_err(skip)?;
    let handle_stream = FunctionPlan::new(bin, HANDLE_STREAM).map_err(skip)?;
    let write_status = FunctionPlan::first_of(bin, WRITE_STATUS)
        .ok_or_else(|| skip(format!("none of {WRITE_STATUS:?} is in the binary")))?;
    let layouts = offsets::Layouts::load(bin, FIELDS);
    let fields = offsets::resolve(bin, &layouts, FIELDS)
        .map_err(|e| skip(format!("{e} (grpc {grpc_version})")))?;
    let stream = match crate::offset_of(&fields, SERVER_STREAM, "Stream") {
        None => StreamEmbedding::Direct,
        Some(at) if version_at_least(&grpc_version, 1, 77) => StreamEmbedding::Value { at },
        Some(at) => StreamEmbedding::Pointer { at },
    };
    let metadata = metadata(bin, &fields, &grpc_version);
    Ok(GrpcServerPlan { grpc_version, handle_stream, write_status, stream, fields, metadata })
}

fn metadata(
    bin: &GoBinary,
    fields: &[FieldOffset],
    grpc_version: &str,
) -> Result<Metadata, String> {
    let f =
        |s, name| crate::offset_of(fields, s, name).ok_or_else(|| format!("{s}.{name} is unknown"));
    // The program steps through []hpack.HeaderField by the struct's size as it has always been.
    let layout =
        (f(HEADER_FIELD, "Name")?, f(HEADER_FIELD, "Value")?, f(HEADER_FIELD, "Sensitive")?);
    if layout != (0, 16, 32) {
        return Err(format!("hpack.HeaderField is laid out as {layout:?}, not (0, 16, 32)"));
    }
    Ok(Metadata {
        operate_headers: FunctionPlan::entry_only(bin, OPERATE_HEADERS)?,
        frame_in_arg4: version_at_least(grpc_version, 1, 60),
        headers_frame: f(META_HEADERS_FRAME, "HeadersFrame")?,
        stream_id: f(HEADERS_FRAME, "FrameHeader")? + f(FRAME_HEADER, "StreamID")?,
        fields: f(META_HEADERS_FRAME, "Fields")?,
    })
}

/// Whether a module version ("v1.77.0", "v1.77.0-dev") is at least major.minor.
pub(crate) fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let v = version.trim_start_matches('v');
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

impl StreamEmbedding {
    /// (stream_embedding, offset of the embedded Stream) as the programs read them.
    pub(crate) fn rodata(self) -> (u8, u64) {
        match self {
            StreamEmbedding::Direct => (0, 0),
            StreamEmbedding::Pointer { at } => (1, at),
            StreamEmbedding::Value { at } => (2, at),
        }
    }
}

pub fn attach(
    plan: &GrpcServerPlan,
    path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<Attached, Error> {
    let bpf = |what: &str| crate::bpf_error(NAME, path, what);
    let offset = |s, f| crate::offset_of(&plan.fields, s, f).unwrap_or(0);
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = GrpcServerSkelBuilder::default().open(&mut storage).map_err(bpf("open"))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::Internal { what: "grpc_server object has no .rodata".into() })?;
    ro.filter_pids = options.filter_pids;
    (ro.sampler, ro.sampler_threshold) = options.sampler.rodata();
    ro.sampler_parent_based = options.sampler.parent_based;
    (ro.stream_embedding, ro.off_embedded_stream) = plan.stream.rodata();
    ro.off_stream_id = offset(STREAM, "id");
    ro.off_stream_method = offset(STREAM, "method");
    ro.off_status_s = offset(STATUS, "s");
    ro.off_spb_code = offset(SPB_STATUS, "Code");
    ro.off_spb_message = offset(SPB_STATUS, "Message");
    if let (Some(conn), Some(conn_offsets)) =
        (crate::offset_of(&plan.fields, HTTP2_SERVER, "conn"), crate::conn_offsets(&plan.fields))
    {
        ro.off_http2server_conn_data = conn + 8; // an interface's data word follows its itab
        (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
        ro.has_conn_offsets = true;
    }
    if let Ok(m) = &plan.metadata {
        ro.has_metadata = true;
        ro.frame_in_arg4 = m.frame_in_arg4;
        (ro.off_mhf_headers, ro.off_hf_stream_id, ro.off_mhf_fields) =
            (m.headers_frame, m.stream_id, m.fields);
    }
    shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    match &plan.metadata {
        Ok(m) => {
            let how = attached.entry(
                path,
                &m.operate_headers,
                &p.grpc_server_headers,
                options.placement,
            )?;
            attached.probes.push(format!("{}: entry on {how}", m.operate_headers.function.name));
        }
        Err(why) => attached.probes.push(format!("incoming traceparent not read: {why}")),
    }
    attached.function(
        path,
        &plan.handle_stream,
        &p.grpc_server_enter,
        &p.grpc_server_return_multi,
        &p.grpc_server_return_single,
        &options,
    )?;
    let how = attached.entry(path, &plan.write_status, &p.grpc_server_status, options.placement)?;
    attached.probes.push(format!("{}: entry on {how}", plan.write_status.function.name));
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_versions_compare_by_major_and_minor() {
        assert!(!version_at_least("v1.69.0", 1, 77));
        assert!(!version_at_least("v1.76.9", 1, 77));
        assert!(version_at_least("v1.77.0", 1, 77));
        assert!(version_at_least("v1.85.0-dev", 1, 77));
        assert!(version_at_least("v2.0.0", 1, 77));
    }
}
