//! Selection rules: which discovered Go processes gotel instruments. A process is traced when it
//! matches any `instrument` rule (or there are none) and no `exclude` rule; within a rule every
//! given condition must hold.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::k8s::PodMeta;

/// A shell-style pattern (`*`, `?`, `[a-z]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Glob(glob::Pattern);

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        glob::Pattern::new(pattern).map(Glob).map_err(|e| format!("{pattern:?}: {e}"))
    }

    pub fn matches(&self, s: &str) -> bool {
        self.0.matches(s)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Glob::new(&s).map_err(serde::de::Error::custom)
    }
}

/// TCP ports: `8080`, `8000-8999`, or a comma-separated list of either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("{p:?} is not a port"));
        let ranges = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|part| match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (port(lo)?, port(hi)?);
                    if lo > hi {
                        return Err(format!("{part:?}: the range is empty"));
                    }
                    Ok((lo, hi))
                }
                None => port(part).map(|p| (p, p)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ranges.is_empty() {
            return Err("no ports given".into());
        }
        Ok(PortSet(ranges))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }
}

impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(u16),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::One(p) => Ok(PortSet(vec![(p, p)])),
            Raw::Text(s) => PortSet::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sConditions {
    pub namespace: Option<Glob>,
    pub pod: Option<Glob>,
    #[serde(default)]
    pub labels: BTreeMap<String, Glob>,
    #[serde(default)]
    pub annotations: BTreeMap<String, Glob>,
}

/// One rule: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The executable's path, as the process sees it (inside its container).
    pub exe: Option<Glob>,
    /// The process name (/proc/PID/comm) or the executable's file name.
    pub name: Option<Glob>,
    /// Listens on a TCP port in this set.
    pub ports: Option<PortSet>,
    /// Runs in a container (true) or on the host (false).
    pub container: Option<bool>,
    pub k8s: Option<K8sConditions>,
}

impl Rule {
    /// Parses the one-line form used by flags and environment variables:
    /// `exe=/app/*,name=api*,ports=8000-8999,container=true,k8s.namespace=shop,`
    /// `k8s.pod=api-*,k8s.label.app=api,k8s.annotation.gotel.io/instrument=true`.
    /// A comma followed by no `key=` continues the previous value (`ports=80,443`).
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in line.split(',') {
            match piece.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    pairs.push((k.trim().to_string(), v.trim().to_string()))
                }
                _ => match pairs.last_mut() {
                    Some((_, v)) => {
                        v.push(',');
                        v.push_str(piece.trim());
                    }
                    None => return Err(format!("{line:?}: expected key=value")),
                },
            }
        }
        let mut rule = Rule::default();
        for (key, value) in pairs {
            match key.as_str() {
                "exe" => rule.exe = Some(Glob::new(&value)?),
                "name" => rule.name = Some(Glob::new(&value)?),
                "ports" | "port" => rule.ports = Some(PortSet::parse(&value)?),
                "container" => {
                    rule.container = Some(
                        value.parse().map_err(|_| format!("container={value:?}: true or false"))?,
                    )
                }
                "k8s.namespace" => {
                    rule.k8s.get_or_insert_with(Default::default).namespace =
                        Some(Glob::new(&value)?)
                }
                "k8s.pod" => {
                    rule.k8s.get_or_insert_with(Default::default).pod = Some(Glob::new(&value)?)
                }
                other => {
                    if let Some(label) = other.strip_prefix("k8s.label.") {
                        rule.k8s
                            .get_or_insert_with(Default::default)
                            .labels
                            .insert(label.into(), Glob::new(&value)?);
                    } else if let Some(annotation) = other.strip_prefix("k8s.annotation.") {
                        rule.k8s
                            .get_or_insert_with(Default::default)
                            .annotations
                            .insert(annotation.into(), Glob::new(&value)?);
                    } else {
                        return Err(format!(
                            "{other:?}: unknown key (exe, name, ports, container, k8s.namespace, \
                             k8s.pod, k8s.label.NAME, k8s.annotation.NAME)"
                        ));
                    }
                }
            }
        }
        if rule == Rule::default() {
            return Err(format!("{line:?}: a rule needs at least one condition"));
        }
        Ok(rule)
    }

    pub fn needs_ports(&self) -> bool {
        self.ports.is_some()
    }

    pub fn needs_pod(&self) -> bool {
        self.k8s.is_some()
    }

    fn matches(&self, p: &ProcessFacts) -> bool {
        let exe = p.exe.to_string_lossy();
        let exe_name = p.exe.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        self.exe.as_ref().is_none_or(|g| g.matches(&exe))
            && self.name.as_ref().is_none_or(|g| g.matches(&p.comm) || g.matches(&exe_name))
            && self.ports.as_ref().is_none_or(|set| p.ports.iter().any(|&port| set.contains(port)))
            && self.container.is_none_or(|c| c == p.container_id.is_some())
            && self.k8s.as_ref().is_none_or(|k| k.matches(p.pod.as_deref()))
    }
}

