//! net/http server spans: a SERVER span per request, from `serverHandler.ServeHTTP` to where
//! the request ends (`http_server.bpf.c`), with the route, the status and an incoming
//! traceparent read from the request's headers.

pub mod event;
mod span;

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};

use super::header_map::{configure_header_map, header_map, with_header_fields, HeaderMap};
use crate::load::{bpf_object, load};
use crate::plan::{configure_conn_types, conn_offsets, conn_types, offset_of, ConnTypes};
use crate::{
    AttachContext, Attached, Depends, Error, Events, FunctionPlan, Instrumentation, Placement,
    Plan, Report, Target,
};

bpf_object!("http_server", HttpServerSkelBuilder);

pub struct HttpServer;

const NAME: &str = "net/http server";
/// `struct span_header`'s kind for this instrumentation's events.
const KIND: u32 = 1;
const ENTRY: &str = "net/http.serverHandler.ServeHTTP";
/// Every HTTP/1 request served ends here, on the serving goroutine, right after ServeHTTP.
const HTTP1_END: &str = "net/http.(*response).finishRequest";
/// The deferred function of an HTTP/1 connection's goroutine that recovers a handler's panic
/// (and closes the connection): where a request whose handler panicked ends.
const HTTP1_RECOVER: &str = "net/http.(*conn).serve.func1";
/// The deferred function of an HTTP/2 handler's goroutine, and the call it makes only when the
/// handler panicked (to reset the stream), before Go 1.27 and from it.
const HTTP2_PANICKED: [(&str, &str); 2] = [
    (
        "net/http.(*http2serverConn).runHandler.func1",
        "net/http.(*http2serverConn).writeFrameFromHandler",
    ),
    (
        "net/http/internal/http2.(*serverConn).runHandler.func1",
        "net/http/internal/http2.(*serverConn).writeFrameFromHandler",
    ),
];
/// Every HTTP/2 request ends here (the package moved in Go 1.27).
const HTTP2_END: &[&str] = &[
    "net/http.(*http2responseWriter).handlerDone",
    "net/http/internal/http2.(*responseWriter).handlerDone",
];

impl Instrumentation for HttpServer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn target(&self) -> Target {
        Target::Std
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn depends(&self) -> Depends {
        // Requests over TLS from clients on other hosts carry their parent in a TCP option.
        Depends { receives_tcp_option: true, ..Depends::default() }
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        Ok(Box::new(plan(bin, layouts)?))
    }

    fn events(&self) -> Option<Events> {
        Some(
            Events::of::<event::HttpServerEvent>(KIND)
                .measured_in(&trace::metric::HTTP_SERVER_REQUEST_DURATION),
        )
    }
}

/// The HTTP/2 server's structs, before Go 1.27 and from it (net/http/internal/http2, where
/// ServeHTTP's ResponseWriter holds the *responseWriter itself).
const H2_WRITER: [&str; 2] =
    ["net/http.http2responseWriter", "net/http/internal/http2.responseWriter"];
const H2_STATE: [&str; 2] =
    ["net/http.http2responseWriterState", "net/http/internal/http2.responseWriterState"];
const H2_STREAM: [&str; 2] = ["net/http.http2stream", "net/http/internal/http2.stream"];
const H2_CONN: [&str; 2] = ["net/http.http2serverConn", "net/http/internal/http2.serverConn"];

