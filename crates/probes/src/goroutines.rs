//! Goroutine ancestry (`bpf/goroutines.bpf.c` on runtime.newproc1), so that work a request
//! hands to other goroutines, at any depth, stays in the request's trace.

use std::mem::MaybeUninit;
use std::path::Path;

use goinfo::GoBinary;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;

use crate::skel::goroutines::GoroutinesSkelBuilder;
use crate::{AttachOptions, Attached, Error, FunctionPlan, SharedMaps, Skip};

pub const NAME: &str = "goroutine ancestry";
const NEWPROC1: &str = "runtime.newproc1";

#[derive(Debug, Clone)]
pub struct GoroutinesPlan {
    pub newproc1: FunctionPlan,
}

pub fn plan(bin: &GoBinary) -> Result<GoroutinesPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    crate::require_register_abi(bin).map_err(skip)?;
    Ok(GoroutinesPlan { newproc1: FunctionPlan::new(bin, NEWPROC1).map_err(skip)? })
}

pub fn attach(
    plan: &GoroutinesPlan,
    path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<Attached, Error> {
    let bpf = |what: &str| {
        let what = format!("{what} ({NAME}, {})", path.display());
        move |source| Error::Bpf { what, source }
    };
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = GoroutinesSkelBuilder::default().open(&mut storage).map_err(bpf("open"))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::Internal { what: "goroutines object has no .rodata".into() })?;
    ro.filter_pids = options.filter_pids;
    shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    attached.function(
        path,
        &plan.newproc1,
        &p.goroutine_spawn_enter,
        &p.goroutine_spawn_return_multi,
        &p.goroutine_spawn_return_single,
        &options,
    )?;
    Ok(attached)
}
