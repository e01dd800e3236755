//! The daemon's configuration as the daemon reads it: the YAML file (`FileConfig::parse`), the
//! rules, interval and address that flags and GOTEL_* variables give (`Rule::parse`,
//! `parse_duration`, `DaemonConfig::resolve`), and the resulting selector deciding on a process.
//! Input: pieces (goinfo::fuzzing::parts) YAML, `;`-separated rule lines (GOTEL_INSTRUMENT),
//! GOTEL_POLL_INTERVAL, GOTEL_METRICS_ADDR, a process's executable path.
#![no_main]

use discovery::config::{parse_duration, DaemonConfig, FileConfig};
use discovery::rules::{ProcessFacts, Rule};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [yaml, rules, poll, addr, exe] =
        goinfo::fuzzing::parts::<5>(data).map(String::from_utf8_lossy);
    let Ok(file) = FileConfig::parse(&yaml) else { return };
    let _ = parse_duration(&poll);
    let rules: Result<Vec<Rule>, _> =
        rules.split(';').filter(|l| !l.trim().is_empty()).map(Rule::parse).collect();
    let over = FileConfig {
        instrument: rules.ok().filter(|r| !r.is_empty()),
        poll_interval: (!poll.is_empty()).then(|| poll.to_string()),
        metrics_addr: (!addr.is_empty()).then(|| addr.to_string()),
        ..FileConfig::default()
    };
    let Ok(config) = DaemonConfig::resolve(file, over) else { return };
    let _ = (config.selector.needs_ports(), config.selector.needs_pod());
    let comm = exe.rsplit('/').next().unwrap_or_default().chars().take(15).collect();
    let process = ProcessFacts {
        exe: exe.to_string().into(),
        comm,
        ports: vec![80, 8080],
        ..Default::default()
    };
    let _ = config.selector.decide(&process);
});