impl K8sConditions {
    fn matches(&self, pod: Option<&PodMeta>) -> bool {
        let Some(pod) = pod else { return false };
        let all = |wanted: &BTreeMap<String, Glob>, have: &BTreeMap<String, String>| {
            wanted.iter().all(|(k, g)| have.get(k).is_some_and(|v| g.matches(v)))
        };
        self.namespace.as_ref().is_none_or(|g| g.matches(&pod.namespace))
            && self.pod.as_ref().is_none_or(|g| g.matches(&pod.name))
            && all(&self.labels, &pod.labels)
            && all(&self.annotations, &pod.annotations)
    }
}

/// What the rules see of a process.
#[derive(Debug, Clone, Default)]
pub struct ProcessFacts {
    pub pid: u32,
    pub exe: PathBuf,
    pub comm: String,
    pub container_id: Option<String>,
    /// Listening TCP ports (read only when a rule asks for ports).
    pub ports: Vec<u16>,
    /// The pod's uid, from the cgroup, whether or not its metadata is known.
    pub pod_uid: Option<String>,
    pub pod: Option<Arc<PodMeta>>,
}

/// Why a process is or is not traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Matched this `instrument` rule (None: there are no instrument rules, so everything).
    Trace {
        rule: Option<usize>,
    },
    Excluded {
        why: String,
    },
    NoRuleMatched,
}

/// The agent's own rules plus the defaults everyone wants: never gotel itself, telemetry
/// backends, or Kubernetes' own namespaces.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub instrument: Vec<Rule>,
    pub exclude: Vec<Rule>,
    pub default_excludes: bool,
}

/// Executable names of telemetry pipelines: tracing them would trace their own export.
const PIPELINE_NAMES: &[&str] = &[
    "gotel*",
    "otelcol*",
    "otel-collector*",
    "*opentelemetry-collector*",
    "jaeger*",
    "tempo",
    "alloy",
    "grafana-agent",
    "beyla",
    "obi",
    "otel-go-instrumentation",
];
const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

impl Selector {
    pub fn decide(&self, p: &ProcessFacts) -> Decision {
        if self.default_excludes {
            let name = p.exe.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            if let Some(pattern) = PIPELINE_NAMES.iter().find(|g| glob_matches(g, &name)) {
                return Decision::Excluded {
                    why: format!("a telemetry pipeline ({pattern}; default exclusion)"),
                };
            }
            if let Some(ns) = p.pod.as_ref().map(|pod| pod.namespace.as_str()) {
                if SYSTEM_NAMESPACES.contains(&ns) {
                    return Decision::Excluded {
                        why: format!("namespace {ns} (default exclusion)"),
                    };
                }
            }
        }
        if let Some(i) = self.exclude.iter().position(|r| r.matches(p)) {
            return Decision::Excluded { why: format!("exclude rule #{}", i + 1) };
        }
        if self.instrument.is_empty() {
            return Decision::Trace { rule: None };
        }
        match self.instrument.iter().position(|r| r.matches(p)) {
            Some(i) => Decision::Trace { rule: Some(i) },
            None => Decision::NoRuleMatched,
        }
    }

    pub fn needs_ports(&self) -> bool {
        self.instrument.iter().chain(&self.exclude).any(Rule::needs_ports)
    }

    pub fn needs_pod(&self) -> bool {
        self.instrument.iter().chain(&self.exclude).any(Rule::needs_pod)
    }
}

