//! net/http client spans: a CLIENT span per `(*Transport).roundTrip` (`http_client.bpf.c`), or
//! per round trip of golang.org/x/net/http2's Transport where a program uses that one, published
//! under its connection (HTTP/1) or its connection and stream (HTTP/2) for a server on the same
//! host, and what outgoing traceparent injection carries to other hosts.

pub mod event;
mod span;

use std::mem::MaybeUninit;

use goinfo::{GoBinary, OkExit};
use offsets::{FieldOffset, FieldSpec, Layouts};

use super::header_map::{configure_header_map, header_map, with_header_fields, HeaderMap};
use crate::instrumentations::goroutines;
use crate::load::{bpf_object, load};
use crate::plan::{configure_conn_types, conn_offsets, conn_types, offset_of, ConnTypes};
use crate::{
    AttachContext, Attached, Depends, Error, Events, FunctionPlan, Instrumentation, Plan, Report,
    Target,
};

bpf_object!("http_client", HttpClientSkelBuilder);

pub struct HttpClient;

const NAME: &str = "net/http client";
/// `struct span_header`'s kind for this instrumentation's events.
const KIND: u32 = 2;
const ROUND_TRIP: &str = "net/http.(*Transport).roundTrip";
const PCONN_ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
/// Where an HTTP/2 request leaves the caller's goroutine (roundTrip from Go 1.23, RoundTrip
/// before; the package moved in Go 1.27), and where its stream's HEADERS frame is written.
const H2_ROUND_TRIP: &[&str] = &[
    "net/http.(*http2ClientConn).roundTrip",
    "net/http/internal/http2.(*ClientConn).roundTrip",
    "net/http.(*http2ClientConn).RoundTrip",
];
const H2_HEADERS: &[&str] = &[
    "net/http.(*http2clientStream).encodeAndWriteHeaders",
    "net/http/internal/http2.(*clientStream).encodeAndWriteHeaders",
];
/// The HTTP/2 structs read, before Go 1.27 and from it.
const H2_STREAM: [&str; 2] = ["net/http.http2clientStream", "net/http/internal/http2.clientStream"];
const H2_CONN: [&str; 2] = ["net/http.http2ClientConn", "net/http/internal/http2.ClientConn"];
/// The same, as (clientStream, ClientConn) pairs.
const STD_H2: [(&str, &str); 2] = [(H2_STREAM[0], H2_CONN[0]), (H2_STREAM[1], H2_CONN[1])];

/// golang.org/x/net/http2's client (the library net/http's is bundled from): its Transport
/// used directly, or behind net/http's by http2.ConfigureTransport, which hands each request
/// over in noDialH2RoundTripper. The same Request and Response; its own stream structs.
const XNET: &str = "golang.org/x/net";
const XNET_ROUND_TRIP: &[&str] = &[
    "golang.org/x/net/http2.(*Transport).roundTripOpt",
    "golang.org/x/net/http2.(*Transport).RoundTripOpt",
];
const XNET_HANDOFF: &str = "golang.org/x/net/http2.noDialH2RoundTripper.RoundTrip";
const XNET_H2_ROUND_TRIP: &[&str] = &[
    "golang.org/x/net/http2.(*ClientConn).roundTrip",
    "golang.org/x/net/http2.(*ClientConn).RoundTrip",
];
const XNET_H2_HEADERS: &str = "golang.org/x/net/http2.(*clientStream).encodeAndWriteHeaders";
const XNET_STREAM: &str = "golang.org/x/net/http2.clientStream";
const XNET_CONN: &str = "golang.org/x/net/http2.ClientConn";

impl Instrumentation for HttpClient {
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
        // A client span's parent is the span its goroutine, or an ancestor, works for.
        Depends { requires: &[goroutines::NAME], injection: true, ..Depends::default() }
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        let round_trip = FunctionPlan::new(bin, ROUND_TRIP)?;
        let fields = offsets::resolve(bin, layouts, FIELDS)?;
        let pconn_round_trip = FunctionPlan::first_of(bin, &[PCONN_ROUND_TRIP]);
        let ok_exit =
            pconn_round_trip.as_ref().and_then(|p| bin.ok_exit(&round_trip.function, &p.function));
        let header_map = header_map(bin, &fields);
        let h2 =
            FunctionPlan::first_of(bin, H2_ROUND_TRIP).zip(FunctionPlan::first_of(bin, H2_HEADERS));
        let xnet =
            XNET_ROUND_TRIP.iter().find_map(|n| FunctionPlan::new(bin, n).ok()).map(|round_trip| {
                XnetTransport {
                    round_trip,
                    handoff: FunctionPlan::entry_only(bin, XNET_HANDOFF).ok(),
                    h2: FunctionPlan::first_of(bin, XNET_H2_ROUND_TRIP)
                        .zip(FunctionPlan::entry_only(bin, XNET_H2_HEADERS).ok()),
                }
            });
        Ok(Box::new(HttpClientPlan {
            round_trip,
            ok_exit,
            pconn_round_trip,
            h2,
            xnet,
            conn_types: conn_types(bin),
            fields,
            header_map,
        }))
    }

    fn events(&self) -> Option<Events> {
        Some(
            Events::of::<event::HttpClientEvent>(KIND)
                .measured_in(&trace::metric::HTTP_CLIENT_REQUEST_DURATION),
        )
    }
}