/// The fields the program reads. Optional ones only enrich the span.
const FIELDS: &[FieldSpec] = with_header_fields![
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
    // HTTP/2: without them HTTP/2 spans lack a status; without the stream's, a parent
    // published for the stream (responseWriterState.stream.{id, sc.conn}).
    FieldSpec::std(H2_WRITER[0], "rws", false),
    FieldSpec::std(H2_STATE[0], "status", false),
    FieldSpec::std(H2_STATE[0], "stream", false),
    FieldSpec::std(H2_STREAM[0], "id", false),
    FieldSpec::std(H2_STREAM[0], "sc", false),
    FieldSpec::std(H2_CONN[0], "conn", false),
    FieldSpec::std(H2_WRITER[1], "rws", false),
    FieldSpec::std(H2_STATE[1], "status", false),
    FieldSpec::std(H2_STATE[1], "stream", false),
    FieldSpec::std(H2_STREAM[1], "id", false),
    FieldSpec::std(H2_STREAM[1], "sc", false),
    FieldSpec::std(H2_CONN[1], "conn", false),
    // The connection, for same-host parents: response.conn.rwc -> *net.TCPConn -> fd, or
    // through tls.Conn.conn when the request came over TLS.
    FieldSpec::std("net/http.response", "conn", false),
    FieldSpec::std("net/http.conn", "rwc", false),
    FieldSpec::std("net.TCPConn", "conn", false),
    FieldSpec::std("net.conn", "fd", false),
    FieldSpec::std("net.netFD", "pfd", false),
    FieldSpec::std("internal/poll.FD", "Sysfd", false),
    FieldSpec::std("crypto/tls.Conn", "conn", false),
    // And Request.Header's, for an incoming traceparent.
];

/// Everything needed to attach to one executable, resolved without privileges.
#[derive(Debug, Clone)]
struct HttpServerPlan {
    serve: FunctionPlan,
    /// Where HTTP/1 and HTTP/2 requests end, for exit probes cheaper than ServeHTTP's RETs.
    request_ends: Option<(FunctionPlan, FunctionPlan)>,
    /// Where an HTTP/1 request whose handler panicked ends (None: such requests get no span).
    panic_recovery: Option<FunctionPlan>,
    /// Where an HTTP/2 one does: (the function, file offsets of its calls that reset a
    /// stream whose handler panicked).
    h2_panic_resets: Option<(String, Vec<u64>)>,
    fields: Vec<FieldOffset>,
    /// None: incoming traceparent headers are not read.
    header_map: Option<HeaderMap>,
    conn_types: Option<ConnTypes>,
    /// A router whose matched route the span takes (routes.h).
    has_router: bool,
}

fn plan(bin: &GoBinary, layouts: &Layouts) -> Result<HttpServerPlan, String> {
    let serve = FunctionPlan::new(bin, ENTRY)?;
    let fields = offsets::resolve(bin, layouts, FIELDS)?;
    for s in ["net/http.Request", "net/url.URL"] {
        if copy_bytes(&fields, s) > WINDOW_BYTES {
            return Err(format!("{s} fields lie past the {WINDOW_BYTES} bytes the probe copies"));
        }
    }
    let header_map = header_map(bin, &fields);
    let request_ends =
        FunctionPlan::first_of(bin, &[HTTP1_END]).zip(FunctionPlan::first_of(bin, HTTP2_END));
    // A router's routes (instrumentations/gin, ...) are read into the span where it is linked.
    let has_router = super::super::ROUTERS.iter().any(|m| bin.module_version(m).is_ok());
    Ok(HttpServerPlan {
        serve,
        request_ends,
        panic_recovery: FunctionPlan::entry_only(bin, HTTP1_RECOVER).ok(),
        h2_panic_resets: HTTP2_PANICKED.iter().find_map(|(deferred, reset)| {
            let (deferred, reset) = (bin.function(deferred).ok()?, bin.function(reset).ok()?);
            let calls = bin.calls_to(&deferred, &reset);
            (!calls.is_empty()).then_some((deferred.name, calls))
        }),
        fields,
        header_map,
        conn_types: conn_types(bin),
        has_router,
    })
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

impl Plan for HttpServerPlan {
    fn report(&self) -> Report<'_> {
        Report { note: None, functions: vec![&self.serve], fields: &self.fields, calls: Vec::new() }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::HttpServerSkelBuilder>(&mut storage, to, |ro| self.configure(ro))?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        match (&self.request_ends, to.options.placement) {
            (Some((h1, h2)), Placement::Emulated) => {
                // The span ends where the request does: the exit program at two function
                // entries, instead of a single-stepped RET.
                let how = attached.entry(&self.serve, &p.http_server_enter)?;
                let end = &p.http_server_return_single;
                let h1_how = attached.entry(h1, end)?;
                let h2_how = attached.entry(h2, end)?;
                attached.probes.push(format!(
                    "{}: entry on {how}; exit at {} (on {h1_how}) and {} (on {h2_how})",
                    self.serve.function.name, h1.function.name, h2.function.name
                ));
            }
            _ => attached.function(
                &self.serve,
                &p.http_server_enter,
                &p.http_server_return_multi,
                &p.http_server_return_single,
            )?,
        }
        if let Some(recover) = &self.panic_recovery {
            attached.entry_line(recover, &p.http_server_panicked)?;
        }
        if let Some((deferred, calls)) = &self.h2_panic_resets {
            for &call in calls {
                attached.at(
                    call,
                    &p.http_server_panicked,
                    &format!("{deferred} call {call:#x}"),
                )?;
            }
            attached.probes.push(format!("{deferred}: at its call resetting a panicked stream"));
        }
        Ok(attached)
    }
}

