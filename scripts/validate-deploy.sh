#!/usr/bin/env bash
# Validates the deployment files under deploy/: the Kubernetes manifest, the Helm chart (lint,
# renders, schema), both against the Kubernetes API schemas in strict mode, the systemd unit, and
# their consistency with each other (scripts/validate-deploy.py). Installs its own tools under
# target/tools, pinned, and reuses them on later runs:
#   helm                 built from the Go module proxy (go install helm.sh/helm/v3/cmd/helm@…)
#   kubernetes-validate  from PyPI into a venv; it ships the Kubernetes JSON schemas, so no
#                        network is needed to validate
# Needs go and python3 (>= 3.11). For CI: exits non-zero on the first failing step.
set -euo pipefail

HELM_VERSION=v3.22.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: appArmorProfile is 1.30+) and
# the newest one kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/target/tools
VENV=$TOOLS/venv
OUT=$ROOT/target/validate-deploy
CHART=deploy/helm/gotel
HELM=$TOOLS/helm

start=$SECONDS
step_start=$SECONDS
if [ -t 1 ]; then blue=$'\033[1;34m' green=$'\033[1;32m' yellow=$'\033[1;33m' red=$'\033[1;31m' plain=$'\033[0m'
else blue='' green='' yellow='' red='' plain=''; fi
step() { step_start=$SECONDS; printf '%s[validate-deploy]%s %s\n' "$blue" "$plain" "$*"; }
done_step() { printf '%s[validate-deploy]%s ok: %s (%ss)\n' "$green" "$plain" "$*" $((SECONDS - step_start)); }
note() { printf '%s[validate-deploy]%s %s\n' "$yellow" "$plain" "$*"; }
died=0
die() { printf '%s[validate-deploy] FAILED:%s %s\n' "$red" "$plain" "$*" >&2; died=1; exit 1; }
# A command that fails under set -e (e.g. go install, pip) has printed its own error.
trap 'rc=$?; [ $rc = 0 ] || [ $died = 1 ] || printf "%s[validate-deploy] FAILED%s (exit %s)\n" "$red" "$plain" $rc >&2' EXIT

mkdir -p "$TOOLS" "$OUT"

