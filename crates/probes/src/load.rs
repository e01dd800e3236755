//! Loading one instrumentation's BPF object: open its skeleton, set the settings every program
//! shares (gotel.h: the pid filter, the sampler, the event kind), let the instrumentation set
//! its own offsets, point the shared maps at the agent's, load.

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{OpenObject, ProgramAttachType};

use crate::{AttachContext, Error};

/// A skeleton generated from one `NAME.bpf.c` (build.rs), as `bpf_object!` declares it.
pub(crate) trait Object<'obj>: SkelBuilder<'obj> + Default {
    /// The object's `.rodata`: its `const volatile` settings.
    type Rodata;
    fn rodata(open: &mut Self::Output) -> Option<&mut Self::Rodata>;
    /// Sets what every program including gotel.h reads.
    fn configure(rodata: &mut Self::Rodata, to: &AttachContext<'_>);
}

/// Declares the skeleton of `NAME.bpf.c`, the C beside the module that calls it, as a `skel`
/// module; with its builder's name, an instrumentation's, which `load` can load.
macro_rules! bpf_object {
    ($name:literal) => {
        #[allow(
            clippy::all,
            unused_imports,
            dead_code,
            non_camel_case_types,
            non_upper_case_globals
        )]
        mod skel {
            include!(concat!(env!("OUT_DIR"), "/", $name, ".skel.rs"));
        }
    };
    ($name:literal, $builder:ident) => {
        $crate::load::bpf_object!($name);

        impl<'obj> $crate::load::Object<'obj> for skel::$builder {
            type Rodata = skel::types::rodata;

            fn rodata(open: &mut Self::Output) -> Option<&mut Self::Rodata> {
                open.maps.rodata_data.as_deref_mut()
            }

            fn configure(ro: &mut Self::Rodata, to: &$crate::AttachContext<'_>) {
                ro.filter_pids = to.options.filter_pids;
                (ro.sampler, ro.sampler_threshold) = to.options.sampler.rodata();
                ro.sampler_parent_based = to.options.sampler.parent_based;
                ro.event_kind = to.event_kind;
                ro.events_for_unsampled = to.options.events_for_unsampled;
            }
        }
    };
}
pub(crate) use bpf_object;

/// Opens `B`'s object in `storage`, configures it (the shared settings, then `own`: the
/// instrumentation's offsets) and loads it with the shared maps.
pub(crate) fn load<'obj, B: Object<'obj>>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    to: &AttachContext<'_>,
    own: impl FnOnce(&mut B::Rodata),
) -> Result<<B::Output as OpenSkel<'obj>>::Output, Error> {
    let bpf = |what: &str| crate::bpf_error(to.instrumentation, to.path, what);
    let mut open = B::default().open(storage).map_err(bpf("open"))?;
    let ro = B::rodata(&mut open).ok_or_else(|| Error::Internal {
        what: format!("the BPF object of {} has no .rodata", to.instrumentation),
    })?;
    B::configure(ro, to);
    own(ro);
    if to.options.uprobe_multi && crate::attach::uprobe_multi_supported() {
        // Single places get uprobe_multi links too (attach.rs): they need fewer privileges.
        for mut prog in open.open_object_mut().progs_mut() {
            if prog.section() == "uprobe" {
                prog.set_attach_type(ProgramAttachType::TraceUprobeMulti);
            }
        }
    }
    to.shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
    open.load().map_err(bpf("load"))
}
