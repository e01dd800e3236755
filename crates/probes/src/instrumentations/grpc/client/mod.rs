//! gRPC client spans (google.golang.org/grpc): a CLIENT span per call, unary or streaming,
//! from newClientStream to the clientStream's finish (`grpc_client.bpf.c`), published under its
//! (connection, HTTP/2 stream) for a server on the same host and, with injection on, for the
//! traceparent field sk_msg adds to its HEADERS frame (`inject.bpf.c`): that is published by
//! the loopy writer's `writeHeader`, before the frame is written, from what `executeAndPut`
//! saw queued within NewStream.

pub mod event;
mod span;

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};

use super::{
    field, status_s, StreamEmbedding, GENPROTO, MODULE, SPB_STATUS, STATUS_FIELDS, STREAM,
};
use crate::instrumentations::goroutines;
use crate::load::{bpf_object, load};
use crate::plan::{
    configure_conn_types, conn_offsets, conn_types, offset_of, version_at_least, ConnTypes,
    GRPC_TLS_CONN, SYSCALL_CONN,
};
use crate::{
    AttachContext, Attached, Depends, Error, Events, FunctionPlan, Instrumentation, Plan, Report,
};

bpf_object!("grpc_client", GrpcClientSkelBuilder);

pub struct GrpcClient;

const NAME: &str = "gRPC client";
/// `struct span_header`'s kind for this instrumentation's events.
const KIND: u32 = 4;

impl Instrumentation for GrpcClient {
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
        // A client span's parent is the span its goroutine, or an ancestor, works for.
        Depends { requires: &[goroutines::NAME], injection: true, ..Depends::default() }
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        Ok(Box::new(plan(bin, layouts)?))
    }

    fn events(&self) -> Option<Events> {
        Some(
            Events::of::<event::GrpcClientEvent>(KIND)
                .measured_in(&trace::metric::RPC_CLIENT_DURATION),
        )
    }
}

const NEW_CLIENT_STREAM: &str = "google.golang.org/grpc.newClientStream";
const NEW_STREAM: &str = "google.golang.org/grpc/internal/transport.(*http2Client).NewStream";
const FINISH: &str = "google.golang.org/grpc.(*clientStream).finish";
/// What injection over h2c probes besides: where connections are dialled (renamed in 1.77),
/// where NewStream queues its HEADERS frame, and where the loopy writer writes it.
const DIAL: &[&str] = &[
    "google.golang.org/grpc/internal/transport.newHTTP2Client",
    "google.golang.org/grpc/internal/transport.NewHTTP2Client",
];
const PUT: &str = "google.golang.org/grpc/internal/transport.(*controlBuffer).executeAndPut";
const WRITE_HEADER: &str = "google.golang.org/grpc/internal/transport.(*loopyWriter).writeHeader";
/// The item NewStream queues for its HEADERS frame, by the names it has had (clientHeaders
/// from 1.85): its `hf` is what the frame is encoded from.
const HEADER_FRAME: &[&str] = &[
    "google.golang.org/grpc/internal/transport.headerFrame",
    "google.golang.org/grpc/internal/transport.clientHeaders",
];

const CLIENT_STREAM: &str = "google.golang.org/grpc/internal/transport.ClientStream";
const HTTP2_CLIENT: &str = "google.golang.org/grpc/internal/transport.http2Client";
const GRPC_CLIENT_STREAM: &str = "google.golang.org/grpc.clientStream";
const CS_ATTEMPT: &str = "google.golang.org/grpc.csAttempt";
const CLIENT_CONN: &str = "google.golang.org/grpc.ClientConn";

const FIELDS: &[FieldSpec] = &[
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
    field(MODULE, HEADER_FRAME[0], "hf", false),
    field(MODULE, HEADER_FRAME[1], "hf", false),
    STATUS_FIELDS[0],
    STATUS_FIELDS[1],
    field(GENPROTO, SPB_STATUS, "Code", true),
    field(GENPROTO, SPB_STATUS, "Message", true),
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

/// Where the stream's transport and final status are, relative to NewStream's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamLayout {
    embedding: StreamEmbedding,
    /// Offset of the *http2Client (or the ClientTransport interface, 1.66-1.68); None before
    /// the stream pointed back to its transport (then NewStream's entry is where it is seen).
    ct: Option<u64>,
    ct_is_interface: bool,
    status: u64,
    /// ct and status live on the ClientStream (1.69+), not on the Stream.
    on_client_stream: bool,
    /// csAttempt.s or csAttempt.transportStream.
    attempt_stream: u64,
}

#[derive(Debug, Clone)]
struct GrpcClientPlan {
    start: FunctionPlan,
    new_stream: FunctionPlan,
    finish: FunctionPlan,
    /// (dial, executeAndPut, writeHeader, offset of the queued item's hf) for injection over
    /// h2c, or why it cannot be.
    h2_injection: Result<(FunctionPlan, FunctionPlan, FunctionPlan, u64), String>,
    layout: StreamLayout,
    fields: Vec<FieldOffset>,
    /// internal/status.Status.s (status.Status.s before 1.29).
    status_s: u64,
    /// How a connection's dynamic type is told (conn.h), or None: taken as a *net.TCPConn.
    conn_types: Option<ConnTypes>,
}

