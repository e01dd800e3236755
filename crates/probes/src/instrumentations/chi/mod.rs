//! chi routes (`github.com/go-chi/chi/v5`): no spans of its own; the net/http server span of a
//! request chi routed takes its route pattern (`/users/{id}`, through mounted routers:
//! `/api/items/{id}`) as `http.route` and for its name, as `RouteContext(ctx).RoutePattern()`
//! gives it, never the raw path. Read where each `(*Mux).routeHTTP`'s call to
//! `(*node).FindRoute` returns (`chi.bpf.c`): two probes on instructions the kernel emulates
//! per router on the way, no RET probe.

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::version::Version;
use offsets::{FieldOffset, FieldSpec, Layouts};

use crate::load::{bpf_object, load};
use crate::plan::offset_of;
use crate::{AttachContext, Attached, CallReturn, Error, Instrumentation, Plan, Report, Target};

bpf_object!("chi", ChiSkelBuilder);

pub struct Chi;

pub const MODULE: &str = "github.com/go-chi/chi/v5";
const ROUTE: &str = "github.com/go-chi/chi/v5.(*Mux).routeHTTP";
const FIND: &str = "github.com/go-chi/chi/v5.(*node).FindRoute";
const CONTEXT: &str = "github.com/go-chi/chi/v5.Context";
/// From here on RoutePattern() cuts a trailing slash ("/api/" -> "/api").
const TRIMS_TRAILING_SLASH: [u64; 3] = [5, 0, 8];

const FIELDS: &[FieldSpec] =
    &[FieldSpec { module: MODULE, struct_name: CONTEXT, field: "RoutePatterns", required: true }];

impl Instrumentation for Chi {
    fn name(&self) -> &'static str {
        "chi routes"
    }

    fn target(&self) -> Target {
        Target::Module { path: MODULE, oldest: (5, 0) }
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        let stated = offsets::module_version(bin, layouts, MODULE)?.version;
        let version = Version::parse(&stated).ok_or(format!("chi {stated}: not a version"))?;
        let fields = offsets::resolve(bin, layouts, FIELDS)?;
        let finds = CallReturn::new(bin, ROUTE, FIND)?;
        let trims_trailing_slash = version.numbers >= TRIMS_TRAILING_SLASH;
        Ok(Box::new(ChiPlan { finds, trims_trailing_slash, fields }))
    }
}

#[derive(Debug, Clone)]
struct ChiPlan {
    finds: CallReturn,
    trims_trailing_slash: bool,
    fields: Vec<FieldOffset>,
}

impl Plan for ChiPlan {
    fn report(&self) -> Report<'_> {
        let note = match self.trims_trailing_slash {
            true => "patterns without a trailing slash, as from v5.0.8",
            false => "patterns as before v5.0.8, trailing slash kept",
        };
        Report {
            note: Some(note.to_string()),
            functions: Vec::new(),
            fields: &self.fields,
            calls: vec![&self.finds],
        }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::ChiSkelBuilder>(&mut storage, to, |ro| {
            ro.off_ctx_route_patterns =
                offset_of(&self.fields, CONTEXT, "RoutePatterns").unwrap_or(0);
            ro.trims_trailing_slash = self.trims_trailing_slash;
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        attached.call_returns(&self.finds, &p.chi_find_call, &p.chi_find_returned)?;
        Ok(attached)
    }
}
