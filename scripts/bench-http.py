#!/usr/bin/env python3
"""Side-by-side cost of tracing Go HTTP services. Three workloads:

  server  one service, GET /c: one SERVER span per request (the per-server-request target)
  chain   service A's /one makes one call to service B: three spans (A server, A client,
          B server)
  db      one service (bench/dbservice), GET /query: one SELECT on a private PostgreSQL
          (database/sql, lib/pq) and one GET on a private Redis (go-redis v9), both started
          by the benchmark; three spans (server, query, command). Its otel-sdk configuration
          is the same binary run with -sdk: otelhttp, otelsql and redisotel

and six configurations, interleaved round by round (A B C D E F A B C D E F ...) so that drift
hits all of them alike:

  baseline         no instrumentation
  gotel            gotel attach --exe, probes on emulated instructions (the default), spans
                   and request-duration metrics over OTLP
  gotel-metrics-off  the same with OTEL_METRICS_EXPORTER=none: what metrics cost is gotel's
                   row less this one
  gotel-entry-ret  the same with --probe-placement entry-ret (the reference tools' placement)
  otel-sdk         the same service instrumented by hand with the OpenTelemetry Go SDK
                   (otelhttp, batch OTLP/HTTP export; bench/sdkchain)
  otel-auto        OpenTelemetry's Go auto-instrumentation agent (go.opentelemetry.io/auto,
                   scripts/build-otel-auto.sh), one agent per process as it requires

and, with --gotel-other PATH, another: gotel-other, another build of gotel (main's, say) run
as `gotel` is, to compare a change with what it changes in the same run. Two more on request
(--configs): gotel-ratio-0.1 and gotel-ratio-0.1-metrics-off, 10% of traces sampled
(traceidratio), with metrics (the probes write events for the 90% unsampled too, to count
them) and without (the unsampled cost no event): what unbiased metrics cost under sampling.

With --remote, the chain workload's B runs on another host (a network namespace behind a veth
pair, made and removed by the benchmark), so A's calls to B cross hosts and traceparent
propagation is at work, over --transport http (HTTP/1.1, a traceparent line), https (HTTP/1.1
over TLS, a TCP option), h2 (HTTP/2 over TLS, a TCP option per stream) or h2c (HTTP/2, a
header field in HEADERS). The configurations are then baseline, gotel, and gotel-inject-off
(gotel with --inject-traceparent off): what propagation costs is gotel's row less that one.

Every configuration exports to one real OpenTelemetry Collector on loopback, whose own
metrics count the spans that arrived. Each run: wrk at saturation (requests/s), then oha at a
fixed rate below every configuration's saturation (p50/p99 latency, and CPU per request of
the services, user+sys from /proc, and of the agents). Added CPU per request is services +
agents minus the baseline's services. Also: agents' peak RSS, spans at the collector against
spans expected (requests x spans per request). For gotel's configurations, a short extra
fixed-rate phase (--probe-seconds) with the kernel's BPF statistics on gives a table of each
BPF program's runs per request and run time (the uprobe's own trap is not in it).

Needs root, wrk, oha, the release build, the fixtures, the collector and what
scripts/build-bench.sh builds (README, "Benchmarks").
Usage: scripts/bench-http.py [--rounds N] [--seconds S] [--workloads server,chain] ...
"""
import argparse, json, os, re, signal, statistics, subprocess, sys, tempfile, threading, time
import urllib.request

from benchlib import REPO, BpfStats, Postgres, Redis, free_port, prog_runs, status_kib, wait_port

TICK = os.sysconf("SC_CLK_TCK")
OHA = os.path.join(REPO, "target/tools/oha/bin/oha")
GOTEL = os.path.join(REPO, "target/release/gotel")
CHAIN = os.path.join(REPO, "target/fixtures/chain-go1.26")
DBSERVICE = os.path.join(REPO, "target/bench/dbservice")
SDK = os.path.join(REPO, "target/bench/sdkchain")
OTEL_AUTO = os.path.join(REPO, "target/bench/otel-auto")
COLLECTOR = os.path.join(REPO, "target/tools/otelcol-gotel")

