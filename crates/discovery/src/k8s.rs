//! Kubernetes metadata for processes in pods: what gotel keeps of each pod on its node, the
//! resource attributes and service name it implies, and the watch that keeps it current.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;

/// Annotation prefix whose keys become resource attributes (the OpenTelemetry operator's).
pub const RESOURCE_ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";

/// What gotel keeps of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The controller that owns the pod, resolved through a ReplicaSet to its Deployment:
    /// (kind as in semantic-convention keys, e.g. "deployment", name).
    pub owners: Vec<(&'static str, String)>,
    /// Runtime container id (without the `containerd://` scheme) -> container name.
    pub containers: BTreeMap<String, String>,
}

impl PodMeta {
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .or_else(|| meta.owner_references.as_ref()?.first());
        let labels = meta.labels.clone().unwrap_or_default();
        let owners = owner.map(|o| owners(&o.kind, &o.name, &labels)).unwrap_or_default();
        let status = pod.status.as_ref();
        let containers = status
            .into_iter()
            .flat_map(|s| {
                let regular = s.container_statuses.iter().flatten();
                let init = s.init_container_statuses.iter().flatten();
                regular.chain(init)
            })
            .filter_map(|c| {
                let id = c.container_id.as_deref()?;
                let id = id.split_once("://").map_or(id, |(_, id)| id);
                Some((id.to_string(), c.name.clone()))
            })
            .collect();
        Some(PodMeta {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            labels,
            annotations: meta.annotations.clone().unwrap_or_default(),
            owners,
            containers,
        })
    }

    /// service.name as Kubernetes metadata suggests it, best first: the
    /// `resource.opentelemetry.io/service.name` annotation, the `app.kubernetes.io/name` label,
    /// the owning workload's name.
    pub fn service_name(&self) -> Option<String> {
        let annotated = self.annotations.get(&format!("{RESOURCE_ANNOTATION_PREFIX}service.name"));
        let labelled = self.labels.get("app.kubernetes.io/name");
        annotated.or(labelled).cloned().or_else(|| {
            // The workload, not the ReplicaSet between it and the pod.
            self.owners.iter().rev().map(|(_, name)| name.clone()).next()
        })
    }

    /// Resource attributes for a process in this pod (semantic conventions `k8s.*`), plus
    /// every `resource.opentelemetry.io/*` annotation.
    pub fn resource_attributes(&self, container_id: Option<&str>) -> Vec<(String, String)> {
        let mut attrs = vec![
            ("k8s.namespace.name".to_string(), self.namespace.clone()),
            ("k8s.pod.name".to_string(), self.name.clone()),
            ("k8s.pod.uid".to_string(), self.uid.clone()),
        ];
        if let Some(name) = container_id.and_then(|id| self.containers.get(id)) {
            attrs.push(("k8s.container.name".into(), name.clone()));
        }
        if let Some(node) = &self.node_name {
            attrs.push(("k8s.node.name".into(), node.clone()));
        }
        for (kind, name) in &self.owners {
            attrs.push((format!("k8s.{kind}.name"), name.clone()));
        }
        for (key, value) in &self.annotations {
            if let Some(attr) = key.strip_prefix(RESOURCE_ANNOTATION_PREFIX) {
                attrs.push((attr.to_string(), value.clone()));
            }
        }
        attrs
    }
}

/// The owner chain from the pod's controller: a ReplicaSet named `<deployment>-<hash>`, with the
/// pod-template-hash label equal to that hash, belongs to that Deployment (the naming the
/// Deployment controller guarantees), so no extra API call is needed.
fn owners(
    kind: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    let key = match kind {
        "ReplicaSet" => "replicaset",
        "StatefulSet" => "statefulset",
        "DaemonSet" => "daemonset",
        "Job" => "job",
        "CronJob" => "cronjob",
        "ReplicationController" => "replicationcontroller",
        _ => return Vec::new(),
    };
    let mut chain = vec![(key, name.to_string())];
    if kind == "ReplicaSet" {
        let deployment = labels
            .get("pod-template-hash")
            .and_then(|hash| name.strip_suffix(hash.as_str())?.strip_suffix('-'));
        if let Some(deployment) = deployment {
            chain.push(("deployment", deployment.to_string()));
        }
    }
    chain
}