const FIELDS: &[FieldSpec] = with_header_fields![
    FieldSpec::std("net/http.Request", "Method", true),
    FieldSpec::std("net/http.Request", "URL", true),
    FieldSpec::std("net/url.URL", "Scheme", true),
    FieldSpec::std("net/url.URL", "Host", true),
    FieldSpec::std("net/url.URL", "Path", true),
    FieldSpec::std("net/url.URL", "RawQuery", true),
    FieldSpec::std("net/http.Response", "StatusCode", true),
    FieldSpec::std("net/http.Response", "ProtoMajor", true),
    FieldSpec::std("net/http.Response", "ProtoMinor", true),
    // The connection, for same-host children: persistConn.conn -> *net.TCPConn -> fd, or
    // through tls.Conn.conn where persistConn.tlsState is set.
    FieldSpec::std("net/http.persistConn", "conn", false),
    FieldSpec::std("net/http.persistConn", "tlsState", false),
    FieldSpec::std("crypto/tls.Conn", "conn", false),
    FieldSpec::std("net.TCPConn", "conn", false),
    FieldSpec::std("net.conn", "fd", false),
    FieldSpec::std("net.netFD", "pfd", false),
    FieldSpec::std("internal/poll.FD", "Sysfd", false),
    // HTTP/2 streams, for same-host children and propagation: clientStream.ID, and
    // clientStream.cc.tconn, a net.Conn (*tls.Conn, or *net.TCPConn for h2c).
    FieldSpec::std(H2_STREAM[0], "cc", false),
    FieldSpec::std(H2_STREAM[0], "ID", false),
    FieldSpec::std(H2_CONN[0], "tconn", false),
    FieldSpec::std(H2_STREAM[1], "cc", false),
    FieldSpec::std(H2_STREAM[1], "ID", false),
    FieldSpec::std(H2_CONN[1], "tconn", false),
    FieldSpec { module: XNET, struct_name: XNET_STREAM, field: "cc", required: false },
    FieldSpec { module: XNET, struct_name: XNET_STREAM, field: "ID", required: false },
    FieldSpec { module: XNET, struct_name: XNET_CONN, field: "tconn", required: false },
    // And Request.Header's, for a traceparent the request carries already.
];

#[derive(Debug, Clone)]
struct HttpClientPlan {
    round_trip: FunctionPlan,
    /// Where roundTrip tests the error of its call to persistConn.roundTrip (or of HTTP/2's,
    /// which joins it there): a successful round trip ends on that jump, not on a RET the
    /// kernel single-steps. None: every RET ends spans.
    ok_exit: Option<OkExit>,
    /// Where the connection is known, for same-host parents; None: not linked.
    pconn_round_trip: Option<FunctionPlan>,
    /// HTTP/2's (roundTrip, encodeAndWriteHeaders), where its streams are known; None: HTTP/2
    /// requests are not linked and get nothing injected.
    h2: Option<(FunctionPlan, FunctionPlan)>,
    /// None: the binary has no golang.org/x/net/http2 Transport.
    xnet: Option<XnetTransport>,
    conn_types: Option<ConnTypes>,
    fields: Vec<FieldOffset>,
    /// None: a traceparent the request carries already is not seen, and injection may add a
    /// second.
    header_map: Option<HeaderMap>,
}

/// x/net's Transport: its round trip; where ConfigureTransport hands it a request (None: the
/// binary never does); its streams' (roundTrip, encodeAndWriteHeaders), as net/http's.
#[derive(Debug, Clone)]
struct XnetTransport {
    round_trip: FunctionPlan,
    handoff: Option<FunctionPlan>,
    h2: Option<(FunctionPlan, FunctionPlan)>,
}