# name -> (path requested, spans per request); "chain" runs B, then A calling B
WORKLOADS = {"server": ("/c", 1), "chain": ("/one", 3), "db": ("/query", 3)}
CONFIGS = ["baseline", "gotel", "gotel-metrics-off", "gotel-entry-ret", "otel-sdk", "otel-auto"]
# gotel's configurations: (flags, environment, fraction of traces sampled)
RATIO = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
NO_METRICS = {"OTEL_METRICS_EXPORTER": "none"}
GOTEL_CONFIGS = {
    "gotel": ([], {}, 1.0),
    "gotel-other": ([], {}, 1.0),
    "gotel-metrics-off": ([], NO_METRICS, 1.0),
    "gotel-entry-ret": (["--probe-placement", "entry-ret"], {}, 1.0),
    "gotel-inject-off": (["--inject-traceparent", "off"], {}, 1.0),
    "gotel-ratio-0.1": ([], RATIO, 0.1),
    "gotel-ratio-0.1-metrics-off": ([], dict(RATIO, **NO_METRICS), 0.1),
}
REMOTE_CONFIGS = ["baseline", "gotel", "gotel-inject-off"]
# --transport -> (B's flags, A's flags, the scheme A calls B with)
TRANSPORTS = {"http": ([], [], "http"), "https": (["-tls"], [], "https"),
              "h2": (["-tls", "-h2"], [], "https"), "h2c": (["-h2c"], ["-h2c"], "http")}


class OtherHost:
    """A network namespace behind a veth pair, B's host for --remote."""
    NAME, VETH, PEER = "gotel-bench", "gtbench0", "gtbench1"
    OURS, THEIRS = "10.203.250.1", "10.203.250.2"

    def __init__(self):
        self.remove()
        for cmd in [f"netns add {self.NAME}", f"link add {self.VETH} type veth peer name {self.PEER}",
                    f"link set {self.PEER} netns {self.NAME}", f"addr add {self.OURS}/30 dev {self.VETH}",
                    f"link set {self.VETH} up",
                    f"netns exec {self.NAME} ip addr add {self.THEIRS}/30 dev {self.PEER}",
                    f"netns exec {self.NAME} ip link set {self.PEER} up",
                    f"netns exec {self.NAME} ip link set lo up"]:
            subprocess.run(["ip"] + cmd.split(), check=True)

    def remove(self):
        for cmd in [f"link del {self.VETH}", f"netns del {self.NAME}"]:
            subprocess.run(["ip"] + cmd.split(), stderr=subprocess.DEVNULL)

    def command(self, argv):
        return ["ip", "netns", "exec", self.NAME] + argv


