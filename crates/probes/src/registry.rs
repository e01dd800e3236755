//! The registry (`instrumentations::ALL`) put to work: every instrumentation's plan for one
//! executable, which of them to attach given what they depend on, and the fields the offsets
//! database must cover. Nothing outside `instrumentations/` names an instrumentation.

use goinfo::{GoBinary, ModuleVersion};
use offsets::{FieldSpec, Layouts};

use crate::inject::Sides;
use crate::instrumentations::ALL;
use crate::plan::version_at_least;
use crate::{
    AttachContext, AttachOptions, Attached, Error, Instrumentation, Plan, SharedMaps, Skip, Target,
    REGISTER_ABI,
};

/// One instrumentation's plan for an executable, or why it does not apply.
pub struct Planned {
    pub instrumentation: &'static dyn Instrumentation,
    pub plan: Result<Box<dyn Plan>, Skip>,
    /// The version of the library it instruments, and how it was learned (`Target::Module`).
    pub library: Option<ModuleVersion>,
}

/// Every instrumentation's plan for `bin`, in the registry's order (for `gotel inspect` and
/// attaching). Pure.
pub fn plan_all(bin: &GoBinary) -> Vec<Planned> {
    // DWARF and the type descriptors are read once, for every instrumentation's fields.
    let layouts = Layouts::load(bin, &declared_fields());
    ALL.iter()
        .map(|&instrumentation| {
            let library = supported(bin, &layouts, instrumentation.target());
            let plan = library
                .as_ref()
                .map_err(String::clone)
                .and_then(|_| instrumentation.plan(bin, &layouts))
                .map_err(|reason| Skip { instrumentation: instrumentation.name(), reason });
            Planned { instrumentation, plan, library: library.ok().flatten() }
        })
        .collect()
}

/// Whether `bin` has the library `target` names, in a version supported: the version, for a
/// module.
fn supported(
    bin: &GoBinary,
    layouts: &Layouts,
    target: Target,
) -> Result<Option<ModuleVersion>, String> {
    let info = bin.build_info();
    let module_version = match target {
        Target::Std => None,
        Target::Module { path, oldest } => {
            Some((path, offsets::module_version(bin, layouts, path)?, oldest))
        }
    };
    if let Some((1, minor, _)) = info.go_semver() {
        if minor < REGISTER_ABI.1 {
            return Err(format!(
                "built with {}; gotel needs Go 1.{} or later (register ABI)",
                info.go_version, REGISTER_ABI.1
            ));
        }
    }
    match module_version {
        Some((path, v, (major, minor))) if !version_at_least(&v.version, major, minor) => {
            let version = &v.version;
            Err(format!("{path} {version} is older than v{major}.{minor}, the oldest supported"))
        }
        v => Ok(v.map(|(_, v, _)| v)),
    }
}

/// The plans of one executable that are to be attached, and the skips worth reporting.
pub struct Selection<'p> {
    pub attach: Vec<(&'static dyn Instrumentation, &'p dyn Plan)>,
    /// Instrumentations that do not apply; one attached only when required is reported only
    /// when something requires it.
    pub skipped: Vec<&'p Skip>,
}

impl<'p> Selection<'p> {
    /// Every instrumentation that applies, and those they require; in the registry's order.
    pub fn of(plans: &'p [Planned]) -> Self {
        let required: Vec<&str> = plans
            .iter()
            .filter(|p| p.plan.is_ok() && !p.instrumentation.depends().only_when_required)
            .flat_map(|p| p.instrumentation.depends().requires.iter().copied())
            .collect();
        let mut selection = Selection { attach: Vec::new(), skipped: Vec::new() };
        for p in plans {
            let i = p.instrumentation;
            if i.depends().only_when_required && !required.contains(&i.name()) {
                continue;
            }
            match &p.plan {
                Ok(plan) => selection.attach.push((i, plan.as_ref())),
                Err(skip) => selection.skipped.push(skip),
            }
        }
        selection
    }

    /// Which ends of propagation at the socket layer have something to do here: clients whose
    /// spans injection carries, servers that take spans from a TCP option.
    pub fn injection(&self) -> Sides {
        Sides {
            send: self.attach.iter().any(|(i, _)| i.depends().injection),
            receive: self.attach.iter().any(|(i, _)| i.depends().receives_tcp_option),
        }
    }

