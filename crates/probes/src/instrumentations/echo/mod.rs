//! echo routes (`github.com/labstack/echo/v4`): no spans of its own; the net/http server span
//! of a request echo routed takes the matched route's path (`/users/:id`) as `http.route` and
//! for its name, as `c.Path()` gives it, never the raw path. Read where `(*Echo).ServeHTTP`'s
//! call to `(*Router).Find` returns, or its closure's (the one that routes after `Pre`
//! middleware) (`echo.bpf.c`): two probes on instructions the kernel emulates, no RET probe.

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};

use crate::load::{bpf_object, load};
use crate::plan::offset_of;
use crate::{AttachContext, Attached, CallReturn, Error, Instrumentation, Plan, Report, Target};

bpf_object!("echo", EchoSkelBuilder);

pub struct Echo;

pub const MODULE: &str = "github.com/labstack/echo/v4";
const SERVE: &str = "github.com/labstack/echo/v4.(*Echo).ServeHTTP";
/// ServeHTTP's closure that routes when there is Pre middleware.
const SERVE_AFTER_PRE: &str = "github.com/labstack/echo/v4.(*Echo).ServeHTTP.func1";
const FIND: &str = "github.com/labstack/echo/v4.(*Router).Find";
const CONTEXT: &str = "github.com/labstack/echo/v4.context";

const FIELDS: &[FieldSpec] =
    &[FieldSpec { module: MODULE, struct_name: CONTEXT, field: "path", required: true }];

impl Instrumentation for Echo {
    fn name(&self) -> &'static str {
        "echo routes"
    }

    fn target(&self) -> Target {
        Target::Module { path: MODULE, oldest: (4, 0) }
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        let fields = offsets::resolve(bin, layouts, FIELDS)?;
        let context = format!("*{CONTEXT}");
        let hashes = bin.type_hashes(&[&context]).map_err(|e| e.to_string())?;
        let context_hash =
            *hashes.get(&context).ok_or(format!("{context} has no type descriptor"))?;
        let mut finds = vec![CallReturn::new(bin, SERVE, FIND)?];
        if bin.function(SERVE_AFTER_PRE).is_ok() {
            finds.push(CallReturn::new(bin, SERVE_AFTER_PRE, FIND)?);
        }
        Ok(Box::new(EchoPlan { finds, context_hash, fields }))
    }
}

#[derive(Debug, Clone)]
struct EchoPlan {
    finds: Vec<CallReturn>,
    /// The type hash of *echo.context, the Context echo routes with.
    context_hash: u32,
    fields: Vec<FieldOffset>,
}

impl Plan for EchoPlan {
    fn report(&self) -> Report<'_> {
        Report {
            note: None,
            functions: Vec::new(),
            fields: &self.fields,
            calls: self.finds.iter().collect(),
        }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::EchoSkelBuilder>(&mut storage, to, |ro| {
            ro.off_ctx_path = offset_of(&self.fields, CONTEXT, "path").unwrap_or(0);
            ro.hash_context = self.context_hash;
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        for finds in &self.finds {
            attached.call_returns(finds, &p.echo_find_call, &p.echo_find_returned)?;
        }
        Ok(attached)
    }
}
