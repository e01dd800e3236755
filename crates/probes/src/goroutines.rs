//! Goroutine ancestry (`bpf/goroutines.bpf.c` on runtime.newproc1), so that work a request
//! hands to other goroutines, at any depth, stays in the request's trace.

use std::mem::MaybeUninit;
use std::path::Path;

use goinfo::GoBinary;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use offsets::FieldSpec;

use crate::skel::goroutines::GoroutinesSkelBuilder;
use crate::{AttachOptions, Attached, Error, FunctionPlan, Placement, SharedMaps, Skip};

pub const NAME: &str = "goroutine ancestry";
const NEWPROC1: &str = "runtime.newproc1";
/// The closure `go` statements run on the system stack: newproc1, then runqput the new g.
const NEWPROC_CLOSURE: &str = "runtime.newproc.func1";
const RUNQPUT: &str = "runtime.runqput";

/// On the system stack the g register holds g0, whose `m.curg` is the goroutine that ran the
/// `go` statement: with these, the probe at `CALL runqput` alone knows parent and child.
pub const FIELDS: &[FieldSpec] =
    &[FieldSpec::std("runtime.g", "m", false), FieldSpec::std("runtime.m", "curg", false)];

#[derive(Debug, Clone)]
pub struct GoroutinesPlan {
    pub newproc1: FunctionPlan,
    /// File offsets of the closure's `CALL newproc1` and `CALL runqput`, when the code has
    /// exactly one of each: probes there replace newproc1's entry and single-stepped RET.
    pub calls: Option<(u64, u64)>,
    /// Offsets of `g.m` and `m.curg`: then one probe, at `CALL runqput`, does for both.
    pub curg: Option<(u64, u64)>,
}

/// `layouts` must have been loaded for at least FIELDS.
pub fn plan(bin: &GoBinary, layouts: &offsets::Layouts) -> Result<GoroutinesPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    crate::require_register_abi(bin).map_err(skip)?;
    let newproc1 = FunctionPlan::new(bin, NEWPROC1).map_err(skip)?;
    let curg = offsets::resolve(bin, layouts, FIELDS).ok().and_then(|fields| {
        Some((
            crate::offset_of(&fields, "runtime.g", "m")?,
            crate::offset_of(&fields, "runtime.m", "curg")?,
        ))
    });
    let calls = (|| {
        let closure = bin.function(NEWPROC_CLOSURE).ok()?;
        let runqput = bin.function(RUNQPUT).ok()?;
        match (
            bin.calls_to(&closure, &newproc1.function).as_slice(),
            bin.calls_to(&closure, &runqput).as_slice(),
        ) {
            ([create], [queue]) if create < queue => Some((*create, *queue)),
            _ => None,
        }
    })();
    Ok(GoroutinesPlan { newproc1, calls, curg })
}

pub fn attach(
    plan: &GoroutinesPlan,
    path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> Result<Attached, Error> {
    let bpf = |what: &str| crate::bpf_error(NAME, path, what);
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = GoroutinesSkelBuilder::default().open(&mut storage).map_err(bpf("open"))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::Internal { what: "goroutines object has no .rodata".into() })?;
    ro.filter_pids = options.filter_pids;
    let one_probe = plan.curg.filter(|_| plan.calls.is_some());
    if let Some((g_m, m_curg)) = one_probe {
        (ro.parent_from_m, ro.off_g_m, ro.off_m_curg) = (true, g_m, m_curg);
    }
    shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    match (plan.calls, options.placement) {
        (Some((create, queue)), Placement::Emulated) => {
            let mut probes = vec![(queue, &p.goroutine_spawn_queued)];
            if one_probe.is_none() {
                probes.insert(0, (create, &p.goroutine_spawn_enter));
            }
            for (offset, prog) in probes {
                let link = prog
                    .attach_uprobe(false, -1, path, usize::try_from(offset).unwrap_or(usize::MAX))
                    .map_err(bpf(&format!("attach uprobe in {NEWPROC_CLOSURE} at {offset:#x}")))?;
                attached.links.push(link);
            }
            attached.probes.push(match one_probe {
                Some(_) => format!("{NEWPROC_CLOSURE}: on its call to {RUNQPUT}"),
                None => format!("{NEWPROC_CLOSURE}: on its calls to {NEWPROC1} and {RUNQPUT}"),
            });
        }
        _ => attached.function(
            path,
            &plan.newproc1,
            &p.goroutine_spawn_enter,
            &p.goroutine_spawn_return_multi,
            &p.goroutine_spawn_return_single,
            &options,
        )?,
    }
    Ok(attached)
}
