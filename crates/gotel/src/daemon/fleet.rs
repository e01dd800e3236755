//! The processes of a host as the daemon tracks them: which are traced, which executables
//! carry probes, and what changed since the last scan of /proc.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use discovery::cgroup;
use discovery::k8s::{PodMeta, PodStore};
use discovery::procfs::{FileId, Proc, ProcessEntry, ProcessId};
use discovery::rules::{Decision, ProcessFacts, Selector};
use goinfo::GoBinary;
use probes::inject::{InjectMode, Injection, Sides};
use probes::{AttachOptions, SharedMaps};
use trace::{ProcessHints, ResourceCache};

use crate::agent::{instrument, start_propagation, Instrumented, NothingToInstrument};

/// How long a process that may yet match (not listening yet, pod not yet known) is re-checked.
const UNDECIDED_GRACE: Duration = Duration::from_secs(10);
/// How long an exited process's resource is kept, for its last events still in the ring buffer.
const RESOURCE_LINGER: Duration = Duration::from_secs(10);
/// Files remembered as "not Go" before the memory is cleared (bounded under churn).
const MAX_VERDICTS: usize = 4096;

/// One traced process, as /status reports it.
#[derive(Debug, Clone)]
pub struct TracedProcess {
    pub pid: u32,
    pub exe: PathBuf,
    pub service_name: String,
    pub why: String,
    pub traced_after: Duration,
}

enum Seen {
    /// Not ours: not Go, excluded, or matched no rule.
    Ignored,
    /// Might match later; re-checked until the grace period ends.
    Undecided {
        since: Instant,
    },
    Traced {
        file: FileId,
    },
}

struct Tracked {
    start_ticks: u64,
    /// The executable the decision was made on (None: a kernel thread).
    file: Option<FileId>,
    seen: Seen,
}

/// Probes on one executable file, shared by every traced process running it.
struct AttachedFile {
    instrumented: Instrumented,
    path: PathBuf,
    pids: HashSet<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FleetCounters {
    pub attach_failures: u64,
    pub processes_seen: u64,
    pub processes_traced_total: u64,
}

pub struct Fleet<'a> {
    proc: Proc,
    selector: Selector,
    pods: Option<PodStore>,
    shared: &'a SharedMaps,
    options: AttachOptions,
    inject: InjectMode,
    injection: Option<Injection>,
    own_pid: u32,
    own_file: Option<FileId>,
    tracked: HashMap<u32, Tracked>,
    files: HashMap<FileId, AttachedFile>,
    /// Files known not to be Go, or that failed to attach (not retried).
    unusable: HashSet<FileId>,
    traced: HashMap<u32, TracedProcess>,
    to_forget: Vec<(Instant, u32)>,
    pub counters: FleetCounters,
    boot: BootClock,
}

impl<'a> Fleet<'a> {
    pub fn new(
        selector: Selector,
        pods: Option<PodStore>,
        shared: &'a SharedMaps,
        options: AttachOptions,
        inject: InjectMode,
    ) -> Self {
        let proc = Proc::default();
        let own_pid = std::process::id();
        let own_file = proc.entry(own_pid).map(|e| e.file);
        Fleet {
            proc,
            selector,
            pods,
            shared,
            options,
            inject,
            injection: None,
            own_pid,
            own_file,
            tracked: HashMap::new(),
            files: HashMap::new(),
            unusable: HashSet::new(),
            traced: HashMap::new(),
            to_forget: Vec::new(),
            counters: FleetCounters::default(),
            boot: BootClock::new(),
        }
    }

    pub fn traced(&self) -> impl Iterator<Item = &TracedProcess> {
        self.traced.values()
    }

    /// (path, Go version, traced processes, instrumentations) of every attached executable.
    pub fn attached_files(&self) -> Vec<(PathBuf, String, usize, Vec<&'static str>)> {
        self.files
            .values()
            .map(|f| {
                let names = f.instrumented.instrumentations().collect();
                (f.path.clone(), f.instrumented.go_version.clone(), f.pids.len(), names)
            })
            .collect()
    }