def fixed_rate(args, workload):
    """The request rate of the fixed-rate phase."""
    return {"chain": args.rate_chain, "db": args.rate_db}.get(workload, args.rate_server)


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def wrk(port, path, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, total


def oha(port, path, seconds, connections, rate):
    """Open-loop load at `rate` req/s, latency corrected for coordinated omission."""
    out = subprocess.run(
        [OHA, "--no-tui", "--output-format", "json", "--latency-correction", "-z", f"{seconds}s",
         "-c", str(connections), "-q", str(rate), f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    pct = r["latencyPercentiles"]
    total = sum(r["statusCodeDistribution"].values())
    return pct["p50"] * 1e3, pct["p99"] * 1e3, total


class Collector:
    """The OpenTelemetry Collector on loopback: OTLP/HTTP in, spans counted by its metrics."""

    def __init__(self, tmp):
        self.port, self.metrics_port = free_port(), free_port()
        cfg = os.path.join(tmp, "otelcol.yaml")
        open(cfg, "w").write(f"""receivers:
  otlp:
    protocols:
      http: {{ endpoint: 127.0.0.1:{self.port} }}
exporters:
  debug: {{ verbosity: basic }}
service:
  telemetry:
    metrics:
      level: basic
      readers:
        - pull: {{ exporter: {{ prometheus: {{ host: 127.0.0.1, port: {self.metrics_port} }} }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [debug] }}
    metrics: {{ receivers: [otlp], exporters: [debug] }}
""")
        self.proc = subprocess.Popen([COLLECTOR, "--config", cfg], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        wait_port(self.metrics_port)

    def accepted_spans(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read().decode()
        return sum(float(m.group(1)) for m in
                   re.finditer(r"^otelcol_receiver_accepted_spans(?:_total)?(?:\{[^}]*\})? (\S+)$", text, re.M))


def wait_for_line(proc, needle, timeout, what):
    """Reads proc's stderr until a line contains `needle`, then keeps draining it so the
    process never blocks on a full pipe; False when it exits or times out first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            return False
        if needle in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return True
    print(f"  {what}: no '{needle}' within {timeout}s", file=sys.stderr)
    return False


def start_otel_auto(pid, env):
    # The agent decides whether it may use bpf_probe_write_user (to inject traceparent headers)
    # from /sys/kernel/security/lockdown. securityfs is not mounted here, so it would think the
    # kernel is not locked down, load that program, be refused and stop. In a private mount
    # namespace it sees the real lockdown state and loads everything else.
    agent = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t securityfs securityfs /sys/kernel/security && exec {OTEL_AUTO}"],
        env=dict(env, OTEL_GO_AUTO_TARGET_PID=str(pid), OTEL_TRACES_EXPORTER="otlp"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if not wait_for_line(agent, "instrumentation loaded successfully", 90, "otel-auto"):
        agent.kill()
        return None
    return agent


def run_one(args, collector, workload, name, stores, remote=None):
    path, spans_per_request = WORKLOADS[workload]
    otlp_env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}")
    if workload == "db":
        postgres, redis = stores
        binary = DBSERVICE
        service_args = ["-dsn", postgres.dsn(), "-redis", redis.addr()] + \
            (["-sdk"] if name == "otel-sdk" else [])
    else:
        binary = SDK if name == "otel-sdk" else CHAIN
        service_args = []
    agents = []
    sampled = 1.0
    if name.startswith("gotel"):
        extra, extra_env, sampled = GOTEL_CONFIGS[name]
        gotel = args.gotel_other if name == "gotel-other" else GOTEL
        agent = subprocess.Popen([gotel, "attach", "--exe", binary] + extra,
                                 env=dict(otlp_env, **extra_env), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        if not wait_for_line(agent, "tracing every process", 60, "gotel"):
            sys.exit("gotel did not attach")
        agents.append(agent)
    env = otlp_env if name == "otel-sdk" else os.environ
    services = []
    b_port = free_port()
    b_flags, a_flags, scheme = TRANSPORTS[args.transport] if remote else ([], [], "http")
    b_host = remote.THEIRS if remote else "127.0.0.1"
    b_argv = [binary, "-addr", f"{b_host}:{b_port}"] + service_args + b_flags
    services.append(subprocess.Popen(remote.command(b_argv) if remote else b_argv,
                                     env=env, stderr=subprocess.DEVNULL))
    wait_port(b_port, host=b_host)
    port = b_port
    if workload == "chain":
        port = free_port()
        services.append(subprocess.Popen(
            [binary, "-addr", f"127.0.0.1:{port}", "-next", f"{scheme}://{b_host}:{b_port}"] + a_flags,
            env=env, stderr=subprocess.DEVNULL))
        wait_port(port)
    row = {}
    try:
        if name == "otel-auto":
            for s in services:
                agent = start_otel_auto(s.pid, dict(otlp_env, OTEL_SERVICE_NAME=f"svc-{s.pid}"))
                if agent is None:
                    return {"error": "otel-auto did not attach"}
                agents.append(agent)
        spans0 = collector.accepted_spans()
        _, warm = wrk(port, path, 2, args.connections)

        def cpu():
            return (sum(cpu_seconds(s.pid) for s in services),
                    sum(cpu_seconds(a.pid) for a in agents))

        s0, a0 = cpu()
        row["sat_rps"], sat_total = wrk(port, path, args.seconds, args.connections)
        s1, a1 = cpu()
        row["sat_services_us"] = (s1 - s0) / sat_total * 1e6
        row["sat_agent_us"] = (a1 - a0) / sat_total * 1e6
        rate = fixed_rate(args, workload)
        row["p50_ms"], row["p99_ms"], fixed_total = oha(port, path, args.seconds, args.connections, rate)
        s2, a2 = cpu()
        row["services_us"] = (s2 - s1) / fixed_total * 1e6
        row["agent_us"] = (a2 - a1) / fixed_total * 1e6
        if agents:
            row["agent_peak_rss_mib"] = sum(status_kib(a.pid, "VmHWM") for a in agents) / 1024
        probes_total = 0
        if name.startswith("gotel") and args.probe_seconds:
            row["probes"], probes_total = probe_table(args, agents[0].pid, port, path, rate)
        # Under a ratio sampler the expectation is the ratio's share, so about right only.
        requests = warm + sat_total + fixed_total + probes_total
        row["expected_spans"] = round(requests * spans_per_request * sampled)
    finally:
        # Agents flush what they hold when told to stop, then the services (the SDK's flush).
        for p in agents + services:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if name != "baseline":
        time.sleep(0.5)
        row["spans"] = collector.accepted_spans() - spans0
    return row


def probe_table(args, agent, port, path, rate):
    """Each of the agent's BPF programs' runs per request and run time, over a short extra
    fixed-rate phase with the kernel's BPF statistics on (kept off while CPU is measured):
    ({program: [runs per request, ns per run]}, requests)."""
    with BpfStats():
        before = prog_runs(agent)
        _, _, total = oha(port, path, args.probe_seconds, args.connections, rate)
        after = prog_runs(agent)
    table = {}
    for prog, (cnt, ns) in after.items():
        cnt0, ns0 = before.get(prog, (0, 0))
        if cnt > cnt0:
            table[prog] = [(cnt - cnt0) / total, (ns - ns0) / (cnt - cnt0)]
    return table, total


def report_probes(workload, results):
    """Per configuration of gotel: each program's runs per request and cost, medians."""
    for name, rows in results.items():
        tables = [r["probes"] for r in rows if r.get("probes")]
        if not tables:
            continue
        print(f"\n{workload}, {name}: BPF programs per request (kernel statistics, medians)")
        print("program                          runs/req  ns/run  us/req")
        progs = sorted({p for t in tables for p in t})
        total = 0.0
        lines = []
        for prog in progs:
            runs = statistics.median(t.get(prog, [0, 0])[0] for t in tables)
            ns = statistics.median(t[prog][1] for t in tables if prog in t)
            total += runs * ns / 1e3
            lines.append((runs * ns, f"{prog:32} {runs:8.2f}  {ns:6.0f}  {runs * ns / 1e3:6.2f}"))
        for _, line in sorted(lines, reverse=True):
            print(line)
        print(f"{'all programs':32} {'':8}  {'':6}  {total:6.2f}")


def med(rows, key):
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def report(workload, results, args):
    path, spans = WORKLOADS[workload]
    rate = fixed_rate(args, workload)
    where = f", B on another host over {args.transport}" if args.remote else ""
    print(f"\nworkload {workload}: GET {path}, {spans} span(s) per request{where}; latency and CPU "
          f"at {rate} req/s, {args.rounds} round(s), medians")
    print("configuration     sat req/s (spread)  p50 ms  p99 ms  services us/req  agent us/req"
          "  added us/req  added@sat  agent RSS MiB  spans/expected")
    base = results.get("baseline", [])
    base_cpu, base_sat = med(base, "services_us"), med(base, "sat_services_us")
    fmt = lambda v, f: "-".rjust(len(f.format(0))) if v is None else f.format(v)
    for name, rows in results.items():
        ok = [r for r in rows if "error" not in r]
        if not ok:
            print(f"{name:17} {rows[0]['error'] if rows else 'not run'}")
            continue
        rps = [r["sat_rps"] for r in ok]
        srv, ag = med(ok, "services_us"), med(ok, "agent_us")
        added = srv + ag - base_cpu if base_cpu is not None else None
        added_sat = (med(ok, "sat_services_us") + med(ok, "sat_agent_us") - base_sat
                     if base_sat is not None else None)
        got = sum(r.get("spans", 0) for r in ok)
        want = sum(r["expected_spans"] for r in ok)
        ratio = "-" if name == "baseline" else f"{got:.0f}/{want} ({got / want * 100:.1f}%)"
        print(f"{name:17} {statistics.median(rps):9.0f} ({max(rps) - min(rps):5.0f})"
              f"  {med(ok, 'p50_ms'):6.2f}  {med(ok, 'p99_ms'):6.2f}  {srv:15.1f}  {ag:12.1f}"
              f"  {fmt(added, '{:12.1f}')}  {fmt(added_sat, '{:9.1f}')}"
              f"  {fmt(med(ok, 'agent_peak_rss_mib'), '{:13.1f}')}  {ratio}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rate-server", type=int, default=3000, help="fixed rate, server workload")
    ap.add_argument("--rate-chain", type=int, default=1500, help="fixed rate, chain workload")
    ap.add_argument("--rate-db", type=int, default=1000, help="fixed rate, db workload")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--gotel-other", metavar="PATH",
                    help="another gotel binary, run as the configuration gotel-other")
    ap.add_argument("--remote", action="store_true",
                    help="chain only: B on another host (a network namespace), propagation at work")
    ap.add_argument("--transport", choices=list(TRANSPORTS), default="http",
                    help="with --remote: how A calls B")
    ap.add_argument("--probe-seconds", type=int, default=2,
                    help="length of the extra phase counting BPF program runs (0: none)")
    ap.add_argument("--json", default=os.path.join(REPO, "target/bench-http.json"))
    args = ap.parse_args()
    workloads = args.workloads.split(",")
    if args.remote:
        if "--workloads" not in sys.argv:
            workloads = ["chain"]
        if workloads != ["chain"]:
            sys.exit("--remote runs the chain workload only")
        if "--configs" not in sys.argv:
            args.configs = ",".join(REMOTE_CONFIGS)
    configs = args.configs.split(",")
    if args.gotel_other and "gotel-other" not in configs:
        configs.append("gotel-other")
    unknown = [c for c in configs if c not in GOTEL_CONFIGS and c not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configurations {unknown}: use {CONFIGS + list(GOTEL_CONFIGS)}")
    if "gotel-other" in configs and not args.gotel_other:
        sys.exit("the configuration gotel-other needs --gotel-other PATH")
    needed = [GOTEL, CHAIN, COLLECTOR, OHA] + ([DBSERVICE] if "db" in workloads else []) + ([SDK] if "otel-sdk" in configs and set(workloads) - {"db"} else []) + \
        ([OTEL_AUTO] if "otel-auto" in configs else []) + \
        ([args.gotel_other] if args.gotel_other else [])
    for f in needed:
        if not os.path.exists(f):
            sys.exit(f"missing {f}: run scripts/build-bench.sh (README, 'Benchmarks')")
    if "baseline" not in configs:
        configs.insert(0, "baseline")

    tmp = tempfile.mkdtemp(prefix="gotel-bench-")
    collector = Collector(tmp)
    stores = (Postgres(), Redis()) if "db" in workloads else None
    remote = OtherHost() if args.remote else None
    results = {w: {c: [] for c in configs} for w in workloads}
    try:
        for r in range(args.rounds):
            for w in workloads:
                for name in configs:
                    row = run_one(args, collector, w, name, stores, remote)
                    results[w][name].append(row)
                    print(f"round {r + 1} {w:6} {name:15} " + " ".join(
                        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                        flush=True)
    finally:
        collector.proc.kill()
        for store in stores or ():
            store.stop()
        if remote:
            remote.remove()
    for w in workloads:
        report(w, results[w], args)
        report_probes(w, results[w])
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    json.dump(results, open(args.json, "w"), indent=2)
    print(f"\nraw rounds: {args.json}")


if __name__ == "__main__":
    main()