    /// Attaches every selected plan to `path`, each on its own: one that fails (its program
    /// refused by this kernel, say) leaves the others tracing. Returns what attached and what
    /// failed, by name.
    pub fn attach(
        &self,
        path: &std::path::Path,
        shared: &SharedMaps,
        options: AttachOptions,
    ) -> (Vec<Attached>, Vec<(&'static str, Error)>) {
        let mut attached = Vec::with_capacity(self.attach.len());
        let mut failed = Vec::new();
        for (i, plan) in &self.attach {
            let event_kind = i.events().map_or(0, |e| e.kind);
            let to = AttachContext { instrumentation: i.name(), event_kind, path, shared, options };
            match plan.attach(&to) {
                Ok(a) => attached.push(a),
                Err(e) => failed.push((i.name(), e)),
            }
        }
        (attached, failed)
    }
}

/// Every struct field any instrumentation reads, the standard library's and modules': what
/// the offsets database must cover; each once, in the registry's order.
pub fn declared_fields() -> Vec<FieldSpec> {
    let mut all: Vec<FieldSpec> = Vec::new();
    for spec in ALL.iter().flat_map(|i| i.fields()) {
        if !all.contains(spec) {
            all.push(*spec);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Depends;

    /// An instrumentation that applies or not, with the given dependencies.
    struct Fake {
        name: &'static str,
        applies: bool,
        depends: Depends,
    }

    #[derive(Debug)]
    struct FakePlan;

    impl Plan for FakePlan {
        fn report(&self) -> crate::Report<'_> {
            crate::Report::default()
        }
        fn attach(&self, _: &AttachContext<'_>) -> Result<Attached, Error> {
            Err(Error::Internal { what: "a fake is never attached".into() })
        }
    }

    impl Instrumentation for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn target(&self) -> Target {
            Target::Std
        }
        fn fields(&self) -> &'static [FieldSpec] {
            &[]
        }
        fn depends(&self) -> Depends {
            self.depends
        }
        fn plan(&self, _: &GoBinary, _: &Layouts) -> Result<Box<dyn Plan>, String> {
            unreachable!("the tests plan by hand")
        }
    }

    const SUPPORT: Depends = Depends { only_when_required: true, ..NONE };
    const CLIENT: Depends = Depends { requires: &["support"], injection: true, ..NONE };
    const NONE: Depends = Depends {
        requires: &[],
        only_when_required: false,
        injection: false,
        receives_tcp_option: false,
    };
    static SERVER: Fake = Fake {
        name: "server",
        applies: true,
        depends: Depends { receives_tcp_option: true, ..NONE },
    };
    static CLIENT_ON: Fake = Fake { name: "client", applies: true, depends: CLIENT };
    static CLIENT_OFF: Fake = Fake { name: "client", applies: false, depends: CLIENT };
    static SUPPORT_ON: Fake = Fake { name: "support", applies: true, depends: SUPPORT };
    static SUPPORT_OFF: Fake = Fake { name: "support", applies: false, depends: SUPPORT };

    fn planned(fakes: &[&'static Fake]) -> Vec<Planned> {
        fakes
            .iter()
            .map(|&f| Planned {
                instrumentation: f,
                plan: if f.applies {
                    Ok(Box::new(FakePlan) as Box<dyn Plan>)
                } else {
                    Err(Skip { instrumentation: f.name, reason: "absent".into() })
                },
                library: None,
            })
            .collect()
    }

    fn names(s: &Selection<'_>) -> (Vec<&'static str>, Vec<&'static str>) {
        let attach = s.attach.iter().map(|(i, _)| i.name()).collect();
        (attach, s.skipped.iter().map(|skip| skip.instrumentation).collect())
    }

    #[test]
    fn what_is_required_is_attached_with_what_requires_it() {
        let plans = planned(&[&SERVER, &CLIENT_ON, &SUPPORT_ON]);
        let s = Selection::of(&plans);
        assert_eq!(names(&s), (vec!["server", "client", "support"], vec![]));
        assert_eq!(s.injection(), Sides { send: true, receive: true }, "client and server");
    }

    #[test]
    fn what_only_others_need_is_left_out_and_unreported_without_them() {
        let plans = planned(&[&SERVER, &CLIENT_OFF, &SUPPORT_ON]);
        let s = Selection::of(&plans);
        assert_eq!(names(&s), (vec!["server"], vec!["client"]));
        assert_eq!(s.injection(), Sides { send: false, receive: true }, "the server alone");
        let plans = planned(&[&SERVER, &CLIENT_OFF, &SUPPORT_OFF]);
        assert_eq!(names(&Selection::of(&plans)), (vec!["server"], vec!["client"]));
    }

    #[test]
    fn a_required_instrumentation_that_does_not_apply_is_reported() {
        let plans = planned(&[&SERVER, &CLIENT_ON, &SUPPORT_OFF]);
        assert_eq!(names(&Selection::of(&plans)), (vec!["server", "client"], vec!["support"]));
    }

    #[test]
    fn declared_fields_are_each_there_once() {
        let fields = declared_fields();
        for (i, f) in fields.iter().enumerate() {
            assert!(!fields[i + 1..].contains(f), "{} twice", f.key());
        }
        assert!(fields.iter().any(|f| f.key() == "net/http.Request.Method"));
        assert!(fields.iter().any(|f| f.module == "github.com/lib/pq"));
    }
}