fn plan(bin: &GoBinary, layouts: &Layouts) -> Result<GrpcClientPlan, String> {
    let grpc_version = offsets::module_version(bin, layouts, MODULE)?.version;
    let start = FunctionPlan::entry_only(bin, NEW_CLIENT_STREAM)?;
    let new_stream = FunctionPlan::new(bin, NEW_STREAM)?;
    let finish = FunctionPlan::entry_only(bin, FINISH)?;
    let fields =
        offsets::resolve(bin, layouts, FIELDS).map_err(|e| format!("{e} (grpc {grpc_version})"))?;
    let status_s = status_s(&fields, &grpc_version)?;
    let f = |s, name| offset_of(&fields, s, name);
    let missing = |what: &str| format!("{what} not found (grpc {grpc_version})");
    let layout = match f(CLIENT_STREAM, "Stream") {
        Some(at) => StreamLayout {
            embedding: if version_at_least(&grpc_version, 1, 77) {
                StreamEmbedding::Value { at }
            } else {
                StreamEmbedding::Pointer { at }
            },
            ct: Some(f(CLIENT_STREAM, "ct").ok_or_else(|| missing("ClientStream.ct"))?),
            ct_is_interface: false,
            status: f(CLIENT_STREAM, "status").ok_or_else(|| missing("ClientStream.status"))?,
            on_client_stream: true,
            attempt_stream: f(CS_ATTEMPT, "transportStream")
                .or(f(CS_ATTEMPT, "s"))
                .ok_or_else(|| missing("csAttempt's stream"))?,
        },
        None => StreamLayout {
            embedding: StreamEmbedding::Direct,
            ct: f(STREAM, "ct"),
            ct_is_interface: version_at_least(&grpc_version, 1, 66),
            status: f(STREAM, "status").ok_or_else(|| missing("Stream.status"))?,
            on_client_stream: false,
            attempt_stream: f(CS_ATTEMPT, "s").ok_or_else(|| missing("csAttempt.s"))?,
        },
    };
    let h2_injection = (|| {
        let dial = FunctionPlan::first_of(bin, DIAL)
            .ok_or_else(|| format!("{} is not in the binary", DIAL[0]))?;
        let put = FunctionPlan::entry_only(bin, PUT)?;
        let write_header = FunctionPlan::entry_only(bin, WRITE_HEADER)?;
        let hf = HEADER_FRAME.iter().find_map(|s| f(s, "hf"));
        match (hf, f(HTTP2_CLIENT, "conn")) {
            (Some(hf), Some(_)) => Ok((dial, put, write_header, hf)),
            _ => Err(format!("headerFrame.hf or http2Client.conn not found (grpc {grpc_version})")),
        }
    })();
    Ok(GrpcClientPlan {
        start,
        new_stream,
        finish,
        h2_injection,
        layout,
        fields,
        status_s,
        conn_types: conn_types(bin),
    })
}

impl Plan for GrpcClientPlan {
    fn report(&self) -> Report<'_> {
        Report {
            note: None,
            functions: vec![&self.start, &self.new_stream, &self.finish],
            fields: &self.fields,
            calls: Vec::new(),
        }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let optional = |s, f| offset_of(&self.fields, s, f);
        let offset = |s, f| optional(s, f).unwrap_or(0);
        let l = self.layout;
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::GrpcClientSkelBuilder>(&mut storage, to, |ro| {
            (ro.stream_embedding, ro.off_embedded_stream) = l.embedding.rodata();
            ro.off_stream_id = offset(STREAM, "id");
            if let Some(ct) = l.ct {
                (ro.has_ct, ro.off_ct, ro.ct_is_interface, ro.ct_on_client_stream) =
                    (true, ct, l.ct_is_interface, l.on_client_stream);
            }
            (ro.off_stream_status, ro.status_on_client_stream) = (l.status, l.on_client_stream);
            ro.off_cs_attempt = offset(GRPC_CLIENT_STREAM, "attempt");
            ro.off_attempt_stream = l.attempt_stream;
            ro.off_cc_target = offset(CLIENT_CONN, "target");
            ro.off_status_s = self.status_s;
            ro.off_spb_code = offset(SPB_STATUS, "Code");
            ro.off_spb_message = offset(SPB_STATUS, "Message");
            if let (Ok((.., hf)), true) = (&self.h2_injection, to.options.inject) {
                ro.off_header_frame_hf = *hf;
            }
            if let (Some(conn), Some(conn_offsets)) =
                (optional(HTTP2_CLIENT, "conn"), conn_offsets(&self.fields))
            {
                ro.off_http2client_conn = conn;
                (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
                ro.has_conn_offsets = true;
                configure_conn_types!(ro, self.conn_types, &self.fields);
            }
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        let start_how = attached.entry(&self.start, &p.grpc_client_start)?;
        attached.returns(
            &self.new_stream,
            &p.grpc_client_stream_multi,
            &p.grpc_client_stream_single,
        )?;
        let finish_how = attached.entry(&self.finish, &p.grpc_client_finish)?;
        attached.probes.push(format!(
            "{}: entry on {start_how}; {}: {} RET(s); {}: entry on {finish_how}",
            self.start.function.name,
            self.new_stream.function.name,
            self.new_stream.return_offsets.len(),
            self.finish.function.name,
        ));
        let injecting = self.h2_injection.is_ok() && to.options.inject;
        if injecting || l.ct.is_none() {
            attached.entry_line(&self.new_stream, &p.grpc_client_new_stream)?;
        }
        match (&self.h2_injection, to.options.inject) {
            (Ok((dial, put, write_header, _)), true) => {
                attached.entry_line(dial, &p.grpc_client_dial)?;
                attached.entry_line(put, &p.grpc_client_put)?;
                attached.entry_line(write_header, &p.grpc_client_write_header)?;
            }
            (Err(why), true) => {
                attached.probes.push(format!("no traceparent injection over h2c: {why}"));
            }
            (_, false) => {}
        }
        Ok(attached)
    }
}
