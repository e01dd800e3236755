#!/usr/bin/env python3
"""Side-by-side cost of gotel on the net/http fixture: no instrumentation, gotel with probes on
emulated instructions (the default), and gotel with entry + RET probes (the reference tools'
placement, --probe-placement entry-ret).

Interleaves the configurations round by round (A B C A B C ...) so drift hits all alike, drives
the server with wrk at saturation, and reports per configuration: requests/s, the server's CPU
per request (user+sys from /proc), the agent's CPU per request and peak RSS, added CPU per
request over the baseline, and spans handled. gotel exports over OTLP/HTTP to a real collector
on loopback. Needs root, wrk, and the release build, fixtures and collector (scripts/build-*.sh).
Usage: scripts/bench-http.py [--rounds N]
"""
import argparse, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def peak_rss_kib(pid):
    m = re.search(r"VmHWM:\s+(\d+)", open(f"/proc/{pid}/status").read())
    return int(m.group(1)) if m else 0


def wrk(port, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/hello"],
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
    fixture = os.path.join(REPO, "target/fixtures/httpserver-go1.26")
    collector = os.path.join(REPO, "target/tools/otelcol-gotel")
    for f in (gotel, fixture, collector):
        if not os.path.exists(f):
            sys.exit(f"missing {f}: cargo build --release, scripts/build-fixtures.sh, scripts/build-collector.sh")

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

    port = free_port()
    server = subprocess.Popen([fixture, "-addr", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    wait_port(port)
    wrk(port, 2, args.connections)  # warm up

    configs = {"baseline": None, "gotel": [], "gotel-entry-ret": ["--probe-placement", "entry-ret"]}
    results = {name: [] for name in configs}
    try:
        for r in range(args.rounds):
            for name in results:
                agent = None
                if configs[name] is not None:
                    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{cport}")
                    agent = subprocess.Popen([gotel, "attach", "--pid", str(server.pid)] + configs[name], env=env,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    while "tracing pid" not in agent.stderr.readline():
                        pass
                s0 = cpu_seconds(server.pid)
                a0 = cpu_seconds(agent.pid) if agent else 0
                rps, total = wrk(port, args.seconds, args.connections)
                s1 = cpu_seconds(server.pid)
                row = {"rps": rps, "requests": total, "server_us_per_req": (s1 - s0) / total * 1e6}
                if agent:
                    row["agent_us_per_req"] = (cpu_seconds(agent.pid) - a0) / total * 1e6
                    row["agent_peak_rss_mib"] = peak_rss_kib(agent.pid) / 1024
                    agent.send_signal(signal.SIGTERM)
                    log = agent.stderr.read()
                    agent.wait()
                    m = re.search(r"(\d+) spans, (\d+) exported", log)
                    row["spans"] = int(m.group(1)) if m else 0
                    row["exported"] = int(m.group(2)) if m else 0
                    row["spans_per_s"] = row["spans"] / args.seconds
                results[name].append(row)
                print(f"round {r + 1} {name:15} " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    finally:
        server.kill(); col.kill()

    def med(name, key):
        vals = [row[key] for row in results[name] if key in row]
        return (statistics.median(vals), max(vals) - min(vals)) if vals else (None, None)

    base_cpu = med("baseline", "server_us_per_req")[0]
    print("\nconfiguration     req/s (spread)   server us/req  agent us/req  added us/req  agent RSS MiB  spans/s")
    for name in results:
        rps, sp = med(name, "rps")
        srv, _ = med(name, "server_us_per_req")
        ag, _ = med(name, "agent_us_per_req")
        rss, _ = med(name, "agent_peak_rss_mib")
        sps, _ = med(name, "spans_per_s")
        added = None if ag is None else srv + ag - base_cpu
        fmt = lambda v, f: "-".rjust(len(f.format(0))) if v is None else f.format(v)
        print(f"{name:17} {rps:6.0f} ({sp:5.0f})   {srv:13.1f}  {fmt(ag, '{:12.1f}')}  {fmt(added, '{:12.1f}')}  {fmt(rss, '{:13.1f}')}  {fmt(sps, '{:7.0f}')}")
    base = med("baseline", "rps")[0]
    for name in results:
        if name != "baseline":
            print(f"throughput with {name}: {med(name, 'rps')[0] / base * 100:.1f}% of baseline")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    json.dump(results, open(args.json, "w"), indent=2)
    print(f"raw rounds: {args.json}")


if __name__ == "__main__":
    main()