impl Plan for HttpClientPlan {
    fn report(&self) -> Report<'_> {
        let mut functions = vec![&self.round_trip];
        functions.extend(self.xnet.as_ref().map(|x| &x.round_trip));
        Report { note: None, functions, fields: &self.fields, calls: Vec::new() }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let optional = |s, f| offset_of(&self.fields, s, f);
        let offset = |s, f| optional(s, f).unwrap_or(0);
        let linkable = (
            self.pconn_round_trip.as_ref(),
            optional("net/http.persistConn", "conn"),
            optional("net/http.persistConn", "tlsState"),
        );
        let conn_offsets = conn_offsets(&self.fields);
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::HttpClientSkelBuilder>(&mut storage, to, |ro| {
            ro.mark_client_pids = to.options.inject;
            ro.off_req_method = offset("net/http.Request", "Method");
            ro.off_req_url = offset("net/http.Request", "URL");
            ro.off_url_scheme = offset("net/url.URL", "Scheme");
            ro.off_url_host = offset("net/url.URL", "Host");
            ro.off_url_path = offset("net/url.URL", "Path");
            ro.off_url_raw_query = offset("net/url.URL", "RawQuery");
            ro.off_resp_status_code = offset("net/http.Response", "StatusCode");
            ro.off_resp_proto_major = offset("net/http.Response", "ProtoMajor");
            ro.off_resp_proto_minor = offset("net/http.Response", "ProtoMinor");
            if let ((Some(_), Some(conn), Some(tls_state)), Some(conn_offsets)) =
                (linkable, conn_offsets)
            {
                ro.off_pconn_conn_data = conn + 8; // an interface's data word follows its itab
                ro.off_pconn_tls_state = tls_state;
                (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
                ro.has_conn_offsets = true;
                configure_conn_types!(ro, self.conn_types, &self.fields);
            }
            if let Some(offsets) = self.h2_offsets(&STD_H2) {
                ro.std_h2 = offsets;
            }
            if let Some(offsets) = self.h2_offsets(&[(XNET_STREAM, XNET_CONN)]) {
                ro.xnet_h2 = offsets;
            }
            if to.options.inject {
                ro.check_own_traceparent = self.header_map.is_some();
                configure_header_map!(ro, self.header_map);
            }
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        attached.function_ok_exit(
            &self.round_trip,
            self.ok_exit.as_ref(),
            &p.http_client_enter,
            &p.http_client_ok,
            &p.http_client_return_multi,
            &p.http_client_return_single,
        )?;
        if let (Some(pconn), true) = (&self.pconn_round_trip, conn_offsets.is_some()) {
            attached.entry_line(pconn, &p.http_client_conn)?;
        }
        if let (Some((round_trip, headers)), Some(_)) = (&self.h2, self.h2_offsets(&STD_H2)) {
            attached.entry_line(round_trip, &p.http_client_h2_round_trip)?;
            attached.entry_line(headers, &p.http_client_h2_headers)?;
        }
        if let Some(xnet) = &self.xnet {
            attached.function(
                &xnet.round_trip,
                &p.http_client_xnet_enter,
                &p.http_client_xnet_return_multi,
                &p.http_client_xnet_return_single,
            )?;
            if let Some(handoff) = &xnet.handoff {
                attached.entry_line(handoff, &p.http_client_xnet_handoff)?;
            }
            let streams = self.h2_offsets(&[(XNET_STREAM, XNET_CONN)]);
            if let (Some((round_trip, headers)), Some(_)) = (&xnet.h2, streams) {
                attached.entry_line(round_trip, &p.http_client_h2_round_trip)?;
                attached.entry_line(headers, &p.http_client_xnet_h2_headers)?;
            }
        }
        Ok(attached)
    }
}

impl HttpClientPlan {
    /// clientStream.cc, clientStream.ID and ClientConn.tconn's interface, of the first of
    /// `structs` (clientStream, ClientConn) the binary has, where HTTP/2 streams can be followed
    /// to their socket (the probes then see through the net.Conn's type).
    fn h2_offsets(&self, structs: &[(&str, &str)]) -> Option<skel::types::h2_offsets> {
        let (linkable, typed) = (conn_offsets(&self.fields).is_some(), self.conn_types.is_some());
        (linkable && typed).then_some(())?;
        structs.iter().find_map(|&(stream, conn)| {
            Some(skel::types::h2_offsets {
                cs_cc: offset_of(&self.fields, stream, "cc")?,
                cs_id: offset_of(&self.fields, stream, "ID")?,
                cc_tconn: offset_of(&self.fields, conn, "tconn")?,
            })
        })
    }
}
