//! `gotel daemon`: one agent per host. Scans /proc for Go processes, traces those the rules
//! select (attaching once per executable file), and reports its own health.

mod fleet;
pub mod health;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use discovery::config::{DaemonConfig, FileConfig, KubernetesMode};
use discovery::k8s::PodStore;
use discovery::rules::Rule;
use probes::execs::ExecWatch;
use probes::inject::InjectMode;

use crate::agent::{collect, stop_on_signals, stopped, Pipeline};
use crate::cli::DaemonArgs;
use fleet::Fleet;
use health::{ExecutableStatus, Health, ProcessStatus, Snapshot};

const DEFAULT_CONFIG: &str = "/etc/gotel/gotel.yaml";
/// The shortest time between two scans that execs asked for.
const EXEC_SCAN_GAP: Duration = Duration::from_millis(20);

pub fn run(args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args)?;
    let pods = start_kubernetes(&config)?;
    if args.dry_run {
        return dry_run(&config, pods.as_ref());
    }
    let inject = match &config.inject_traceparent {
        Some(mode) => {
            crate::cli::parse_inject(mode).map_err(|e| anyhow!("inject_traceparent: {e}"))?
        }
        None => InjectMode::Remote,
    };
    let shared = crate::shared_maps(&args.agent)?;
    let mut pipeline = Pipeline::new(&args.agent, config.metrics_addr.is_some())?;
    let mut options = crate::attach_options(&args.agent, true, &pipeline)?;
    options.inject = inject != InjectMode::Off;
    let health = Health::new(pipeline.histograms().cloned());
    if let Some(addr) = config.metrics_addr {
        health.serve(addr)?;
        tracing::info!("health on http://{addr}/metrics, /status and /healthz");
    }
    // Execs as they happen, so a new process is seen within one turn of the event loop
    // (~50 ms) rather than the next scan; the periodic scan stays as the safety net.
    let execs_seen: Rc<RefCell<Vec<u32>>> = Rc::default();
    let not_watching = |e: probes::Error| {
        tracing::warn!("not watching execs ({e}); new processes are found by the scan alone");
    };
    let exec_watch = ExecWatch::start().map_err(not_watching).ok();
    let exec_reader = exec_watch
        .as_ref()
        .and_then(|w| w.reader(Rc::clone(&execs_seen)).map_err(not_watching).ok());
    let mut fleet = Fleet::new(config.selector.clone(), pods.clone(), &shared, options, inject);
    tracing::info!(
        "scanning for Go processes at each exec and every {} ms; {}",
        config.poll_interval.as_millis(),
        describe_rules(&config)
    );
    fleet.scan(pipeline.resources());
    let signals = stop_on_signals()?;
    let mut last_scan = Instant::now();
    let mut next_scan = last_scan + config.poll_interval;
    let mut next_publish = Instant::now();
    let pipeline = collect(&shared, pipeline, |pipeline| {
        if let Some(reader) = &exec_reader {
            let _ = reader.poll(Duration::ZERO);
        }
        let now = Instant::now();
        // A host busy with execs (shell scripts, say) is scanned at most every EXEC_SCAN_GAP.
        let exec_due = !execs_seen.borrow().is_empty() && now >= last_scan + EXEC_SCAN_GAP;
        if now >= next_scan || exec_due {
            // A pid that exec'd runs another program now: judge it again.
            fleet.reconsider(&std::mem::take(&mut *execs_seen.borrow_mut()));
            fleet.scan(pipeline.resources());
            last_scan = now;
            next_scan = now + config.poll_interval;
        }
        if now >= next_publish {
            health.publish(snapshot(&fleet, pipeline, &shared, pods.as_ref()));
            next_publish = now + Duration::from_secs(1);
        }
        stopped(&signals)
    })?;
    pipeline.finish(&shared, fleet.injection());
    Ok(ExitCode::SUCCESS)
}

fn load_config(args: &DaemonArgs) -> anyhow::Result<DaemonConfig> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| anyhow!(e))?,
        None if Path::new(DEFAULT_CONFIG).exists() => {
            FileConfig::load(Path::new(DEFAULT_CONFIG)).map_err(|e| anyhow!(e))?
        }
        None => FileConfig::default(),
    };
    let rules = |lines: &[String]| -> anyhow::Result<Option<Vec<Rule>>> {
        if lines.is_empty() {
            return Ok(None);
        }
        let rules = lines.iter().filter(|l| !l.trim().is_empty()).map(|l| Rule::parse(l));
        Ok(Some(rules.collect::<Result<_, _>>().map_err(|e| anyhow!("rule {e}"))?))
    };
    let overrides = FileConfig {
        instrument: rules(&args.instrument)?,
        exclude: rules(&args.exclude)?,
        default_excludes: args.default_excludes,
        metrics_addr: args.metrics_addr.clone(),
        poll_interval: args.poll_interval.clone(),
        kubernetes: args.kubernetes,
        node_name: args.node_name.clone(),
        inject_traceparent: args.agent.inject_traceparent.map(|m| m.name().to_string()),
    };
    DaemonConfig::resolve(file, overrides).map_err(|e| anyhow!("configuration: {e}"))
}

