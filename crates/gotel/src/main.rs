//! gotel: zero-code OpenTelemetry for Go services. The binary is wiring only: arguments in,
//! library crates do the work.

mod agent;
mod cli;
mod daemon;
mod endpoint;
mod followed;
mod held;
mod inspect;
mod memory;
mod privileges;
mod prometheus;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Parser;
use probes::inject::InjectMode;
use probes::{AttachOptions, Sampler, SharedMaps};

use crate::agent::{collect, instrument, start_propagation, stop_on_signals, stopped, Pipeline};
use crate::cli::{AgentArgs, Cli, Command};
use crate::followed::FollowedPath;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|a| a == held::TRAMPOLINE_ARG) {
        held::trampoline(args.by_ref().skip(2).collect());
    }
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Inspect { executable } => inspect::inspect(&executable).map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
        Command::Run { agent, program } => run(&agent, &program),
        Command::Daemon(args) => daemon::run(&args),
        Command::Status { addr } => daemon::health::print_status(&addr).map(|()| ExitCode::SUCCESS),
        Command::Attach { agent, target } => match (target.pid, target.exe) {
            (Some(pid), _) => attach_pid(&agent, pid),
            (None, Some(exe)) => attach_exe(&agent, &exe),
            (None, None) => Err(anyhow!("give --pid or --exe")),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gotel: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

/// The maps every probe shares; the first thing that needs privileges, so the capabilities
/// are checked (and explained) first.
fn shared_maps(agent: &AgentArgs) -> anyhow::Result<SharedMaps> {
    privileges::check()?;
    SharedMaps::create(agent.ring_buffer_mib).map_err(|e| {
        anyhow!(
            "{e}\ngotel needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + \
             CAP_DAC_READ_SEARCH + CAP_NET_ADMIN, on Linux 5.17 or later (6.6+ for \
             uprobe_multi links, which need no CAP_SYS_ADMIN)"
        )
    })
}

fn attach_options(
    agent: &AgentArgs,
    filter_pids: bool,
    pipeline: &Pipeline,
) -> anyhow::Result<AttachOptions> {
    let env = |k| std::env::var(k).ok();
    let sampler = Sampler::from_env(
        env("OTEL_TRACES_SAMPLER").as_deref(),
        env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )?;
    if sampler != Sampler::default() {
        tracing::info!("sampling: {sampler}");
    }
    let inject = agent.inject_mode() != InjectMode::Off;
    Ok(AttachOptions {
        filter_pids,
        uprobe_multi: !agent.no_uprobe_multi,
        sampler,
        events_for_unsampled: pipeline.counts_unsampled(),
        inject,
        placement: agent.probe_placement,
    })
}

fn run(agent: &AgentArgs, program: &[String]) -> anyhow::Result<ExitCode> {
    let name = &program[0];
    let path = held::resolve_program(name).ok_or_else(|| anyhow!("{name}: not found in PATH"))?;
    let shared = shared_maps(agent)?;
    let mut pipeline = Pipeline::new(agent, false)?;
    let instrumented = instrument(&path, &path, &shared, attach_options(agent, true, &pipeline)?)?;
    pipeline.resources().add_executable(&path, &instrumented.go_version);
    let injection = start_propagation(&shared, agent.inject_mode(), instrumented.wants_injection());

    let held = held::spawn_held(&path, name, &program[1..])
        .with_context(|| format!("starting {}", path.display()))?;
    shared.trace_pid(held.pid())?;
    let pid = held.pid();
    let mut child = held.release().context("releasing the program")?;
    tracing::info!("started {} as pid {pid}", path.display());

    let signals = stop_on_signals()?;
    let mut status = None;
    let mut give_up_at: Option<Instant> = None;
    let pipeline = collect(&shared, pipeline, |_| {
        if status.is_none() {
            status = child.try_wait().ok().flatten();
        }
        if stopped(&signals) && give_up_at.is_none() {
            // SAFETY: kill only sends a signal to our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            give_up_at = Some(Instant::now() + Duration::from_secs(5));
        }
        status.is_some() || give_up_at.is_some_and(|t| Instant::now() >= t)
    })?;
    pipeline.finish(&shared, injection.as_ref());
    let status = match status {
        Some(s) => s,
        None => child.wait()?,
    };
    tracing::info!("{} exited: {status}", path.display());
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn attach_pid(agent: &AgentArgs, pid: u32) -> anyhow::Result<ExitCode> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let exe_link = proc_dir.join("exe");
    let exe = std::fs::read_link(&exe_link)
        .with_context(|| format!("process {pid}: cannot read {}", exe_link.display()))?;
    let shared = shared_maps(agent)?;
    let mut pipeline = Pipeline::new(agent, false)?;
    // /proc/PID/exe reaches the very file the process runs, even if replaced or in a container.
    let instrumented =
        instrument(&exe_link, &exe_link, &shared, attach_options(agent, true, &pipeline)?)?;
    pipeline.resources().add_executable(&exe, &instrumented.go_version);
    let injection = start_propagation(&shared, agent.inject_mode(), instrumented.wants_injection());
    shared.trace_pid(pid)?;
    tracing::info!("tracing pid {pid} ({})", exe.display());
    let signals = stop_on_signals()?;
    let pipeline = collect(&shared, pipeline, |_| {
        let gone = !proc_dir.exists();
        if gone {
            tracing::info!("pid {pid} exited");
        }
        gone || stopped(&signals)
    })?;
    pipeline.finish(&shared, injection.as_ref());
    Ok(ExitCode::SUCCESS)
}

fn attach_exe(agent: &AgentArgs, exe: &Path) -> anyhow::Result<ExitCode> {
    let exe = std::fs::canonicalize(exe).with_context(|| format!("{}", exe.display()))?;
    let shared = shared_maps(agent)?;
    let mut pipeline = Pipeline::new(agent, false)?;
    let options = attach_options(agent, false, &pipeline)?;
    let instrumented = instrument(&exe, &exe, &shared, options)?;
    pipeline.resources().add_executable(&exe, &instrumented.go_version);
    let injection = start_propagation(&shared, agent.inject_mode(), instrumented.wants_injection());
    let mut followed = FollowedPath::new(&exe, options, instrumented);
    tracing::info!("tracing every process of {} until Ctrl-C", exe.display());
    let signals = stop_on_signals()?;
    let pipeline = collect(&shared, pipeline, |pipeline| {
        followed.check(&shared, pipeline);
        stopped(&signals)
    })?;
    pipeline.finish(&shared, injection.as_ref());
    Ok(ExitCode::SUCCESS)
}
