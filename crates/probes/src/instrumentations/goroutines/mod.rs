//! Goroutine ancestry (`goroutines.bpf.c` on runtime.newproc1), so that work a request hands to
//! other goroutines, at any depth, stays in the request's trace. It makes no spans: client
//! instrumentations require it, for their spans' parents.

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldSpec, Layouts};

use crate::load::{bpf_object, load};
use crate::plan::offset_of;
use crate::{
    AttachContext, Attached, Depends, Error, FunctionPlan, Instrumentation, Placement, Plan,
    Report, Target,
};

bpf_object!("goroutines", GoroutinesSkelBuilder);

pub struct Goroutines;

pub(crate) const NAME: &str = "goroutine ancestry";
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
const FIELDS: &[FieldSpec] = &[
    FieldSpec::std("runtime.g", "m", false),
    FieldSpec::std("runtime.m", "curg", false),
    FieldSpec::std("runtime.g", "gopc", false),
];

/// The closure's `CALL newproc1` and `CALL runqput`.
#[derive(Debug, Clone, Copy)]
struct SpawnCalls {
    create_offset: u64,
    queue_offset: u64,
    /// The `CALL runqput`'s link-time address: with the probe's run-time one, it gives the
    /// load bias of a position-independent executable.
    queue_address: u64,
}

impl Instrumentation for Goroutines {
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
        Depends { only_when_required: true, ..Depends::default() }
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        Ok(Box::new(plan(bin, layouts)?))
    }
}

#[derive(Debug, Clone)]
struct GoroutinesPlan {
    newproc1: FunctionPlan,
    /// When the code has exactly one of each call: probes there replace newproc1's entry and
    /// single-stepped RET.
    calls: Option<SpawnCalls>,
    /// Offsets of `g.m` and `m.curg`: then one probe, at `CALL runqput`, does for both.
    curg: Option<(u64, u64)>,
    /// Offset of `g.gopc` and the address ranges of the STARTERS_OF_NO_SPAN present.
    no_span_starters: Option<(u64, Vec<std::ops::Range<u64>>)>,
}

fn plan(bin: &GoBinary, layouts: &Layouts) -> Result<GoroutinesPlan, String> {
    let newproc1 = FunctionPlan::new(bin, NEWPROC1)?;
    let fields = offsets::resolve(bin, layouts, FIELDS).unwrap_or_default();
    let field = |s, f| offset_of(&fields, s, f);
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

impl Plan for GoroutinesPlan {
    fn report(&self) -> Report<'_> {
        let note = Some("parents for client spans".to_string());
        Report { note, functions: vec![&self.newproc1], fields: &[], calls: Vec::new() }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let one_probe = self.curg.filter(|_| self.calls.is_some());
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::GoroutinesSkelBuilder>(&mut storage, to, |ro| {
            if let Some((g_m, m_curg)) = one_probe {
                (ro.parent_from_m, ro.off_g_m, ro.off_m_curg) = (true, g_m, m_curg);
            }
            if let (Some(calls), Some((gopc, starters))) = (self.calls, &self.no_span_starters) {
                (ro.off_g_gopc, ro.queue_call_address) = (*gopc, calls.queue_address);
                for (i, range) in starters.iter().enumerate() {
                    (ro.no_span_starter_begin[i], ro.no_span_starter_end[i]) =
                        (range.start, range.end);
                }
            }
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        match (self.calls, to.options.placement) {
            (
                Some(SpawnCalls { create_offset: create, queue_offset: queue, .. }),
                Placement::Emulated,
            ) => {
                if one_probe.is_none() {
                    let at = format!("{NEWPROC_CLOSURE} {create:#x}");
                    attached.at(create, &p.goroutine_spawn_enter, &at)?;
                }
                let at = format!("{NEWPROC_CLOSURE} {queue:#x}");
                attached.at(queue, &p.goroutine_spawn_queued, &at)?;
                attached.probes.push(match one_probe {
                    Some(_) => format!("{NEWPROC_CLOSURE}: on its call to {RUNQPUT}"),
                    None => {
                        format!("{NEWPROC_CLOSURE}: on its calls to {NEWPROC1} and {RUNQPUT}")
                    }
                });
            }
            _ => attached.function(
                &self.newproc1,
                &p.goroutine_spawn_enter,
                &p.goroutine_spawn_return_multi,
                &p.goroutine_spawn_return_single,
            )?,
        }
        Ok(attached)
    }
}
