//! The resource of each traced process: who emitted a span. One agent serves many processes,
//! so every span carries its own process's resource, read from /proc when first seen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::AttributeValue;

/// What the agent itself contributes to every resource.
#[derive(Debug, Clone, Default)]
pub struct AgentIdentity {
    /// gotel's `--service-name`: used when a process names no service of its own.
    pub service_name: Option<String>,
    /// gotel's own OTEL_RESOURCE_ATTRIBUTES, beneath each process's.
    pub attributes: Vec<(String, String)>,
    pub host_name: String,
}

impl AgentIdentity {
    pub fn from_env(service_name: Option<String>) -> Self {
        let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| parse_resource_attributes(&v))
            .unwrap_or_default();
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        AgentIdentity { service_name, attributes, host_name }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessResource {
    pub pid: u32,
    /// Ordered, unique keys.
    pub attributes: Vec<(String, AttributeValue)>,
}

impl ProcessResource {
    pub fn service_name(&self) -> &str {
        self.attributes
            .iter()
            .find(|(k, _)| k == "service.name")
            .and_then(|(_, v)| match v {
                AttributeValue::String(s) => Some(s.as_ref()),
                _ => None,
            })
            .unwrap_or("unknown_service")
    }
}

/// Parses `key1=value1,key2=value2` (values percent-encoded) as the OTel SDK spec says;
/// malformed pairs are skipped.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One executable gotel attached to, as resources need it.
#[derive(Debug, Clone)]
struct Executable {
    go_version: String,
}

/// What discovery learned about a process beyond /proc (its pod, its container), ranked below
/// the process's own OTEL_* variables and above the executable's name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessHints {
    pub service_name: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub go_version: Option<String>,
}

/// Resources per pid, built on first sight from /proc/PID/{exe,environ}.
#[derive(Debug)]
pub struct ResourceCache {
    agent: AgentIdentity,
    executables: HashMap<PathBuf, Executable>,
    hints: HashMap<u32, ProcessHints>,
    by_pid: HashMap<u32, Arc<ProcessResource>>,
    proc_root: PathBuf,
}

impl ResourceCache {
    pub fn new(agent: AgentIdentity) -> Self {
        Self::with_proc_root(agent, "/proc")
    }

    /// For tests: read process information under another root.
    pub fn with_proc_root(agent: AgentIdentity, proc_root: impl Into<PathBuf>) -> Self {
        ResourceCache {
            agent,
            executables: HashMap::new(),
            hints: HashMap::new(),
            by_pid: HashMap::new(),
            proc_root: proc_root.into(),
        }
    }

    /// Records an executable gotel attached to, so its processes' resources name its Go version.
    pub fn add_executable(&mut self, path: &Path, go_version: &str) {
        let exe = Executable { go_version: go_version.to_string() };
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.executables.insert(canonical, exe);
    }

    /// Records what discovery knows of `pid`, before its first span.
    pub fn describe(&mut self, pid: u32, hints: ProcessHints) {
        self.by_pid.remove(&pid);
        self.hints.insert(pid, hints);
    }

