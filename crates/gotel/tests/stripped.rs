//! Stripped binaries are traced exactly like unstripped ones: for every Go toolchain the
//! fixtures were built with, the spans of the `-s -w` build equal those of the plain build,
//! field by field (ids, times, pids, paths and client ports aside).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const REQUESTS: &[&str] = &["/hello", "/users/7?x=1", "/missing", "/status/503", "/slow?ms=3"];

/// What must not differ between two builds of one program.
fn comparable(
    s: &ReceivedSpan,
) -> (String, i64, i64, BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let attrs = s.span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|kv| kv["key"] != "client.port")
        .map(|kv| (kv["key"].as_str().unwrap().to_string(), kv["value"].clone()))
        .collect();
    let varying = ["process.pid", "process.executable.path", "process.executable.name"];
    let resource = s
        .resource
        .iter()
        .filter(|(k, _)| !varying.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (s.name().to_string(), s.kind(), s.status_code(), attrs, resource)
}

fn spans_of(binary: &str, collector: &Collector, port: u16) -> Vec<ReceivedSpan> {
    let fx = fixture(binary);
    let addr = format!("127.0.0.1:{port}");
    let before = collector.spans().len();
    let mut gotel = gotel(
        &["run", "--", fx.to_str().unwrap(), "-addr", &addr],
        Some(collector),
        &[("OTEL_SERVICE_NAME", "twin")],
    );
    wait_for_port(port, WAIT);
    for r in REQUESTS {
        http_get(port, r);
    }
    let spans = collector.wait_for_spans(before + REQUESTS.len(), WAIT);
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    let mine = spans[before..].to_vec();
    assert_eq!(mine.len(), REQUESTS.len(), "{binary}: one span per request");
    let mut sorted = mine;
    sorted.sort_by_key(|s| s.attr_str("url.path"));
    sorted
}

fn versions() -> Vec<String> {
    let dir = std::env::var_os("GOTEL_FIXTURES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/fixtures"));
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("httpserver-").map(str::to_string))
        .filter(|n| !n.contains('-'))
        .collect();
    v.sort();
    v
}

#[test]
fn stripped_and_unstripped_builds_give_the_same_spans_for_every_go() {
    let Some(()) = privileged() else { return };
    let versions = versions();
    assert!(versions.len() >= 2, "fixtures for several Go versions: {versions:?}");
    let collector = Collector::start("stripped");
    for v in &versions {
        // The same port for both, so server.port compares too.
        let port = free_port();
        let plain = spans_of(&format!("httpserver-{v}"), &collector, port);
        let stripped = spans_of(&format!("httpserver-{v}-stripped"), &collector, port);
        for (a, b) in plain.iter().zip(&stripped) {
            assert_eq!(comparable(a), comparable(b), "{v}: {}", a.name());
        }
        let statuses: Vec<Option<i64>> =
            stripped.iter().map(|s| s.attr_int("http.response.status_code")).collect();
        assert_eq!(statuses, [Some(200), Some(404), Some(200), Some(503), Some(200)], "{v}");
        eprintln!("{v}: stripped == unstripped for {} spans", plain.len());
    }
}

/// Built in GOPATH mode: buildinfo lists no module at all, and spans still come.
#[test]
fn a_gopath_build_without_module_versions_is_traced() {
    let Some(()) = privileged() else { return };
    let Some(v) = versions().last().cloned() else { panic!("no fixtures") };
    let collector = Collector::start("gopath");
    let spans = spans_of(&format!("httpserver-{v}-gopath"), &collector, free_port());
    let hello = spans.iter().find(|s| s.attr_str("url.path").as_deref() == Some("/hello")).unwrap();
    assert_eq!(hello.name(), "GET /hello");
    assert_eq!(hello.attr_int("http.response.status_code"), Some(200));
}