    pub fn injection(&self) -> Option<&Injection> {
        self.injection.as_ref()
    }

    /// One scan of /proc: forget processes that ended, decide about new ones.
    pub fn scan(&mut self, resources: &mut ResourceCache) {
        let now = Instant::now();
        let Ok(pids) = self.proc.pids() else {
            tracing::warn!("cannot list /proc");
            return;
        };
        let live: HashSet<u32> = pids.iter().copied().collect();
        // A reused pid is checked for only where it matters, on traced processes: reading
        // every process's stat each scan would cost more than the rest of the scan.
        let ended: Vec<u32> = self
            .tracked
            .iter()
            .filter(|(pid, t)| {
                !live.contains(pid)
                    || matches!(t.seen, Seen::Traced { .. })
                        && self.proc.start_ticks(**pid) != Some(t.start_ticks)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in ended {
            self.ended(pid, now);
        }
        self.to_forget.retain(|&(at, pid)| {
            let due = now >= at;
            if due && !self.traced.contains_key(&pid) {
                resources.forget(pid);
            }
            !due
        });
        for pid in pids {
            let undecided_since = match self.tracked.get(&pid).map(|t| &t.seen) {
                None => None,
                Some(Seen::Undecided { since }) => Some(*since),
                Some(_) => continue,
            };
            let Some(entry) = self.proc.entry(pid) else {
                // A kernel thread, or gone already: remember it so it is not read again.
                let start_ticks = self.proc.start_ticks(pid).unwrap_or(0);
                self.tracked.insert(pid, Tracked { start_ticks, file: None, seen: Seen::Ignored });
                continue;
            };
            if undecided_since.is_none() {
                self.counters.processes_seen += 1;
            }
            let seen = self.consider(&entry, undecided_since, now, resources);
            let tracked =
                Tracked { start_ticks: entry.id.start_ticks, file: Some(entry.file), seen };
            self.tracked.insert(pid, tracked);
        }
    }

    /// Forgets what was decided about `pids` (they exec'd) if it was decided on another
    /// executable than the one they run now: a scan can see a child between fork and exec,
    /// still running its parent's program, and a traced process that execs another program is
    /// done with its old executable. The next scan judges them anew.
    pub fn reconsider(&mut self, pids: &[u32]) {
        let now = Instant::now();
        for &pid in pids {
            let Some(tracked) = self.tracked.get(&pid) else { continue };
            let current = self.proc.entry(pid).map(|e| e.file);
            if current.is_some() && current == tracked.file {
                continue; // judged after the exec already
            }
            match tracked.seen {
                Seen::Traced { .. } => self.ended(pid, now),
                _ => {
                    self.tracked.remove(&pid);
                }
            }
        }
    }

    fn consider(
        &mut self,
        entry: &ProcessEntry,
        undecided_since: Option<Instant>,
        now: Instant,
        resources: &mut ResourceCache,
    ) -> Seen {
        let pid = entry.id.pid;
        if pid == self.own_pid || Some(entry.file) == self.own_file {
            return Seen::Ignored;
        }
        if self.unusable.contains(&entry.file) {
            return Seen::Ignored;
        }
        if !self.files.contains_key(&entry.file) {
            match GoBinary::is_go(self.proc.exe_link(pid)) {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    self.remember_unusable(entry.file);
                    return Seen::Ignored;
                }
            }
        }
        let facts = self.facts(entry);
        let decision = self.selector.decide(&facts);
        let who = format!("pid {pid} ({})", entry.exe.display());
        let rule = match decision {
            Decision::Trace { rule } => rule,
            Decision::Excluded { why } => {
                tracing::info!("not tracing {who}: {why}");
                return Seen::Ignored;
            }
            Decision::NoRuleMatched => {
                let since = undecided_since.unwrap_or(now);
                if self.may_match_later(&facts) && now.duration_since(since) < UNDECIDED_GRACE {
                    return Seen::Undecided { since };
                }
                tracing::debug!("not tracing {who}: no instrument rule matches");
                return Seen::Ignored;
            }
        };
        let why = match rule {
            Some(i) => format!("instrument rule #{}", i + 1),
            None => "no instrument rules: every Go process".to_string(),
        };
        match self.trace(entry, &facts, resources) {
            Ok(service_name) => {
                let traced_after = self.boot.age(entry.id);
                tracing::info!(
                    "tracing {who} as {service_name:?} ({why}; {} ms after it started)",
                    traced_after.as_millis()
                );
                self.counters.processes_traced_total += 1;
                let exe = entry.exe.clone();
                let record = TracedProcess { pid, exe, service_name, why, traced_after };
                self.traced.insert(pid, record);
                Seen::Traced { file: entry.file }
            }
            Err(e) if e.downcast_ref::<NothingToInstrument>().is_some() => {
                tracing::info!("not tracing {who}: {e}");
                Seen::Ignored
            }
            Err(e) => {
                self.counters.attach_failures += 1;
                tracing::warn!("cannot trace {who}: {e:#}");
                Seen::Ignored
            }
        }
    }

    fn remember_unusable(&mut self, file: FileId) {
        if self.unusable.len() >= MAX_VERDICTS {
            self.unusable.clear();
        }
        self.unusable.insert(file);
    }

    /// Whether a rule could still match once the process listens or its pod is known.
    fn may_match_later(&self, facts: &ProcessFacts) -> bool {
        let not_listening = self.selector.needs_ports() && facts.ports.is_empty();
        let pod_unknown = self.selector.needs_pod()
            && facts.pod.is_none()
            && self.pods.is_some()
            && facts.pod_uid.is_some();
        not_listening || pod_unknown
    }

    fn facts(&self, entry: &ProcessEntry) -> ProcessFacts {
        process_facts(&self.proc, entry, &self.selector, self.pods.as_ref())
    }

    /// Attaches to the process's executable unless already attached, describes its resource
    /// and adds it to the traced set. Returns its service name as resolved so far.
    fn trace(
        &mut self,
        entry: &ProcessEntry,
        facts: &ProcessFacts,
        resources: &mut ResourceCache,
    ) -> anyhow::Result<String> {
        let pid = entry.id.pid;
        if !self.files.contains_key(&entry.file) {
            // /proc/PID/exe reaches the file whatever mount namespace the process is in.
            let link = self.proc.exe_link(pid);
            let started = Instant::now();
            let instrumented = match instrument(&link, &link, self.shared, self.options) {
                Ok(i) => i,
                Err(e) => {
                    self.remember_unusable(entry.file);
                    return Err(e);
                }
            };
            tracing::debug!(
                "{}: attached in {} ms",
                entry.exe.display(),
                started.elapsed().as_millis()
            );
            let wants_injection = self.inject != InjectMode::Off
                && instrumented.wants_injection() != Sides::default();
            if self.injection.is_none() && wants_injection {
                // Both ends from the start: the programs are host-wide, and the processes
                // that come later may be clients or servers.
                let both = Sides { send: true, receive: true };
                self.injection = start_propagation(self.shared, self.inject, both);
            }
            let path = entry.exe.clone();
            let file = AttachedFile { instrumented, path, pids: HashSet::new() };
            self.files.insert(entry.file, file);
        }
        let file = self.files.get_mut(&entry.file).expect("inserted above");
        let hints = hints(facts, file.instrumented.go_version.clone());
        resources.describe(pid, hints);
        self.shared.trace_pid(pid)?;
        file.pids.insert(pid);
        Ok(resources.get(pid).service_name().to_string())
    }

    fn ended(&mut self, pid: u32, now: Instant) {
        let Some(tracked) = self.tracked.remove(&pid) else { return };
        let Seen::Traced { file } = tracked.seen else { return };
        let left = self.shared.untrace_pid(pid);
        self.traced.remove(&pid);
        self.to_forget.push((now + RESOURCE_LINGER, pid));
        tracing::info!("pid {pid} exited ({left} map entries it left removed)");
        if let Some(attached) = self.files.get_mut(&file) {
            attached.pids.remove(&pid);
            if attached.pids.is_empty() {
                let gone = self.files.remove(&file).expect("present");
                tracing::info!("detached from {} (no traced process runs it)", gone.path.display());
            }
        }
    }
}

/// What the resource learns from discovery: the pod's service name and k8s attributes, the
/// container id.
fn hints(facts: &ProcessFacts, go_version: String) -> ProcessHints {
    let pod: Option<&PodMeta> = facts.pod.as_deref();
    let mut attributes =
        pod.map(|p| p.resource_attributes(facts.container_id.as_deref())).unwrap_or_default();
    if let Some(id) = &facts.container_id {
        attributes.push(("container.id".into(), id.clone()));
    }
    ProcessHints {
        service_name: pod.and_then(PodMeta::service_name),
        attributes,
        go_version: Some(go_version),
    }
}

/// Turns a process's start time (clock ticks after boot) into its age, for "traced N ms after
/// it started".
struct BootClock {
    ticks_per_second: u64,
}

impl BootClock {
    fn new() -> Self {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        BootClock { ticks_per_second: u64::try_from(ticks).unwrap_or(100).max(1) }
    }