impl HttpServerPlan {
    /// The plan's offsets, as the program reads them.
    fn configure(&self, ro: &mut skel::types::rodata) {
        let offset = |s, f| offset_of(&self.fields, s, f);
        let req = |f| offset("net/http.Request", f).unwrap_or(0);
        ro.req_copy_bytes = copy_bytes(&self.fields, "net/http.Request") as u32;
        ro.url_copy_bytes = copy_bytes(&self.fields, "net/url.URL") as u32;
        ro.off_req_method = req("Method");
        ro.off_req_url = req("URL");
        ro.off_req_proto_major = req("ProtoMajor");
        ro.off_req_proto_minor = req("ProtoMinor");
        ro.off_req_host = req("Host");
        ro.off_req_remote_addr = req("RemoteAddr");
        ro.off_req_tls = req("TLS");
        ro.has_router = self.has_router;
        if let Some(p) = offset("net/http.Request", "Pattern") {
            ro.has_pattern = true;
            ro.off_req_pattern = p;
        }
        ro.off_url_path = offset("net/url.URL", "Path").unwrap_or(0);
        ro.off_url_raw_query = offset("net/url.URL", "RawQuery").unwrap_or(0);
        ro.off_response_status = offset("net/http.response", "status").unwrap_or(0);
        let h2 = |v: usize| Some((offset(H2_WRITER[v], "rws")?, offset(H2_STATE[v], "status")?, v));
        let h2_stream = |v: usize| {
            Some((
                offset(H2_STATE[v], "stream")?,
                offset(H2_STREAM[v], "id")?,
                offset(H2_STREAM[v], "sc")?,
                offset(H2_CONN[v], "conn")?,
            ))
        };
        if let Some((rws, status, v)) = h2(0).or_else(|| h2(1)) {
            ro.has_h2 = true;
            ro.h2_request_unowned = v == 1;
            ro.off_h2rw_rws = rws;
            ro.off_h2rws_status = status;
            if let (Some(stream), true) = (h2_stream(v), self.conn_types.is_some()) {
                ro.has_h2_streams = true;
                (ro.off_h2rws_stream, ro.off_h2stream_id, ro.off_h2stream_sc, ro.off_h2sc_conn) =
                    stream;
            }
        }
        if let (Some(conn), Some(rwc), Some(conn_offsets)) = (
            offset("net/http.response", "conn"),
            offset("net/http.conn", "rwc"),
            conn_offsets(&self.fields),
        ) {
            ro.off_response_conn = conn;
            ro.off_conn_rwc_data = rwc + 8; // an interface's data word follows its itab
            (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
            ro.has_conn_offsets = true;
            configure_conn_types!(ro, self.conn_types, &self.fields);
        }
        configure_header_map!(ro, self.header_map);
    }
}