    /// Drops what is kept of an exited process (its pid may come back as another).
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
        self.hints.remove(&pid);
    }

    pub fn get(&mut self, pid: u32) -> Arc<ProcessResource> {
        if let Some(r) = self.by_pid.get(&pid) {
            return Arc::clone(r);
        }
        let r = Arc::new(self.build(pid));
        self.by_pid.insert(pid, Arc::clone(&r));
        r
    }

    fn build(&self, pid: u32) -> ProcessResource {
        let dir = self.proc_root.join(pid.to_string());
        let exe = std::fs::read_link(dir.join("exe")).ok().map(|p| {
            // A replaced or deleted binary reads as "path (deleted)".
            let s = p.to_string_lossy();
            PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s))
        });
        let env = std::fs::read(dir.join("environ")).unwrap_or_default();
        let env_var = |name: &str| -> Option<String> {
            env.split(|&b| b == 0).find_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                entry.strip_prefix(name)?.strip_prefix('=').map(str::to_string)
            })
        };

        let mut attrs: Vec<(String, AttributeValue)> = Vec::new();
        let mut set = |k: &str, v: AttributeValue| match attrs.iter_mut().find(|(key, _)| key == k)
        {
            Some(slot) => slot.1 = v,
            None => attrs.push((k.to_string(), v)),
        };
        // Lowest precedence first: later sets override.
        for (k, v) in &self.agent.attributes {
            set(k, v.clone().into());
        }
        let exe_name = exe
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                // The process is gone: with one attached executable we still know which it was.
                let mut names = self.executables.keys().filter_map(|p| p.file_name());
                match (names.next(), names.next()) {
                    (Some(n), None) => Some(n.to_string_lossy().into_owned()),
                    _ => None,
                }
            });
        if !self.agent.attributes.iter().any(|(k, _)| k == "service.name") {
            let fallback = self.agent.service_name.clone().or_else(|| exe_name.clone());
            set("service.name", fallback.unwrap_or_else(|| "unknown_service:go".into()).into());
        } else if let Some(name) = &self.agent.service_name {
            set("service.name", name.clone().into());
        }
        let hints = self.hints.get(&pid);
        if let Some(hints) = hints {
            for (k, v) in &hints.attributes {
                set(k, v.clone().into());
            }
            if let Some(name) = &hints.service_name {
                set("service.name", name.clone().into());
            }
        }
        if let Some(own) = env_var("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in parse_resource_attributes(&own) {
                set(&k, v.into());
            }
        }
        if let Some(name) = env_var("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
            set("service.name", name.into());
        }
        set("process.pid", AttributeValue::Int(i64::from(pid)));
        if let Some(exe) = &exe {
            set("process.executable.path", exe.to_string_lossy().into_owned().into());
        }
        if let Some(name) = &exe_name {
            set("process.executable.name", name.clone().into());
        }
        set("process.runtime.name", "go".into());
        let go_version = exe
            .as_ref()
            .and_then(|p| self.executables.get(p))
            .or_else(|| (self.executables.len() == 1).then(|| self.executables.values().next())?);
        let go_version = hints
            .and_then(|h| h.go_version.clone())
            .or_else(|| go_version.map(|exe| exe.go_version.clone()));
        if let Some(version) = go_version {
            set("process.runtime.version", version.into());
        }
        if !self.agent.host_name.is_empty() {
            set("host.name", self.agent.host_name.clone().into());
        }
        set("telemetry.sdk.language", "go".into());
        set("telemetry.distro.name", "gotel".into());
        set("telemetry.distro.version", env!("CARGO_PKG_VERSION").into());
        ProcessResource { pid, attributes: attrs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(pid: u32, environ: &[&str], exe: &Path) -> tempdir::Dir {
        let root = tempdir::Dir::new();
        let dir = root.path().join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("environ"), environ.join("\0")).unwrap();
        std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        root
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("gotel-test-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn get<'a>(r: &'a ProcessResource, k: &str) -> Option<&'a AttributeValue> {
        r.attributes.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }

    #[test]
    fn the_process_environment_names_the_service() {
        let exe = Path::new("/usr/bin/shop-api");
        let root = fake_proc(
            7,
            &[
                "PATH=/bin",
                "OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod,team=a%2Cb",
                "OTEL_SERVICE_NAME=shop",
            ],
            exe,
        );
        let agent = AgentIdentity {
            service_name: Some("from-flag".into()),
            attributes: vec![("team".into(), "agent".into())],
            host_name: "node1".into(),
        };
        let mut cache = ResourceCache::with_proc_root(agent, root.path());
        cache.add_executable(exe, "go1.26.8");
        let r = cache.get(7);
        assert_eq!(r.service_name(), "shop");
        assert_eq!(get(&r, "team"), Some(&"a,b".into()), "process attributes beat the agent's");
        assert_eq!(get(&r, "deployment.environment"), Some(&"prod".into()));
        assert_eq!(get(&r, "process.pid"), Some(&AttributeValue::Int(7)));
        assert_eq!(get(&r, "process.executable.path"), Some(&"/usr/bin/shop-api".into()));
        assert_eq!(get(&r, "process.runtime.version"), Some(&"go1.26.8".into()));
        assert_eq!(get(&r, "host.name"), Some(&"node1".into()));
        assert_eq!(get(&r, "telemetry.distro.name"), Some(&"gotel".into()));
    }

    #[test]
    fn without_a_name_in_the_environment_the_flag_then_the_executable_name() {
        let exe = Path::new("/opt/app/billing");
        let root = fake_proc(8, &["HOME=/"], exe);
        let mut with_flag = ResourceCache::with_proc_root(
            AgentIdentity { service_name: Some("flagged".into()), ..Default::default() },
            root.path(),
        );
        assert_eq!(with_flag.get(8).service_name(), "flagged");
        let mut plain = ResourceCache::with_proc_root(AgentIdentity::default(), root.path());
        assert_eq!(plain.get(8).service_name(), "billing");
    }

    #[test]
    fn discovery_hints_rank_between_the_process_and_the_executable() {
        let exe = Path::new("/app/server");
        let root = fake_proc(9, &["HOME=/"], exe);
        let mut cache = ResourceCache::with_proc_root(AgentIdentity::default(), root.path());
        let hints = ProcessHints {
            service_name: Some("checkout".into()),
            attributes: vec![("k8s.pod.name".into(), "checkout-1".into())],
            go_version: Some("go1.24.4".into()),
        };
        cache.describe(9, hints.clone());
        let r = cache.get(9);
        assert_eq!(r.service_name(), "checkout");
        assert_eq!(get(&r, "k8s.pod.name"), Some(&"checkout-1".into()));
        assert_eq!(get(&r, "process.runtime.version"), Some(&"go1.24.4".into()));
        cache.forget(9);
        assert_eq!(cache.get(9).service_name(), "server", "forgotten hints are gone");

        let named = fake_proc(10, &["OTEL_SERVICE_NAME=own"], exe);
        let mut cache = ResourceCache::with_proc_root(AgentIdentity::default(), named.path());
        cache.describe(10, hints);
        assert_eq!(cache.get(10).service_name(), "own", "the process's own name wins");
    }

    #[test]
    fn resource_attribute_parsing() {
        assert_eq!(
            parse_resource_attributes("a=1, b = x%20y ,bad,=v,c="),
            vec![("a".into(), "1".into()), ("b".into(), "x y".into()), ("c".into(), "".into())]
        );
    }
}