    fn age(&self, id: ProcessId) -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec we own. /proc's start time counts
        // from boot on CLOCK_BOOTTIME.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let now = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        let started = Duration::from_secs_f64(id.start_ticks as f64 / self.ticks_per_second as f64);
        now.saturating_sub(started)
    }
}

/// What the rules see of a process: its container and pod from the cgroup (and the mounts,
/// behind a cgroup namespace), its listening ports when a rule asks for them.
fn process_facts(
    proc: &Proc,
    entry: &ProcessEntry,
    selector: &Selector,
    pods: Option<&PodStore>,
) -> ProcessFacts {
    let pid = entry.id.pid;
    let placement = proc.read(pid, "cgroup").map(|c| cgroup::parse(&c)).unwrap_or_default();
    let container_id = placement.container_id.or_else(|| {
        // Behind a cgroup namespace the path is "/": the mounts still name the container.
        let own_ns = std::fs::read_link("/proc/self/ns/mnt").ok();
        let its_ns = std::fs::read_link(proc.dir(pid).join("ns/mnt")).ok();
        if own_ns.is_some() && own_ns == its_ns {
            return None;
        }
        cgroup::container_id_from_mountinfo(&proc.read(pid, "mountinfo")?)
    });
    let pod = placement.pod_uid.as_deref().and_then(|uid| pods?.get(uid));
    let ports = if selector.needs_ports() { proc.listening_ports(pid) } else { Vec::new() };
    ProcessFacts {
        pid,
        exe: entry.exe.clone(),
        comm: entry.comm.clone(),
        container_id,
        ports,
        pod_uid: placement.pod_uid,
        pod,
    }
}

/// The processes a dry run would trace, and why the others are not.
pub fn dry_run(selector: &Selector, pods: Option<&PodStore>) -> Vec<(ProcessEntry, String)> {
    let proc = Proc::default();
    let own = std::process::id();
    let mut verdicts: HashMap<FileId, bool> = HashMap::new();
    let mut out = Vec::new();
    for pid in proc.pids().unwrap_or_default() {
        let Some(entry) = proc.entry(pid) else { continue };
        let is_go = *verdicts
            .entry(entry.file)
            .or_insert_with(|| GoBinary::is_go(proc.exe_link(pid)).unwrap_or(false));
        if !is_go || pid == own {
            continue;
        }
        let facts = process_facts(&proc, &entry, selector, pods);
        let verdict = match selector.decide(&facts) {
            Decision::Trace { rule: Some(i) } => format!("trace (instrument rule #{})", i + 1),
            Decision::Trace { rule: None } => "trace (no instrument rules)".to_string(),
            Decision::Excluded { why } => format!("skip: {why}"),
            Decision::NoRuleMatched => "skip: no instrument rule matches".to_string(),
        };
        out.push((entry, verdict));
    }
    out.sort_by_key(|(e, _)| e.id.pid);
    out
}