/// Pods on this node by uid, kept current by a watch.
#[derive(Debug, Clone, Default)]
pub struct PodStore {
    pods: Arc<RwLock<HashMap<String, Arc<PodMeta>>>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl PodStore {
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods.read().ok()?.get(uid).cloned()
    }

    /// Whether the first full list has arrived (before it, a missing pod is not yet news).
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.pods.read().map(|p| p.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, pod: &Pod) {
        if let (Some(meta), Ok(mut pods)) = (PodMeta::from_pod(pod), self.pods.write()) {
            pods.insert(meta.uid.clone(), Arc::new(meta));
        }
    }

    fn delete(&self, pod: &Pod) {
        if let (Some(uid), Ok(mut pods)) = (pod.metadata.uid.as_ref(), self.pods.write()) {
            pods.remove(uid);
        }
    }

    fn replace(&self, fresh: HashMap<String, Arc<PodMeta>>) {
        if let Ok(mut pods) = self.pods.write() {
            *pods = fresh;
        }
        self.synced.store(true, std::sync::atomic::Ordering::Release);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Kubernetes: {0}")]
pub struct KubeError(String);

/// Starts watching the pods of `node` (all pods if None) on a thread of its own, with the
/// in-cluster or kubeconfig credentials. Returns once the client is configured; the store
/// fills as the watch delivers.
pub fn watch_pods(node: Option<String>) -> Result<PodStore, KubeError> {
    let store = PodStore::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KubeError(format!("starting a runtime: {e}")))?;
    let client = runtime
        .block_on(kube::Client::try_default())
        .map_err(|e| KubeError(format!("no cluster credentials: {e}")))?;
    let watched = store.clone();
    std::thread::Builder::new()
        .name("gotel-k8s".into())
        .spawn(move || runtime.block_on(run_watch(client, node, watched)))
        .map_err(|e| KubeError(format!("starting the watch thread: {e}")))?;
    Ok(store)
}

async fn run_watch(client: kube::Client, node: Option<String>, store: PodStore) {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, watcher, Event};
    use kube::runtime::WatchStreamExt;

