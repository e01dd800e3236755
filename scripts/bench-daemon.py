#!/usr/bin/env python3
"""Fleet-mode figures: how soon `gotel daemon` traces a new process, and its memory with many
processes instrumented.

Starts the release gotel daemon (OTLP to a local collector when target/tools/otelcol-gotel
exists, else spans discarded to /dev/null), then N fixture processes, each from its own copy of
a fixture binary (so N executables are analysed and attached), waits until /status lists them
all, drives some requests, and reports: start-to-traced delay per process (the daemon measures
it from the process's own start time), agent peak and current RSS, and spans seen.

Usage: scripts/bench-daemon.py [--processes 20] [--requests 200]   (as root, after
cargo build --release -p gotel and scripts/build-fixtures.sh)
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import COLLECTOR, FIXTURES, REPO, free_port, http_get, status_kib, wait_port

GOTEL = os.path.join(REPO, "target/release/gotel")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=20)
    ap.add_argument("--requests", type=int, default=200, help="per process")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the daemon attaches uprobes")
    if not os.path.exists(GOTEL):
        sys.exit("build first: cargo build --release -p gotel")
    fixtures = sorted(
        f for f in os.listdir(FIXTURES) if f.startswith("httpserver-go") and "gopath" not in f
    )
    if not fixtures:
        sys.exit("build the fixtures first: scripts/build-fixtures.sh")

    work = tempfile.mkdtemp(prefix="gotel-bench-daemon-")
    procs = []
    env = dict(os.environ)
    collector = None
    if os.path.exists(COLLECTOR):
        grpc_port, http_port = free_port(), free_port()
        cfg = os.path.join(work, "otelcol.yaml")
        with open(cfg, "w") as f:
            f.write(
                "receivers:\n  otlp:\n    protocols:\n"
                f"      grpc: {{endpoint: 127.0.0.1:{grpc_port}}}\n"
                f"      http: {{endpoint: 127.0.0.1:{http_port}}}\n"
                "exporters:\n  debug: {verbosity: basic}\n"
                "service:\n  telemetry: {metrics: {level: none}}\n"
                "  pipelines: {traces: {receivers: [otlp], exporters: [debug]}}\n"
            )
        collector = subprocess.Popen(
            [COLLECTOR, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(http_port)
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{http_port}"
    metrics_port = free_port()
    daemon = subprocess.Popen(
        [GOTEL, "daemon", "--instrument", f"exe={work}/svc-*",
         "--metrics-addr", f"127.0.0.1:{metrics_port}", "--inject-traceparent", "off"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(metrics_port)
        idle_rss = status_kib(daemon.pid, "VmRSS")
        ports = []
        for i in range(args.processes):
            exe = os.path.join(work, f"svc-{i:02d}")
            shutil.copy(os.path.join(FIXTURES, fixtures[i % len(fixtures)]), exe)
            port = free_port()
            procs.append(subprocess.Popen(
                [exe, "-addr", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            ports.append(port)
            time.sleep(0.05)
        deadline = time.time() + 60
        while True:
            status = json.loads(http_get(f"http://127.0.0.1:{metrics_port}/status"))
            if len(status["processes"]) >= args.processes:
                break
            if time.time() > deadline:
                sys.exit(f"only {len(status['processes'])} of {args.processes} traced: {status}")
            time.sleep(0.1)
        delays = sorted(p["traced_after_ms"] for p in status["processes"])
        for port in ports:
            wait_port(port)
            for _ in range(args.requests):
                http_get(f"http://127.0.0.1:{port}/hello")
        time.sleep(1.5)
        status = json.loads(http_get(f"http://127.0.0.1:{metrics_port}/status"))
        rss = status_kib(daemon.pid, "VmRSS")
        hwm = status_kib(daemon.pid, "VmHWM")
        sent = args.processes * args.requests
        print(f"gotel daemon, {args.processes} processes ({len(status['executables'])} executables, "
              f"Go {', '.join(sorted({e['go_version'] for e in status['executables']}))})")
        print(f"start-to-traced: median {statistics.median(delays):.0f} ms, "
              f"max {max(delays)} ms, min {min(delays)} ms")
        print(f"agent RSS: idle {idle_rss / 1024:.1f} MiB, with {args.processes} processes "
              f"{rss / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB")
        c = status["counters"]
        print(f"requests sent {sent}, spans {c['spans']}, exported {c['spans_exported']}, "
              f"dropped {c['dropped_queue_full'] + c['dropped_export_failed']}, "
              f"ring buffer lost {c['ringbuf_lost']}")
    finally:
        for p in procs:
            p.kill()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
        if collector:
            collector.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
