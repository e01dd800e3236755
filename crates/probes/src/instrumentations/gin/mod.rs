//! gin routes (`github.com/gin-gonic/gin`): no spans of its own; the net/http server span of a
//! request gin routed takes gin's route template (`/users/:id`) as `http.route` and for its
//! name, read from gin's own match (`gin.bpf.c`, `routes.h`): never the raw path, so the
//! number of span names stays bounded. Probed at `(*Context).Next`'s entry, or where every
//! call of it was inlined (Go 1.19 builds of gin 1.7), at `(*Engine).handleHTTPRequest`'s
//! entry and RETs, which cost more (the kernel single-steps a RET).

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};

use crate::load::{bpf_object, load};
use crate::plan::offset_of;
use crate::{AttachContext, Attached, Error, FunctionPlan, Instrumentation, Plan, Report, Target};

bpf_object!("gin", GinSkelBuilder);

pub struct Gin;

pub const MODULE: &str = "github.com/gin-gonic/gin";
const CONTEXT: &str = "github.com/gin-gonic/gin.Context";
/// Runs the matched route's handler chain, on the request's goroutine, after gin set
/// Context.fullPath (from v1.5).
const NEXT: &str = "github.com/gin-gonic/gin.(*Context).Next";
/// Matches the route, then runs its handlers; the Context goes back to gin's pool after.
const HANDLE: &str = "github.com/gin-gonic/gin.(*Engine).handleHTTPRequest";

const FIELDS: &[FieldSpec] =
    &[FieldSpec { module: MODULE, struct_name: CONTEXT, field: "fullPath", required: true }];

impl Instrumentation for Gin {
    fn name(&self) -> &'static str {
        "gin routes"
    }

    fn target(&self) -> Target {
        Target::Module { path: MODULE, oldest: (1, 7) }
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        let probe = match FunctionPlan::entry_only(bin, NEXT) {
            Ok(next) => Probe::Next(next),
            Err(_) => Probe::Handle(FunctionPlan::new(bin, HANDLE)?),
        };
        let fields = offsets::resolve(bin, layouts, FIELDS)?;
        Ok(Box::new(GinPlan { probe, fields }))
    }
}

/// Where the route is read.
#[derive(Debug, Clone)]
enum Probe {
    Next(FunctionPlan),
    /// Next inlined at every call: handleHTTPRequest's entry and RETs.
    Handle(FunctionPlan),
}

#[derive(Debug, Clone)]
struct GinPlan {
    probe: Probe,
    fields: Vec<FieldOffset>,
}

impl Plan for GinPlan {
    fn report(&self) -> Report<'_> {
        let (Probe::Next(f) | Probe::Handle(f)) = &self.probe;
        Report { note: None, functions: vec![f], fields: &self.fields, calls: Vec::new() }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::GinSkelBuilder>(&mut storage, to, |ro| {
            ro.off_ctx_full_path = offset_of(&self.fields, CONTEXT, "fullPath").unwrap_or(0);
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        match &self.probe {
            Probe::Next(next) => attached.entry_line(next, &p.gin_next)?,
            Probe::Handle(handle) => attached.function(
                handle,
                &p.gin_handle_enter,
                &p.gin_handle_return_multi,
                &p.gin_handle_return_single,
            )?,
        }
        Ok(attached)
    }
}
