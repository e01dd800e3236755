//! The daemon's configuration: a YAML file, each key overridable by an environment variable or
//! a flag (the caller passes those in as a second `FileConfig`, flags already winning over env).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::rules::{Rule, Selector};

/// Whether to read pod metadata from the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMode {
    /// On when running in a cluster (KUBERNETES_SERVICE_HOST is set).
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for KubernetesMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?}: use auto, on or off")),
        }
    }
}

/// The file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub instrument: Option<Vec<Rule>>,
    pub exclude: Option<Vec<Rule>>,
    pub default_excludes: Option<bool>,
    pub metrics_addr: Option<String>,
    pub poll_interval: Option<String>,
    pub kubernetes: Option<KubernetesMode>,
    pub node_name: Option<String>,
    pub inject_traceparent: Option<String>,
}

impl FileConfig {
    pub fn parse(yaml: &str) -> Result<Self, String> {
        if yaml.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Everything the daemon runs with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub selector: Selector,
    /// Where /metrics, /status and /healthz are served; "off" disables.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub poll_interval: Duration,
    pub kubernetes: KubernetesMode,
    pub node_name: Option<String>,
    /// off, remote or all, as given (checked by the agent, which owns the modes).
    pub inject_traceparent: Option<String>,
}

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

impl DaemonConfig {
    /// `over` holds the values given by flags or environment variables: each replaces the
    /// file's.
    pub fn resolve(file: FileConfig, over: FileConfig) -> Result<Self, String> {
        let metrics_addr = over
            .metrics_addr
            .or(file.metrics_addr)
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.to_string());
        let metrics_addr = match metrics_addr.as_str() {
            "off" | "" => None,
            addr => Some(addr.parse().map_err(|e| format!("metrics_addr {addr:?}: {e}"))?),
        };
        let poll = over.poll_interval.or(file.poll_interval).unwrap_or_else(|| "250ms".into());
        let poll_interval = parse_duration(&poll).map_err(|e| format!("poll_interval: {e}"))?;
        Ok(DaemonConfig {
            selector: Selector {
                instrument: over.instrument.or(file.instrument).unwrap_or_default(),
                exclude: over.exclude.or(file.exclude).unwrap_or_default(),
                default_excludes: over.default_excludes.or(file.default_excludes).unwrap_or(true),
            },
            metrics_addr,
            poll_interval,
            kubernetes: over.kubernetes.or(file.kubernetes).unwrap_or_default(),
            node_name: over.node_name.or(file.node_name),
            inject_traceparent: over.inject_traceparent.or(file.inject_traceparent),
        })
    }
}

/// `250ms`, `1s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{s:?}: expected e.g. 250ms, 1s, 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("{s:?}: use ms, s or m")),
    };
    if d < Duration::from_millis(10) {
        return Err(format!("{s:?}: at least 10ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
instrument:
  - k8s: { annotations: { "gotel.io/instrument": "true" } }
  - exe: "/app/*"
    name: "orders*"
    ports: "8000-8999"
    container: true
    k8s: { namespace: "shop*", labels: { "app.kubernetes.io/part-of": "shop" } }
  - ports: 9090
exclude:
  - k8s: { namespace: "staging" }
metrics_addr: "127.0.0.1:9500"
poll_interval: "100ms"
kubernetes: off
inject_traceparent: remote
"#;

    #[test]
    fn the_documented_file_parses() {
        let file = FileConfig::parse(EXAMPLE).unwrap();
        let config = DaemonConfig::resolve(file, FileConfig::default()).unwrap();
        assert_eq!(config.selector.instrument.len(), 3);
        assert!(config.selector.instrument[2].ports.as_ref().unwrap().contains(9090));
        assert_eq!(config.selector.exclude.len(), 1);
        assert!(config.selector.default_excludes);
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9500".parse().unwrap()));
        assert_eq!(config.poll_interval, Duration::from_millis(100));
        assert_eq!(config.kubernetes, KubernetesMode::Off);
    }

    #[test]
    fn overrides_win_and_defaults_fill_in() {
        let file = FileConfig::parse(EXAMPLE).unwrap();
        let over = FileConfig {
            instrument: Some(vec![Rule::parse("name=api").unwrap()]),
            metrics_addr: Some("off".into()),
            kubernetes: Some(KubernetesMode::On),
            ..Default::default()
        };
        let config = DaemonConfig::resolve(file, over).unwrap();
        assert_eq!(config.selector.instrument.len(), 1);
        assert_eq!(config.metrics_addr, None);
        assert_eq!(config.kubernetes, KubernetesMode::On);
        let empty = DaemonConfig::resolve(FileConfig::parse("").unwrap(), FileConfig::default());
        let empty = empty.unwrap();
        assert!(empty.selector.instrument.is_empty());
        assert_eq!(empty.metrics_addr, Some(DEFAULT_METRICS_ADDR.parse().unwrap()));
        assert_eq!(empty.poll_interval, Duration::from_millis(250));
    }

    /// The configs shipped in deploy/ are read by this very parser.
    #[test]
    fn the_shipped_configs_parse() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let host = FileConfig::load(&deploy.join("systemd/gotel.yaml")).unwrap();
        let host = DaemonConfig::resolve(host, FileConfig::default()).unwrap();
        assert_eq!(host.kubernetes, KubernetesMode::Off);
        assert!(host.selector.needs_ports());

        let manifest = std::fs::read_to_string(deploy.join("kubernetes/gotel.yaml")).unwrap();
        let embedded = serde_yaml_ng::Deserializer::from_str(&manifest)
            .filter_map(|doc| serde_yaml_ng::Value::deserialize(doc).ok())
            .find(|doc| doc["kind"] == "ConfigMap")
            .and_then(|cm| cm["data"]["gotel.yaml"].as_str().map(str::to_string))
            .expect("the manifest's ConfigMap holds gotel.yaml");
        let cluster = FileConfig::parse(&embedded).unwrap();
        let cluster = DaemonConfig::resolve(cluster, FileConfig::default()).unwrap();
        assert_eq!(cluster.kubernetes, KubernetesMode::On);
        assert!(cluster.selector.needs_pod(), "opt-in by annotation");
    }

    #[test]
    fn mistakes_are_named() {
        let typo = FileConfig::parse("instrumnet: []").unwrap_err();
        assert!(typo.contains("instrumnet"), "{typo}");
        let bad_rule = FileConfig::parse("instrument: [{ exe: 3, colour: red }]").unwrap_err();
        assert!(bad_rule.contains("colour") || bad_rule.contains("exe"), "{bad_rule}");
        assert!(FileConfig::parse("instrument: [{ ports: \"80-1\" }]").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("1ms").is_err());
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }
}