fn glob_matches(pattern: &str, s: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|g| g.matches(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(exe: &str) -> ProcessFacts {
        ProcessFacts {
            pid: 10,
            exe: exe.into(),
            comm: PathBuf::from(exe).file_name().unwrap().to_string_lossy().into(),
            ..Default::default()
        }
    }

    fn selector(instrument: &[&str], exclude: &[&str]) -> Selector {
        Selector {
            instrument: instrument.iter().map(|r| Rule::parse(r).unwrap()).collect(),
            exclude: exclude.iter().map(|r| Rule::parse(r).unwrap()).collect(),
            default_excludes: true,
        }
    }

    #[test]
    fn the_one_line_form() {
        let rule = Rule::parse(
            "exe=/app/*,ports=80,443,8000-8999,k8s.annotation.gotel.io/instrument=true",
        )
        .unwrap();
        let ports = rule.ports.clone().unwrap();
        assert!(ports.contains(443) && ports.contains(8500) && !ports.contains(81));
        let k8s = rule.k8s.unwrap();
        assert!(k8s.annotations["gotel.io/instrument"].matches("true"));
        assert!(Rule::parse("colour=blue").unwrap_err().contains("unknown key"));
        assert!(Rule::parse("ports=9-1").unwrap_err().contains("empty"));
        assert!(Rule::parse("").is_err());
        assert!(Rule::parse("container=maybe").is_err());
    }

    #[test]
    fn rules_or_together_and_conditions_and_together() {
        let s = selector(&["exe=/srv/*,name=api*", "ports=9000-9099"], &["name=*-debug"]);
        assert_eq!(s.decide(&facts("/srv/api-orders")), Decision::Trace { rule: Some(0) });
        assert_eq!(s.decide(&facts("/srv/worker")), Decision::NoRuleMatched);
        let mut listening = facts("/opt/worker");
        listening.ports = vec![22, 9050];
        assert_eq!(s.decide(&listening), Decision::Trace { rule: Some(1) });
        assert!(matches!(s.decide(&facts("/srv/api-debug")), Decision::Excluded { .. }));
        assert!(s.needs_ports() && !s.needs_pod());
    }

    #[test]
    fn no_instrument_rules_means_every_go_process_but_the_defaults() {
        let s = selector(&[], &[]);
        assert_eq!(s.decide(&facts("/usr/bin/shop")), Decision::Trace { rule: None });
        for exe in ["/usr/local/bin/gotel", "/otelcol-contrib", "/bin/jaeger-all-in-one"] {
            assert!(matches!(s.decide(&facts(exe)), Decision::Excluded { .. }), "{exe}");
        }
        let mut system = facts("/coredns");
        system.pod =
            Some(Arc::new(PodMeta { namespace: "kube-system".into(), ..Default::default() }));
        assert!(matches!(s.decide(&system), Decision::Excluded { .. }));
        let off = Selector { default_excludes: false, ..s };
        assert_eq!(off.decide(&facts("/usr/local/bin/gotel")), Decision::Trace { rule: None });
    }

    #[test]
    fn kubernetes_conditions_need_a_pod() {
        let s = selector(&["k8s.namespace=shop*,k8s.annotation.gotel.io/instrument=true"], &[]);
        let mut p = facts("/app/server");
        assert_eq!(s.decide(&p), Decision::NoRuleMatched, "a host process is in no namespace");
        let mut pod = PodMeta { namespace: "shop-eu".into(), ..Default::default() };
        p.pod = Some(Arc::new(pod.clone()));
        assert_eq!(s.decide(&p), Decision::NoRuleMatched, "not opted in");
        pod.annotations.insert("gotel.io/instrument".into(), "true".into());
        p.pod = Some(Arc::new(pod));
        assert_eq!(s.decide(&p), Decision::Trace { rule: Some(0) });
    }

    #[test]
    fn container_condition() {
        let s = selector(&["container=false"], &[]);
        let mut p = facts("/app/server");
        assert_eq!(s.decide(&p), Decision::Trace { rule: Some(0) });
        p.container_id = Some("ab".repeat(32));
        assert_eq!(s.decide(&p), Decision::NoRuleMatched);
    }
}