    let pods: kube::Api<Pod> = kube::Api::all(client);
    let mut config = watcher::Config::default();
    if let Some(node) = &node {
        config = config.fields(&format!("spec.nodeName={node}"));
    }
    let mut fresh: Option<HashMap<String, Arc<PodMeta>>> = None;
    let mut events = std::pin::pin!(watcher(pods, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => fresh = Some(HashMap::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(fresh), Some(meta)) = (fresh.as_mut(), PodMeta::from_pod(&pod)) {
                    fresh.insert(meta.uid.clone(), Arc::new(meta));
                }
            }
            Ok(Event::InitDone) => {
                let pods = fresh.take().unwrap_or_default();
                tracing::info!("Kubernetes: watching {} pods", pods.len());
                store.replace(pods);
            }
            Ok(Event::Apply(pod)) => store.apply(&pod),
            Ok(Event::Delete(pod)) => store.delete(&pod),
            Err(e) => tracing::warn!("Kubernetes pod watch: {e} (retrying)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as `kubectl get pod -o json` returns it for a Deployment's replica (trimmed of
    /// fields gotel does not read).
    const DEPLOYMENT_POD: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "name": "checkout-7d9f8b6c5d-x2lkq", "namespace": "shop",
        "uid": "6f1c2a4e-9b7d-4c3e-8a5f-0e2d4b6a8c1f",
        "labels": {"app": "checkout", "pod-template-hash": "7d9f8b6c5d"},
        "annotations": {"gotel.io/instrument": "true",
                        "resource.opentelemetry.io/deployment.environment.name": "prod"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
          "name": "checkout-7d9f8b6c5d", "uid": "1a2b3c4d-0000-4000-8000-000000000001",
          "controller": true, "blockOwnerDeletion": true}]
      },
      "spec": {"nodeName": "node-a", "containers": [{"name": "checkout", "image": "shop/checkout:1.4"},
                                                    {"name": "envoy", "image": "envoy:1.30"}]},
      "status": {"phase": "Running", "containerStatuses": [
        {"name": "checkout", "containerID": "containerd://2a1b6c0e4f8d9a7b3c5e1f0d2b4a6c8e0f1a3b5c7d9e2f4a6b8c0d1e3f5a7b9c",
         "image": "shop/checkout:1.4", "imageID": "", "ready": true, "restartCount": 0},
        {"name": "envoy", "containerID": "containerd://9c7b5a3f1e0d8c6b4a2f9e7d5c3b1a0f8e6d4c2b0a9f7e5d3c1b0a8f6e4d2c1b",
         "image": "envoy:1.30", "imageID": "", "ready": true, "restartCount": 0}]}
    }"#;

    const STATEFULSET_POD: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "name": "ledger-0", "namespace": "payments", "uid": "0b1d3f5a-7c9e-4b2d-9f1a-3c5e7a9b1d2f",
        "labels": {"app.kubernetes.io/name": "ledger-db", "statefulset.kubernetes.io/pod-name": "ledger-0"},
        "annotations": {"resource.opentelemetry.io/service.name": "ledger"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ledger",
          "uid": "2b3c4d5e-0000-4000-8000-000000000002", "controller": true}]
      },
      "spec": {"containers": [{"name": "ledger"}]},
      "status": {"phase": "Pending"}
    }"#;

    fn pod(json: &str) -> PodMeta {
        let pod: Pod = serde_json::from_str(json).expect("a valid Pod");
        PodMeta::from_pod(&pod).expect("a pod with a uid")
    }

    fn attr<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_deployment_replica_names_its_deployment() {
        let meta = pod(DEPLOYMENT_POD);
        assert_eq!(meta.service_name().as_deref(), Some("checkout"));
        let id = "2a1b6c0e4f8d9a7b3c5e1f0d2b4a6c8e0f1a3b5c7d9e2f4a6b8c0d1e3f5a7b9c";
        let attrs = meta.resource_attributes(Some(id));
        assert_eq!(attr(&attrs, "k8s.namespace.name"), Some("shop"));
        assert_eq!(attr(&attrs, "k8s.pod.name"), Some("checkout-7d9f8b6c5d-x2lkq"));
        assert_eq!(attr(&attrs, "k8s.pod.uid"), Some("6f1c2a4e-9b7d-4c3e-8a5f-0e2d4b6a8c1f"));
        assert_eq!(attr(&attrs, "k8s.container.name"), Some("checkout"));
        assert_eq!(attr(&attrs, "k8s.node.name"), Some("node-a"));
        assert_eq!(attr(&attrs, "k8s.replicaset.name"), Some("checkout-7d9f8b6c5d"));
        assert_eq!(attr(&attrs, "k8s.deployment.name"), Some("checkout"));
        assert_eq!(attr(&attrs, "deployment.environment.name"), Some("prod"));
        let sidecar = meta.resource_attributes(Some(
            "9c7b5a3f1e0d8c6b4a2f9e7d5c3b1a0f8e6d4c2b0a9f7e5d3c1b0a8f6e4d2c1b",
        ));
        assert_eq!(attr(&sidecar, "k8s.container.name"), Some("envoy"));
    }

    #[test]
    fn the_annotation_beats_the_label_beats_the_owner() {
        let meta = pod(STATEFULSET_POD);
        assert_eq!(meta.service_name().as_deref(), Some("ledger"));
        let mut labelled = meta.clone();
        labelled.annotations.clear();
        assert_eq!(labelled.service_name().as_deref(), Some("ledger-db"));
        labelled.labels.clear();
        labelled.owners = vec![("statefulset", "ledger-set".into())];
        assert_eq!(labelled.service_name().as_deref(), Some("ledger-set"));
        let attrs = meta.resource_attributes(None);
        assert_eq!(attr(&attrs, "k8s.statefulset.name"), Some("ledger"));
        assert_eq!(attr(&attrs, "k8s.container.name"), None, "no status yet: no container ids");
        assert_eq!(attr(&attrs, "k8s.node.name"), None, "not scheduled yet");
    }

    #[test]
    fn a_replicaset_without_the_hash_label_is_left_alone() {
        let chain = owners("ReplicaSet", "hand-made", &BTreeMap::new());
        assert_eq!(chain, vec![("replicaset", "hand-made".to_string())]);
        assert!(owners("Node", "n1", &BTreeMap::new()).is_empty());
    }

    #[test]
    fn the_store_applies_and_deletes() {
        let store = PodStore::default();
        let p: Pod = serde_json::from_str(DEPLOYMENT_POD).unwrap();
        store.apply(&p);
        assert!(store.get("6f1c2a4e-9b7d-4c3e-8a5f-0e2d4b6a8c1f").is_some());
        store.delete(&p);
        assert!(store.is_empty());
    }
}
