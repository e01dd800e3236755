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
];

#[derive(Debug, Clone)]
pub struct HttpClientPlan {
    pub round_trip: FunctionPlan,
    pub fields: Vec<FieldOffset>,
}

pub fn plan(bin: &GoBinary) -> Result<HttpClientPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    crate::require_register_abi(bin).map_err(skip)?;
    let round_trip = FunctionPlan::new(bin, ROUND_TRIP).map_err(skip)?;
    let fields = offsets::resolve(bin, FIELDS).map_err(skip)?;
    Ok(HttpClientPlan { round_trip, fields })
}

pub fn attach(
    plan: &HttpClientPlan,
    path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<Attached, Error> {
    let bpf = |what: &str| {
        let what = format!("{what} ({NAME}, {})", path.display());
        move |source| Error::Bpf { what, source }
    };
    let offset = |s, f| crate::offset_of(&plan.fields, s, f).unwrap_or(0);
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = HttpClientSkelBuilder::default().open(&mut storage).map_err(bpf("open"))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::Internal { what: "http_client object has no .rodata".into() })?;
    ro.filter_pids = options.filter_pids;
    ro.off_req_method = offset("net/http.Request", "Method");
    ro.off_req_url = offset("net/http.Request", "URL");
    ro.off_url_scheme = offset("net/url.URL", "Scheme");
    ro.off_url_host = offset("net/url.URL", "Host");
    ro.off_url_path = offset("net/url.URL", "Path");
    ro.off_url_raw_query = offset("net/url.URL", "RawQuery");
    ro.off_resp_status_code = offset("net/http.Response", "StatusCode");
    ro.off_resp_proto_major = offset("net/http.Response", "ProtoMajor");
    ro.off_resp_proto_minor = offset("net/http.Response", "ProtoMinor");
    let m = &mut open.maps;
    shared.reuse_in([&mut m.events, &mut m.traced_pids, &mut m.stats, &mut m.goroutine_ctx])?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    attached.function(
        path,
        &plan.round_trip.function,
        &plan.round_trip.return_offsets,
        &p.http_client_enter,
        &p.http_client_return_multi,
        &p.http_client_return_single,
        options.uprobe_multi,
    )?;
    Ok(attached)
}
