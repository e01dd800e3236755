//! gorilla/mux routes (`github.com/gorilla/mux`): no spans of its own; the net/http server span
//! of a request the router matched takes the route's path template (`/users/{id}`) as
//! `http.route` and for its name, as `mux.CurrentRoute(r).GetPathTemplate()` would give it,
//! never the raw path. Read where `(*Router).ServeHTTP`'s call to `(*Router).Match` returns
//! (`gorilla_mux.bpf.c`): two probes on instructions the kernel emulates, no RET probe.

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};

use crate::load::{bpf_object, load};
use crate::plan::offset_of;
use crate::{AttachContext, Attached, CallReturn, Error, Instrumentation, Plan, Report, Target};

bpf_object!("gorilla_mux", GorillaMuxSkelBuilder);

pub struct GorillaMux;

pub const MODULE: &str = "github.com/gorilla/mux";
const SERVE: &str = "github.com/gorilla/mux.(*Router).ServeHTTP";
const MATCH: &str = "github.com/gorilla/mux.(*Router).Match";
const ROUTE_MATCH: &str = "github.com/gorilla/mux.RouteMatch";
const ROUTE: &str = "github.com/gorilla/mux.Route";
const ROUTE_CONF: &str = "github.com/gorilla/mux.routeConf";
const GROUP: &str = "github.com/gorilla/mux.routeRegexpGroup";
const REGEXP: &str = "github.com/gorilla/mux.routeRegexp";

const FIELDS: &[FieldSpec] = &[
    FieldSpec { module: MODULE, struct_name: ROUTE_MATCH, field: "Route", required: true },
    // Before v1.7: Route.regexp, a *routeRegexpGroup.
    FieldSpec { module: MODULE, struct_name: ROUTE, field: "regexp", required: false },
    // From v1.7: Route embeds routeConf, which holds the group by value.
    FieldSpec { module: MODULE, struct_name: ROUTE, field: "routeConf", required: false },
    FieldSpec { module: MODULE, struct_name: ROUTE_CONF, field: "regexp", required: false },
    FieldSpec { module: MODULE, struct_name: GROUP, field: "path", required: true },
    FieldSpec { module: MODULE, struct_name: REGEXP, field: "template", required: true },
];

impl Instrumentation for GorillaMux {
    fn name(&self) -> &'static str {
        "gorilla/mux routes"
    }

    fn target(&self) -> Target {
        Target::Module { path: MODULE, oldest: (1, 6) }
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        let fields = offsets::resolve(bin, layouts, FIELDS)?;
        let field = |s, f| offset_of(&fields, s, f);
        let regexp = match (field(ROUTE, "regexp"), field(ROUTE, "routeConf")) {
            (Some(pointer), _) => Regexp::Pointer(pointer),
            (None, Some(conf)) => Regexp::Value(
                conf + field(ROUTE_CONF, "regexp").ok_or("mux.routeConf has no regexp field")?,
            ),
            (None, None) => return Err("mux.Route has neither regexp nor routeConf".into()),
        };
        let matches = CallReturn::new(bin, SERVE, MATCH)?;
        Ok(Box::new(GorillaMuxPlan { matches, regexp, fields }))
    }
}

/// Where a Route keeps its routeRegexpGroup: the offset of the field.
#[derive(Debug, Clone, Copy)]
enum Regexp {
    Pointer(u64),
    Value(u64),
}

#[derive(Debug, Clone)]
struct GorillaMuxPlan {
    matches: CallReturn,
    regexp: Regexp,
    fields: Vec<FieldOffset>,
}

impl Plan for GorillaMuxPlan {
    fn report(&self) -> Report<'_> {
        let note = match self.regexp {
            Regexp::Pointer(_) => "the layout before v1.7",
            Regexp::Value(_) => "the layout from v1.7",
        };
        Report {
            note: Some(note.to_string()),
            functions: Vec::new(),
            fields: &self.fields,
            calls: vec![&self.matches],
        }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let offset = |s, f| offset_of(&self.fields, s, f).unwrap_or(0);
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::GorillaMuxSkelBuilder>(&mut storage, to, |ro| {
            ro.off_match_route = offset(ROUTE_MATCH, "Route");
            (ro.off_route_regexp, ro.regexp_by_pointer) = match self.regexp {
                Regexp::Pointer(off) => (off, true),
                Regexp::Value(off) => (off, false),
            };
            ro.off_group_path = offset(GROUP, "path");
            ro.off_regexp_template = offset(REGEXP, "template");
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        attached.call_returns(&self.matches, &p.mux_match_call, &p.mux_match_returned)?;
        Ok(attached)
    }
}