/// The pod watch, when Kubernetes metadata is wanted and reachable.
fn start_kubernetes(config: &DaemonConfig) -> anyhow::Result<Option<PodStore>> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let wanted = match config.kubernetes {
        KubernetesMode::Off => false,
        KubernetesMode::On => true,
        KubernetesMode::Auto => in_cluster,
    };
    if !wanted {
        if config.selector.needs_pod() {
            tracing::warn!("rules name Kubernetes conditions, but Kubernetes metadata is off");
        }
        return Ok(None);
    }
    if config.node_name.is_none() {
        tracing::warn!("GOTEL_NODE_NAME is not set: watching every pod in the cluster");
    }
    match discovery::k8s::watch_pods(config.node_name.clone()) {
        Ok(store) => {
            // Rules on pods are only right once the first list is in.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !store.synced() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !store.synced() {
                tracing::warn!(
                    "Kubernetes: no pod list after 10 s; going on, retrying in the background"
                );
            }
            Ok(Some(store))
        }
        Err(e) if config.kubernetes == KubernetesMode::On => Err(e.into()),
        Err(e) => {
            tracing::warn!("{e}; going on without pod metadata");
            Ok(None)
        }
    }
}

fn describe_rules(config: &DaemonConfig) -> String {
    let s = &config.selector;
    let which = match s.instrument.len() {
        0 => "every Go process".to_string(),
        n => format!("Go processes matching {n} instrument rule(s)"),
    };
    let defaults = if s.default_excludes { " and the default exclusions" } else { "" };
    format!("tracing {which}, less {} exclude rule(s){defaults}", s.exclude.len())
}

fn snapshot(
    fleet: &Fleet,
    pipeline: &Pipeline,
    shared: &probes::SharedMaps,
    pods: Option<&PodStore>,
) -> Snapshot {
    let p = pipeline.counters();
    let probe = shared.stats();
    let processes = fleet
        .traced()
        .map(|t| ProcessStatus {
            pid: t.pid,
            service_name: t.service_name.clone(),
            exe: t.exe.display().to_string(),
            why: t.why.clone(),
            traced_after_ms: t.traced_after.as_millis(),
        })
        .collect();
    let executables = fleet
        .attached_files()
        .into_iter()
        .map(|(path, go_version, processes, instrumentations)| ExecutableStatus {
            path: path.display().to_string(),
            go_version,
            processes,
            instrumentations,
        })
        .collect();
    Snapshot {
        processes,
        executables,
        processes_seen: fleet.counters.processes_seen,
        processes_traced_total: fleet.counters.processes_traced_total,
        attach_failures: fleet.counters.attach_failures,
        spans: p.spans,
        spans_exported: p.exported,
        dropped_queue_full: p.dropped_queue_full,
        dropped_export_failed: p.dropped_export_failed,
        dropped_implausible: p.bad_events,
        ringbuf_lost: probe.ringbuf_full,
        pods_known: pods.map(PodStore::len),
    }
}

fn dry_run(config: &DaemonConfig, pods: Option<&PodStore>) -> anyhow::Result<ExitCode> {
    println!("{}", describe_rules(config));
    let verdicts = fleet::dry_run(&config.selector, pods);
    if verdicts.is_empty() {
        println!("no Go processes running");
    }
    for (entry, verdict) in verdicts {
        let mut line = format!("pid {:>7}  {}  {verdict}", entry.id.pid, entry.exe.display());
        if verdict.starts_with("trace") {
            let exe: PathBuf = format!("/proc/{}/exe", entry.id.pid).into();
            line += &match goinfo::GoBinary::open(&exe).context("reading the executable") {
                Ok(bin) => {
                    let plans = probes::plan_all(&bin);
                    let selection = probes::Selection::of(&plans);
                    let applies: Vec<&str> =
                        selection.attach.iter().map(|(i, _)| i.name()).collect();
                    let skips: Vec<String> =
                        selection.skipped.iter().map(|s| s.to_string()).collect();
                    let mut s =
                        format!(": {} ({})", applies.join(", "), bin.build_info().go_version);
                    if !skips.is_empty() {
                        s += &format!("; skipped {}", skips.join("; "));
                    }
                    s
                }
                Err(e) => format!(": {e:#}"),
            };
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
