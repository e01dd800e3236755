//! gRPC client spans (google.golang.org/grpc): planning and attachment of
//! `bpf/grpc_client.bpf.c`. One CLIENT span per call, unary or streaming, from newClientStream
//! to the clientStream's finish.

use std::mem::MaybeUninit;
use std::path::Path;

use goinfo::GoBinary;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use offsets::{FieldOffset, FieldSpec};

use crate::grpc_server::{field, version_at_least, StreamEmbedding, GENPROTO, MODULE};
use crate::skel::grpc_client::GrpcClientSkelBuilder;
use crate::{AttachOptions, Attached, Error, FunctionPlan, SharedMaps, Skip};

pub const NAME: &str = "gRPC client";
const NEW_CLIENT_STREAM: &str = "google.golang.org/grpc.newClientStream";
const NEW_STREAM: &str = "google.golang.org/grpc/internal/transport.(*http2Client).NewStream";
const FINISH: &str = "google.golang.org/grpc.(*clientStream).finish";

const STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
const CLIENT_STREAM: &str = "google.golang.org/grpc/internal/transport.ClientStream";
const HTTP2_CLIENT: &str = "google.golang.org/grpc/internal/transport.http2Client";
const GRPC_CLIENT_STREAM: &str = "google.golang.org/grpc.clientStream";
const CS_ATTEMPT: &str = "google.golang.org/grpc.csAttempt";
const CLIENT_CONN: &str = "google.golang.org/grpc.ClientConn";
const STATUS: &str = "google.golang.org/grpc/internal/status.Status";
const SPB_STATUS: &str = "google.golang.org/genproto/googleapis/rpc/status.Status";

pub const FIELDS: &[FieldSpec] = &[
    field(MODULE, STREAM, "id", true),
    field(MODULE, STREAM, "ct", false),            // before 1.69
    field(MODULE, STREAM, "status", false),        // before 1.69
    field(MODULE, CLIENT_STREAM, "Stream", false), // 1.69+
    field(MODULE, CLIENT_STREAM, "ct", false),
    field(MODULE, CLIENT_STREAM, "status", false),
    field(MODULE, HTTP2_CLIENT, "conn", false),
    field(MODULE, GRPC_CLIENT_STREAM, "attempt", true),
    field(MODULE, CS_ATTEMPT, "s", false), // before 1.71
    field(MODULE, CS_ATTEMPT, "transportStream", false), // 1.71+
    field(MODULE, CLIENT_CONN, "target", true),
    field(MODULE, STATUS, "s", true),
    field(GENPROTO, SPB_STATUS, "Code", true),
    field(GENPROTO, SPB_STATUS, "Message", true),
    FieldSpec::std("net.TCPConn", "conn", false),
    FieldSpec::std("net.conn", "fd", false),
    FieldSpec::std("net.netFD", "pfd", false),
    FieldSpec::std("internal/poll.FD", "Sysfd", false),
];

/// Where the stream's transport and final status are, relative to NewStream's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLayout {
    pub embedding: StreamEmbedding,
    /// Offset of the *http2Client (or the ClientTransport interface, 1.66-1.68).
    pub ct: u64,
    pub ct_is_interface: bool,
    pub status: u64,
    /// ct and status live on the ClientStream (1.69+), not on the Stream.
    pub on_client_stream: bool,
    /// csAttempt.s or csAttempt.transportStream.
    pub attempt_stream: u64,
}

#[derive(Debug, Clone)]
pub struct GrpcClientPlan {
    pub grpc_version: String,
    pub start: FunctionPlan,
    pub new_stream: FunctionPlan,
    pub finish: FunctionPlan,
    pub layout: StreamLayout,
    pub fields: Vec<FieldOffset>,
}

