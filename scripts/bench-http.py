#!/usr/bin/env python3
"""Side-by-side cost of tracing a Go HTTP service: a request to service A makes one call to
service B (three spans: A server, A client, B server). Configurations, interleaved round by
round (A B C D A B C D ...) so drift hits all alike:

  baseline         no instrumentation
  gotel            gotel attach --exe, probes on emulated instructions (the default)
  gotel-entry-ret  the same with --probe-placement entry-ret (the reference tools' placement)
  otel-sdk         the same service instrumented by hand with the OpenTelemetry Go SDK
                   (otelhttp, batch OTLP/HTTP export; bench/sdkchain)

Every configuration exports to one real OpenTelemetry Collector on loopback. wrk drives A at
saturation; per configuration: requests/s, CPU per request of the services (user+sys from
/proc) and of the agent, CPU added per request over the baseline, agent peak RSS, spans/s.
Needs root, wrk, the release build, fixtures, collector and bench/sdkchain built (README).
Usage: scripts/bench-http.py [--rounds N] [--seconds S]
"""
import argparse, json, os, re, signal, statistics, subprocess, sys, tempfile, time

from benchlib import REPO, free_port, status_kib, wait_port

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def wrk(port, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/one"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--json", default=os.path.join(REPO, "target/bench-http.json"))
    args = ap.parse_args()

    gotel = os.path.join(REPO, "target/release/gotel")
    chain = os.path.join(REPO, "target/fixtures/chain-go1.26")
    sdk = os.path.join(REPO, "target/bench/sdkchain")
    collector = os.path.join(REPO, "target/tools/otelcol-gotel")
    for f in (gotel, chain, sdk, collector):
        if not os.path.exists(f):
            sys.exit(f"missing {f}: see the README's benchmark section")

    tmp = tempfile.mkdtemp(prefix="gotel-bench-")
    cport = free_port()
    cfg = os.path.join(tmp, "otelcol.yaml")
    open(cfg, "w").write(
        "receivers:\n  otlp:\n    protocols:\n      http: { endpoint: 127.0.0.1:%d }\n"
        "exporters:\n  file: { path: %s/spans.jsonl }\n"
        "service:\n  telemetry: { metrics: { level: none } }\n"
        "  pipelines:\n    traces: { receivers: [otlp], exporters: [file] }\n" % (cport, tmp))
    col = subprocess.Popen([collector, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(cport)
    otlp_env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{cport}")

    # name -> (service binary, gotel arguments or None)
    configs = {
        "baseline": (chain, None),
        "gotel": (chain, []),
        "gotel-entry-ret": (chain, ["--probe-placement", "entry-ret"]),
        "otel-sdk": (sdk, None),
    }
    results = {name: [] for name in configs}
    try:
        for r in range(args.rounds):
            for name, (binary, gotel_args) in configs.items():
                agent = None
                if gotel_args is not None:
                    agent = subprocess.Popen([gotel, "attach", "--exe", binary] + gotel_args, env=otlp_env,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    while "tracing every process" not in agent.stderr.readline():
                        pass
                b_port, a_port = free_port(), free_port()
                env = otlp_env if name == "otel-sdk" else os.environ
                b = subprocess.Popen([binary, "-addr", f"127.0.0.1:{b_port}"], env=env, stderr=subprocess.DEVNULL)
                a = subprocess.Popen([binary, "-addr", f"127.0.0.1:{a_port}", "-next", f"http://127.0.0.1:{b_port}"],
                                     env=env, stderr=subprocess.DEVNULL)
                wait_port(b_port)
                wait_port(a_port)
                wrk(a_port, 2, args.connections)  # warm up
                s0 = cpu_seconds(a.pid) + cpu_seconds(b.pid)
                a0 = cpu_seconds(agent.pid) if agent else 0
                rps, total = wrk(a_port, args.seconds, args.connections)
                s1 = cpu_seconds(a.pid) + cpu_seconds(b.pid)
                row = {"rps": rps, "requests": total, "services_us_per_req": (s1 - s0) / total * 1e6}
                if agent:
                    row["agent_us_per_req"] = (cpu_seconds(agent.pid) - a0) / total * 1e6
                    row["agent_peak_rss_mib"] = status_kib(agent.pid, "VmHWM") / 1024
                for p in (a, b):
                    p.send_signal(signal.SIGTERM)
                    p.wait()
                if agent:
                    agent.send_signal(signal.SIGTERM)
                    log = agent.stderr.read()
                    agent.wait()
                    m = re.search(r"(\d+) spans, (\d+) exported", log)
                    row["spans_per_s"] = (int(m.group(1)) if m else 0) / (args.seconds + 2)
                results[name].append(row)
                print(f"round {r + 1} {name:15} " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    finally:
        col.kill()

    def med(name, key):
        vals = [row[key] for row in results[name] if key in row]
        return (statistics.median(vals), max(vals) - min(vals)) if vals else (None, None)

    base_cpu = med("baseline", "services_us_per_req")[0]
    print("\nconfiguration     req/s (spread)   services us/req  agent us/req  added us/req  agent RSS MiB  spans/s")
    for name in results:
        rps, sp = med(name, "rps")
        srv, _ = med(name, "services_us_per_req")
        ag, _ = med(name, "agent_us_per_req")
        rss, _ = med(name, "agent_peak_rss_mib")
        sps, _ = med(name, "spans_per_s")
        added = srv + (ag or 0) - base_cpu
        fmt = lambda v, f: "-".rjust(len(f.format(0))) if v is None else f.format(v)
        print(f"{name:17} {rps:6.0f} ({sp:5.0f})   {srv:15.1f}  {fmt(ag, '{:12.1f}')}  {added:12.1f}  {fmt(rss, '{:13.1f}')}  {fmt(sps, '{:7.0f}')}")
    base = med("baseline", "rps")[0]
    for name in results:
        if name != "baseline":
            print(f"throughput with {name}: {med(name, 'rps')[0] / base * 100:.1f}% of baseline")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    json.dump(results, open(args.json, "w"), indent=2)
    print(f"raw rounds: {args.json}")


if __name__ == "__main__":
    main()