# --- tools -------------------------------------------------------------------------------------
step "helm $HELM_VERSION"
# Linked as helm's own release builds are (Makefile LDFLAGS): without these flags `helm version`
# says "v3.22" and helm assumes Kubernetes 1.20 wherever no cluster is asked (template, lint,
# install --dry-run=client), which the chart's kubeVersion (>= 1.30) refuses.
HELM_K8S_MINOR=37 # helm v3.22.0 is built against k8s.io/client-go v0.37
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  HELM_LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
helm_built() { [ -x "$HELM" ] && [ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; }
if helm_built; then
  done_step "helm $HELM_VERSION already in target/tools"
else
  command -v go >/dev/null || die "go is needed to build helm"
  note "building helm $HELM_VERSION from the Go module proxy (first run: a few minutes)"
  GOBIN=$TOOLS GOFLAGS=-buildvcs=false CGO_ENABLED=0 go install -trimpath -ldflags "$HELM_LDFLAGS" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  helm_built || die "target/tools/helm is not helm $HELM_VERSION after go install"
  done_step "built helm $HELM_VERSION into target/tools"
fi

step "kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
kv_installed() {
  [ -x "$VENV/bin/python" ] &&
    [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]
}
if kv_installed; then
  done_step "kubernetes-validate $KUBERNETES_VALIDATE_VERSION already in target/tools/venv"
else
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 >= 3.11 is needed"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  kv_installed || die "kubernetes-validate $KUBERNETES_VALIDATE_VERSION did not install"
  done_step "installed kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
fi
for v in "${KUBERNETES_VERSIONS[@]}"; do
  "$VENV/bin/python" - "$v" <<'PY' || die "kubernetes-validate $KUBERNETES_VALIDATE_VERSION has no strict schemas for Kubernetes $v"
import importlib.resources, sys
d = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{sys.argv[1]}-local-strict"
sys.exit(not d.is_dir())
PY
done

# --- helm chart --------------------------------------------------------------------------------
step "helm lint --strict $CHART (default values, ci/override-values.yaml)"
"$HELM" lint --strict --quiet "$CHART" >"$OUT/lint.txt" 2>&1 || { cat "$OUT/lint.txt"; die "helm lint (default values)"; }
"$HELM" lint --strict --quiet "$CHART" -f "$CHART/ci/override-values.yaml" >>"$OUT/lint.txt" 2>&1 ||
  { cat "$OUT/lint.txt"; die "helm lint (ci/override-values.yaml)"; }
done_step "helm lint"

step "helm template $CHART (default values, ci/override-values.yaml), NOTES.txt, values.schema.json"
"$HELM" template gotel "$CHART" >"$OUT/default.yaml" || die "helm template (default values)"
"$HELM" template gotel "$CHART" -n tracing -f "$CHART/ci/override-values.yaml" >"$OUT/override.yaml" ||
  die "helm template (ci/override-values.yaml)"
# NOTES.txt: `helm install --dry-run` asks a cluster even with =client, and `helm template` renders
# notes but does not print them, so render them through a template added to a copy of the chart.
rm -rf "$OUT/notes-chart" && mkdir -p "$OUT/notes-chart" && cp -r "$CHART" "$OUT/notes-chart/"
printf '%s\n' 'notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | toJson }}' \
  >"$OUT/notes-chart/gotel/templates/zz-notes.yaml"
for values in values.yaml ci/override-values.yaml; do
  "$HELM" template gotel "$OUT/notes-chart/gotel" -n tracing -f "$CHART/$values" --show-only templates/zz-notes.yaml \
    >"$OUT/notes.yaml" || die "NOTES.txt does not render (-f $values)"
  "$VENV/bin/python" -c 'import sys, yaml; n = yaml.safe_load(open(sys.argv[1]))["notes"]; sys.exit("runs as DaemonSet" not in n)' \
    "$OUT/notes.yaml" || die "NOTES.txt renders without its first line (-f $values)"
done
# values.schema.json must refuse bad values, and for that reason, not another.
bad_values=(metrics.port=0 config.kubernetes=true config.inject_traceparent=sometimes config.poll_interval=fast
  config.metrics_addr=0.0.0.0:1 config.instrument[0].k8s.namespaces=x config.instrument[0].ports=80-x
  otlp.protocol=udp image.digest=latest unknownValue=1)
for set in "${bad_values[@]}"; do
  if "$HELM" template gotel "$CHART" --set "$set" >"$OUT/bad.txt" 2>&1; then
    die "values.schema.json accepted --set $set"
  fi
  grep -q "values don't meet the specifications of the schema" "$OUT/bad.txt" ||
    { cat "$OUT/bad.txt"; die "--set $set failed, but not on values.schema.json"; }
done
done_step "rendered both to target/validate-deploy/, NOTES.txt renders, schema refused ${#bad_values[@]} bad values"

# --- Kubernetes API schemas --------------------------------------------------------------------
for v in "${KUBERNETES_VERSIONS[@]}"; do
  step "kubernetes-validate --strict -k $v"
  if ! "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/kubernetes/*.yaml "$OUT/default.yaml" "$OUT/override.yaml" \
    >"$OUT/kv.txt" 2>&1; then
    cat "$OUT/kv.txt"
    die "not valid Kubernetes $v objects"
  fi
  # Warnings (e.g. deprecated fields) do not fail kubernetes-validate: fail on them here.
  if [ -s "$OUT/kv.txt" ]; then cat "$OUT/kv.txt"; die "warnings against Kubernetes $v"; fi
  done_step "deploy/kubernetes/*.yaml and both chart renders are valid Kubernetes $v objects (strict)"
done

# --- consistency -------------------------------------------------------------------------------
step "consistency: plain manifest vs chart, systemd, Dockerfile"
"$VENV/bin/python" scripts/validate-deploy.py "$ROOT" deploy/kubernetes/gotel.yaml "$OUT/default.yaml" "$OUT/override.yaml" ||
  die "consistency checks"
done_step "consistency"

# --- systemd -----------------------------------------------------------------------------------
step "systemd-analyze verify deploy/systemd/gotel.service"
if ! command -v systemd-analyze >/dev/null; then
  note "NOT CHECKED: systemd-analyze is not installed (apt-get install systemd); the unit's directives were only checked by validate-deploy.py"
else
  unit=deploy/systemd/gotel.service
  exe=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
  if [ -x "$exe" ]; then
    checked=$unit
    what="as written"
  else
    # verify refuses a unit whose ExecStart binary does not exist; verify a copy that runs
    # /usr/bin/true with the same arguments instead. Everything else is checked as written.
    checked=$OUT/gotel.service
    sed "s#^ExecStart=$exe #ExecStart=/usr/bin/true #" "$unit" >"$checked"
    what="with ExecStart=$exe replaced by /usr/bin/true (not installed here)"
  fi
  # verify exits 0 on unknown keys and bad values, only warning: any output is a failure.
  if ! systemd-analyze verify "$checked" >"$OUT/verify.txt" 2>&1 || [ -s "$OUT/verify.txt" ]; then
    cat "$OUT/verify.txt"
    die "systemd-analyze verify $unit"
  fi
  exposure=$(systemd-analyze security --offline=yes "$checked" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: //p' || true)
  done_step "systemd-analyze verify ($(systemd-analyze --version | head -1)) $what; offline exposure level: ${exposure:-n/a}"
fi

note "not checked here: building deploy/Dockerfile (no Docker engine); the daemon reading these configs is a cargo test (discovery: the_shipped_configs_parse)"
printf '%s[validate-deploy]%s all deployment checks passed in %ss\n' "$green" "$plain" $((SECONDS - start))