pub fn plan(bin: &GoBinary) -> Result<GrpcClientPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    let grpc_version = bin
        .build_info()
        .module_version(MODULE)
        .ok_or_else(|| skip(format!("{MODULE} is not in the binary")))?
        .to_string();
    crate::require_register_abi(bin).map_err(skip)?;
    let start = FunctionPlan::entry_only(bin, NEW_CLIENT_STREAM).map_err(skip)?;
    let new_stream = FunctionPlan::new(bin, NEW_STREAM).map_err(skip)?;
    let finish = FunctionPlan::entry_only(bin, FINISH).map_err(skip)?;
    let layouts = offsets::Layouts::load(bin, FIELDS);
    let fields = offsets::resolve(bin, &layouts, FIELDS)
        .map_err(|e| skip(format!("{e} (grpc {grpc_version})")))?;
    let f = |s, name| crate::offset_of(&fields, s, name);
    let missing = |what: &str| skip(format!("{what} not found (grpc {grpc_version})"));
    let layout = match f(CLIENT_STREAM, "Stream") {
        Some(at) => StreamLayout {
            embedding: if version_at_least(&grpc_version, 1, 77) {
                StreamEmbedding::Value { at }
            } else {
                StreamEmbedding::Pointer { at }
            },
            ct: f(CLIENT_STREAM, "ct").ok_or_else(|| missing("ClientStream.ct"))?,
            ct_is_interface: false,
            status: f(CLIENT_STREAM, "status").ok_or_else(|| missing("ClientStream.status"))?,
            on_client_stream: true,
            attempt_stream: f(CS_ATTEMPT, "transportStream")
                .or(f(CS_ATTEMPT, "s"))
                .ok_or_else(|| missing("csAttempt's stream"))?,
        },
        None => StreamLayout {
            embedding: StreamEmbedding::Direct,
            ct: f(STREAM, "ct").ok_or_else(|| missing("Stream.ct"))?,
            ct_is_interface: version_at_least(&grpc_version, 1, 66),
            status: f(STREAM, "status").ok_or_else(|| missing("Stream.status"))?,
            on_client_stream: false,
            attempt_stream: f(CS_ATTEMPT, "s").ok_or_else(|| missing("csAttempt.s"))?,
        },
    };
    Ok(GrpcClientPlan { grpc_version, start, new_stream, finish, layout, fields })
}

pub fn attach(
    plan: &GrpcClientPlan,
    path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<Attached, Error> {
    let bpf = |what: &str| crate::bpf_error(NAME, path, what);
    let offset = |s, f| crate::offset_of(&plan.fields, s, f).unwrap_or(0);
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = GrpcClientSkelBuilder::default().open(&mut storage).map_err(bpf("open"))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::Internal { what: "grpc_client object has no .rodata".into() })?;
    ro.filter_pids = options.filter_pids;
    (ro.sampler, ro.sampler_threshold) = options.sampler.rodata();
    ro.sampler_parent_based = options.sampler.parent_based;
    let l = plan.layout;
    (ro.stream_embedding, ro.off_embedded_stream) = l.embedding.rodata();
    ro.off_stream_id = offset(STREAM, "id");
    (ro.off_ct, ro.ct_is_interface, ro.ct_on_client_stream) =
        (l.ct, l.ct_is_interface, l.on_client_stream);
    (ro.off_stream_status, ro.status_on_client_stream) = (l.status, l.on_client_stream);
    ro.off_cs_attempt = offset(GRPC_CLIENT_STREAM, "attempt");
    ro.off_attempt_stream = l.attempt_stream;
    ro.off_cc_target = offset(CLIENT_CONN, "target");
    ro.off_status_s = offset(STATUS, "s");
    ro.off_spb_code = offset(SPB_STATUS, "Code");
    ro.off_spb_message = offset(SPB_STATUS, "Message");
    if let (Some(conn), Some(conn_offsets)) =
        (crate::offset_of(&plan.fields, HTTP2_CLIENT, "conn"), crate::conn_offsets(&plan.fields))
    {
        ro.off_http2client_conn_data = conn + 8; // an interface's data word follows its itab
        (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
        ro.has_conn_offsets = true;
    }
    shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    let start_how = attached.entry(path, &plan.start, &p.grpc_client_start, options.placement)?;
    attached.returns(
        path,
        &plan.new_stream,
        &p.grpc_client_stream_multi,
        &p.grpc_client_stream_single,
        options.uprobe_multi,
    )?;
    let finish_how =
        attached.entry(path, &plan.finish, &p.grpc_client_finish, options.placement)?;
    attached.probes.push(format!(
        "{}: entry on {start_how}; {}: {} RET(s); {}: entry on {finish_how}",
        plan.start.function.name,
        plan.new_stream.function.name,
        plan.new_stream.return_offsets.len(),
        plan.finish.function.name,
    ));
    Ok(attached)
}
