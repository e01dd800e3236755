//! net/http client spans: `bpf/http_client.bpf.c` on net/http.(*Transport).roundTrip.

use std::mem::MaybeUninit;
use std::path::Path;

use goinfo::GoBinary;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use offsets::{FieldOffset, FieldSpec};

use crate::skel::http_client::HttpClientSkelBuilder;
use crate::{AttachOptions, Attached, Error, FunctionPlan, SharedMaps, Skip};

pub const NAME: &str = "net/http client";
const ROUND_TRIP: &str = "net/http.(*Transport).roundTrip";
const PCONN_ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";

pub const FIELDS: &[FieldSpec] = &[
    FieldSpec::std("net/http.Request", "Method", true),
    FieldSpec::std("net/http.Request", "URL", true),
    FieldSpec::std("net/url.URL", "Scheme", true),
    FieldSpec::std("net/url.URL", "Host", true),
    FieldSpec::std("net/url.URL", "Path", true),
    FieldSpec::std("net/url.URL", "RawQuery", true),
    FieldSpec::std("net/http.Response", "StatusCode", true),
    FieldSpec::std("net/http.Response", "ProtoMajor", true),
    FieldSpec::std("net/http.Response", "ProtoMinor", true),
    // The connection, for same-host children: persistConn.conn -> *net.TCPConn -> fd.
    FieldSpec::std("net/http.persistConn", "conn", false),
    FieldSpec::std("net.TCPConn", "conn", false),
    FieldSpec::std("net.conn", "fd", false),
    FieldSpec::std("net.netFD", "pfd", false),
    FieldSpec::std("internal/poll.FD", "Sysfd", false),
];

#[derive(Debug, Clone)]
pub struct HttpClientPlan {
    pub round_trip: FunctionPlan,
    /// Where the connection is known, for same-host parents; None: not linked.
    pub pconn_round_trip: Option<FunctionPlan>,
    pub fields: Vec<FieldOffset>,
}

/// `layouts` must have been loaded for at least FIELDS.
pub fn plan(bin: &GoBinary, layouts: &offsets::Layouts) -> Result<HttpClientPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    crate::require_register_abi(bin).map_err(skip)?;
    let round_trip = FunctionPlan::new(bin, ROUND_TRIP).map_err(skip)?;
    let fields = offsets::resolve(bin, layouts, FIELDS).map_err(skip)?;
    let pconn_round_trip = FunctionPlan::first_of(bin, &[PCONN_ROUND_TRIP]);
    Ok(HttpClientPlan { round_trip, pconn_round_trip, fields })
}

pub fn attach(
    plan: &HttpClientPlan,
    path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<Attached, Error> {
    let bpf = |what: &str| crate::bpf_error(NAME, path, what);
    let optional = |s, f| crate::offset_of(&plan.fields, s, f);
    let offset = |s, f| optional(s, f).unwrap_or(0);
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = HttpClientSkelBuilder::default().open(&mut storage).map_err(bpf("open"))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::Internal { what: "http_client object has no .rodata".into() })?;
    ro.filter_pids = options.filter_pids;
    (ro.sampler, ro.sampler_threshold) = options.sampler.rodata();
    ro.sampler_parent_based = options.sampler.parent_based;
    ro.mark_client_pids = options.inject;
    ro.off_req_method = offset("net/http.Request", "Method");
    ro.off_req_url = offset("net/http.Request", "URL");
    ro.off_url_scheme = offset("net/url.URL", "Scheme");
    ro.off_url_host = offset("net/url.URL", "Host");
    ro.off_url_path = offset("net/url.URL", "Path");
    ro.off_url_raw_query = offset("net/url.URL", "RawQuery");
    ro.off_resp_status_code = offset("net/http.Response", "StatusCode");
    ro.off_resp_proto_major = offset("net/http.Response", "ProtoMajor");
    ro.off_resp_proto_minor = offset("net/http.Response", "ProtoMinor");
    let linkable = (plan.pconn_round_trip.as_ref(), optional("net/http.persistConn", "conn"));
    let conn_offsets = crate::conn_offsets(&plan.fields);
    if let ((Some(_), Some(conn)), Some(conn_offsets)) = (linkable, conn_offsets) {
        ro.off_pconn_conn_data = conn + 8; // an interface's data word follows its itab
        (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
        ro.has_conn_offsets = true;
    }
    shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    attached.function(
        path,
        &plan.round_trip,
        &p.http_client_enter,
        &p.http_client_return_multi,
        &p.http_client_return_single,
        &options,
    )?;
    if let (Some(pconn), true) = (&plan.pconn_round_trip, conn_offsets.is_some()) {
        let how = attached.entry(path, pconn, &p.http_client_conn, options.placement)?;
        attached.probes.push(format!("{}: entry on {how}", pconn.function.name));
    }
    Ok(attached)
}
