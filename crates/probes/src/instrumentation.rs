//! What every instrumentation is: the trait its folder implements, and the plan it makes for one
//! executable. The plan is pure (like cilium/ebpf's CollectionSpec) and attaching it gives the
//! live probes (`Attached`, like a Collection).

use std::path::Path;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};
use trace::{DurationMetric, MonotonicClock, Span};

use crate::{AttachOptions, Attached, CallReturn, Error, FunctionPlan, SharedMaps};

/// One instrumented library, or one side of it (a server, a client).
pub trait Instrumentation: Sync {
    /// As logs, `gotel inspect` and the daemon's status call it: "net/http server".
    fn name(&self) -> &'static str;

    /// The library it instruments, and the oldest version it supports.
    fn target(&self) -> Target;

    /// Every struct field its programs read. Those of the standard library are what the
    /// offsets database must cover; the others come from the binary itself.
    fn fields(&self) -> &'static [FieldSpec];

    /// What it needs of the others, and they of it.
    fn depends(&self) -> Depends {
        Depends::default()
    }

    /// Whether and how it applies to `bin`, or why not. Pure: reads the binary and `layouts`
    /// (loaded for at least `fields()`), needs no privileges.
    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String>;

    /// The span events its programs write; None for one that makes no spans itself.
    fn events(&self) -> Option<Events> {
        None
    }
}

/// The library an instrumentation reads, checked for every instrumentation alike before its
/// plan is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The standard library, of any Go with the register ABI.
    Std,
    /// A module the binary's build information must list, from version `oldest` (major,
    /// minor) on. Newer versions are tried, with the struct layouts the binary describes.
    Module { path: &'static str, oldest: (u32, u32) },
}

/// Go (major, minor) from which arguments are passed in registers, as every program reads
/// them; before it they are on the stack.
pub const REGISTER_ABI: (u32, u32) = (1, 17);

/// How instrumentations depend on each other, declared so that the agent needs no special
/// cases.
#[derive(Debug, Clone, Copy, Default)]
pub struct Depends {
    /// Instrumentations (by name) attached whenever this one is: goroutine ancestry, for the
    /// parents of client spans.
    pub requires: &'static [&'static str],
    /// Attached only because another requires it, never on its own.
    pub only_when_required: bool,
    /// Its spans are what outgoing traceparent injection carries to other hosts: injection
    /// starts only where such an instrumentation is attached.
    pub injection: bool,
    /// Its server spans take parents that clients on other hosts sent in a TCP header option
    /// (TLS): the program that reads them starts only where such an instrumentation is.
    pub receives_tcp_option: bool,
}

/// The span events of one instrumentation, as its BPF programs write them.
#[derive(Debug, Clone, Copy)]
pub struct Events {
    /// `struct span_header`'s kind: unique among instrumentations (a test checks), set into
    /// the programs at load time.
    pub kind: u32,
    /// The event's size in bytes; shorter samples are refused before `span` sees them.
    pub size: usize,
    /// One event of at least `size` bytes -> its span, or why its values cannot be what the
    /// fields hold (the sign of wrong offsets).
    pub span: fn(&[u8], &MonotonicClock, &SpanOptions) -> Result<Span, String>,
    /// The histogram its spans' durations count in, sampled or not.
    pub metric: Option<&'static DurationMetric>,
}

/// What the user chose about what spans carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanOptions {
    /// db.query.text as the application wrote it, literals included, instead of with every
    /// literal replaced by `?`: values in queries may be secrets or personal data.
    pub raw_db_queries: bool,
}

/// Why an instrumentation does not apply to an executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub instrumentation: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.instrumentation, self.reason)
    }
}

/// One instrumentation's plan for one executable: every function, offset and option resolved.
pub trait Plan: std::fmt::Debug + Send {
    /// What `gotel inspect` shows of it.
    fn report(&self) -> Report<'_>;

    /// Loads the programs with the plan's offsets and attaches them.
    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error>;
}

/// A plan as `gotel inspect` shows it.
#[derive(Debug, Default)]
pub struct Report<'a> {
    /// After "applies": what the instrumentation found ("grpc v1.66.2").
    pub note: Option<String>,
    pub functions: Vec<&'a FunctionPlan>,
    pub fields: &'a [FieldOffset],
    /// Calls probed where they are made and where they return.
    pub calls: Vec<&'a CallReturn>,
}

/// Where and how one instrumentation attaches.
#[derive(Clone, Copy)]
pub struct AttachContext<'a> {
    pub instrumentation: &'static str,
    /// Its `Events::kind`, 0 for one without events.
    pub event_kind: u32,
    /// The executable, as the kernel should resolve it (the path, or /proc/PID/exe).
    pub path: &'a Path,
    pub shared: &'a SharedMaps,
    pub options: AttachOptions,
}
