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

/// Functions whose `go` statements start goroutines that never work for a span: net/http's
/// background read of a server connection (one per request) and a client connection's read
/// and write loops.
const STARTERS_OF_NO_SPAN: &[&str] =
    &["net/http.(*connReader).startBackgroundRead", "net/http.(*Transport).dialConn"];
/// As many as the program's `no_span_starters` holds.
const NO_SPAN_STARTERS_MAX: usize = 4;

/// On the system stack the g register holds g0, whose `m.curg` is the goroutine that ran the
/// `go` statement: with these, the probe at `CALL runqput` alone knows parent and child. The
/// new g's `gopc`, the address of its `go` statement, tells STARTERS_OF_NO_SPAN's apart.
pub const FIELDS: &[FieldSpec] = &[
    FieldSpec::std("runtime.g", "m", false),
    FieldSpec::std("runtime.m", "curg", false),
    FieldSpec::std("runtime.g", "gopc", false),
];

/// The closure's `CALL newproc1` and `CALL runqput`.
#[derive(Debug, Clone, Copy)]
pub struct SpawnCalls {
    pub create_offset: u64,
    pub queue_offset: u64,
    /// The `CALL runqput`'s link-time address: with the probe's run-time one, it gives the
    /// load bias of a position-independent executable.
    pub queue_address: u64,
}

#[derive(Debug, Clone)]
pub struct GoroutinesPlan {
    pub newproc1: FunctionPlan,
    /// When the code has exactly one of each call: probes there replace newproc1's entry and
    /// single-stepped RET.
    pub calls: Option<SpawnCalls>,
    /// Offsets of `g.m` and `m.curg`: then one probe, at `CALL runqput`, does for both.
    pub curg: Option<(u64, u64)>,
    /// Offset of `g.gopc` and the address ranges of the STARTERS_OF_NO_SPAN present.
    pub no_span_starters: Option<(u64, Vec<std::ops::Range<u64>>)>,
}

/// `layouts` must have been loaded for at least FIELDS.
pub fn plan(bin: &GoBinary, layouts: &offsets::Layouts) -> Result<GoroutinesPlan, Skip> {
    let skip = |reason: String| Skip { instrumentation: NAME, reason };
    crate::require_register_abi(bin).map_err(skip)?;
    let newproc1 = FunctionPlan::new(bin, NEWPROC1).map_err(skip)?;
    let fields = offsets::resolve(bin, layouts, FIELDS).unwrap_or_default();
    let field = |s, f| crate::offset_of(&fields, s, f);
    let curg = field("runtime.g", "m").zip(field("runtime.m", "curg"));
    let no_span_starters = field("runtime.g", "gopc").map(|gopc| {
        let starters = STARTERS_OF_NO_SPAN.iter().filter_map(|name| bin.function(name).ok());
        let ranges = starters.map(|f| f.address..f.address + f.size);
        (gopc, ranges.take(NO_SPAN_STARTERS_MAX).collect())
    });
    let calls = (|| {
        let closure = bin.function(NEWPROC_CLOSURE).ok()?;
        let runqput = bin.function(RUNQPUT).ok()?;
        match (
            bin.calls_to(&closure, &newproc1.function).as_slice(),
            bin.calls_to(&closure, &runqput).as_slice(),
        ) {
            ([create], [queue]) if create < queue => Some(SpawnCalls {
                create_offset: *create,
                queue_offset: *queue,
                queue_address: queue - closure.file_offset + closure.address,
            }),
            _ => None,
        }
    })();
    Ok(GoroutinesPlan { newproc1, calls, curg, no_span_starters })
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
    if let (Some(calls), Some((gopc, starters))) = (plan.calls, &plan.no_span_starters) {
        (ro.off_g_gopc, ro.queue_call_address) = (*gopc, calls.queue_address);
        for (i, range) in starters.iter().enumerate() {
            (ro.no_span_starter_begin[i], ro.no_span_starter_end[i]) = (range.start, range.end);
        }
    }
    shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    let skel = open.load().map_err(bpf("load"))?;
    let p = &skel.progs;
    let mut attached = Attached::new(NAME, path);
    match (plan.calls, options.placement) {
        (
            Some(SpawnCalls { create_offset: create, queue_offset: queue, .. }),
            Placement::Emulated,
        ) => {
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
