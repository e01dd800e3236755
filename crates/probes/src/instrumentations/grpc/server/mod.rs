//! gRPC server spans (google.golang.org/grpc): a SERVER span per RPC, unary or streaming,
//! from handleStream's entry to its return (`grpc_server.bpf.c`), with the status the transport
//! wrote for the stream and an incoming traceparent read from the request's HEADERS frame.

pub mod event;
mod span;

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};

use super::{
    field, status_s, StreamEmbedding, GENPROTO, MODULE, SPB_STATUS, STATUS_FIELDS, STREAM,
};
use crate::load::{bpf_object, load};
use crate::plan::{
    configure_conn_types, conn_offsets, conn_types, offset_of, version_at_least, ConnTypes,
    GRPC_TLS_CONN, SYSCALL_CONN,
};
use crate::{
    AttachContext, Attached, Depends, Error, Events, FunctionPlan, Instrumentation, Plan, Report,
};

bpf_object!("grpc_server", GrpcServerSkelBuilder);

pub struct GrpcServer;

const NAME: &str = "gRPC server";
/// `struct span_header`'s kind for this instrumentation's events.
const KIND: u32 = 3;

impl Instrumentation for GrpcServer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn target(&self) -> crate::Target {
        super::TARGET
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn depends(&self) -> Depends {
        // Calls over TLS from clients on other hosts carry their parent in a TCP option.
        Depends { receives_tcp_option: true, ..Depends::default() }
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        Ok(Box::new(plan(bin, layouts)?))
    }

    fn events(&self) -> Option<Events> {
        Some(
            Events::of::<event::GrpcServerEvent>(KIND)
                .measured_in(&trace::metric::RPC_SERVER_DURATION),
        )
    }
}

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

const SERVER_STREAM: &str = "google.golang.org/grpc/internal/transport.ServerStream";
const HTTP2_SERVER: &str = "google.golang.org/grpc/internal/transport.http2Server";
/// The fields the program reads; the module's own struct layouts come from the binary (DWARF or
/// type descriptors).
const FIELDS: &[FieldSpec] = &[
    field(MODULE, STREAM, "id", true),
    field(MODULE, STREAM, "method", true),
    field(MODULE, SERVER_STREAM, "Stream", false), // grpc 1.69+
    field(MODULE, HTTP2_SERVER, "conn", false),
    STATUS_FIELDS[0],
    STATUS_FIELDS[1],
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
    // Under TLS: grpc's syscallConn around a *tls.Conn around the *net.TCPConn.
    field(MODULE, SYSCALL_CONN[0], "Conn", false),
    field(MODULE, SYSCALL_CONN[1], "Conn", false),
    field(MODULE, GRPC_TLS_CONN, "rawConn", false), // before 1.17
    FieldSpec::std("crypto/tls.Conn", "conn", false),
];

/// Where operateHeaders finds the HEADERS frame's stream id and fields.
#[derive(Debug, Clone)]
struct Metadata {
    operate_headers: FunctionPlan,
    /// The frame is the 4th argument from grpc 1.60 (ctx came before it), else the 2nd.
    frame_in_arg4: bool,
    headers_frame: u64,
    stream_id: u64,
    fields: u64,
}

#[derive(Debug, Clone)]
struct GrpcServerPlan {
    handle_stream: FunctionPlan,
    write_status: FunctionPlan,
    stream: StreamEmbedding,
    fields: Vec<FieldOffset>,
    /// internal/status.Status.s (status.Status.s before 1.29).
    status_s: u64,
    /// How a connection's dynamic type is told (conn.h), or None: taken as a *net.TCPConn.
    conn_types: Option<ConnTypes>,
    /// None: incoming traceparent metadata is not read (and why).
    metadata: Result<Metadata, String>,
}

fn plan(bin: &GoBinary, layouts: &Layouts) -> Result<GrpcServerPlan, String> {
    let grpc_version = offsets::module_version(bin, layouts, MODULE)?.version;
    let handle_stream = FunctionPlan::new(bin, HANDLE_STREAM)?;
    let write_status = FunctionPlan::first_of(bin, WRITE_STATUS)
        .ok_or_else(|| format!("none of {WRITE_STATUS:?} is in the binary"))?;
    let fields =
        offsets::resolve(bin, layouts, FIELDS).map_err(|e| format!("{e} (grpc {grpc_version})"))?;
    let status_s = status_s(&fields, &grpc_version)?;
    let stream = match offset_of(&fields, SERVER_STREAM, "Stream") {
        None => StreamEmbedding::Direct,
        Some(at) if version_at_least(&grpc_version, 1, 77) => StreamEmbedding::Value { at },
        Some(at) => StreamEmbedding::Pointer { at },
    };
    let metadata = metadata(bin, &fields, &grpc_version);
    Ok(GrpcServerPlan {
        handle_stream,
        write_status,
        stream,
        fields,
        status_s,
        metadata,
        conn_types: conn_types(bin),
    })
}

fn metadata(
    bin: &GoBinary,
    fields: &[FieldOffset],
    grpc_version: &str,
) -> Result<Metadata, String> {
    let f = |s, name| offset_of(fields, s, name).ok_or_else(|| format!("{s}.{name} is unknown"));
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

impl Plan for GrpcServerPlan {
    fn report(&self) -> Report<'_> {
        Report {
            note: None,
            functions: vec![&self.handle_stream, &self.write_status],
            fields: &self.fields,
            calls: Vec::new(),
        }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let optional = |s, f| offset_of(&self.fields, s, f);
        let offset = |s, f| optional(s, f).unwrap_or(0);
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::GrpcServerSkelBuilder>(&mut storage, to, |ro| {
            (ro.stream_embedding, ro.off_embedded_stream) = self.stream.rodata();
            ro.off_stream_id = offset(STREAM, "id");
            ro.off_stream_method = offset(STREAM, "method");
            ro.off_status_s = self.status_s;
            ro.off_spb_code = offset(SPB_STATUS, "Code");
            ro.off_spb_message = offset(SPB_STATUS, "Message");
            if let (Some(conn), Some(conn_offsets)) =
                (optional(HTTP2_SERVER, "conn"), conn_offsets(&self.fields))
            {
                ro.off_http2server_conn = conn;
                (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
                ro.has_conn_offsets = true;
                configure_conn_types!(ro, self.conn_types, &self.fields);
            }
            if let Ok(m) = &self.metadata {
                ro.has_metadata = true;
                ro.frame_in_arg4 = m.frame_in_arg4;
                (ro.off_mhf_headers, ro.off_hf_stream_id, ro.off_mhf_fields) =
                    (m.headers_frame, m.stream_id, m.fields);
            }
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        match &self.metadata {
            Ok(m) => attached.entry_line(&m.operate_headers, &p.grpc_server_headers)?,
            Err(why) => attached.probes.push(format!("incoming traceparent not read: {why}")),
        }
        attached.function(
            &self.handle_stream,
            &p.grpc_server_enter,
            &p.grpc_server_return_multi,
            &p.grpc_server_return_single,
        )?;
        attached.entry_line(&self.write_status, &p.grpc_server_status)?;
        Ok(attached)
    }
}
