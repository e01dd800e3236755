#!/usr/bin/env python3
"""What metrics cost the agent in memory: gotel's RSS with one route against 1,000 distinct
routes, side by side in one run.

The httpserver fixture (Go 1.26) serves GET /route{N}/{id} for N below --routes (1,000); gotel
runs it with metrics on (--prometheus-addr, nothing else exported: spans go to /dev/null).
Each configuration gets the same number of requests: "one route" sends them all to
/route0/{id}, "1000 routes" spreads them over every route (each a series of
http.server.request.duration, and of the service graph none: they come from the user). The
report gives gotel's RSS after attaching, after the requests, after one scrape of /metrics,
its peak, and the series the Prometheus endpoint shows.

Needs root, the release build and the fixtures (scripts/build-fixtures.sh).
Usage: scripts/bench-metrics-memory.py [--routes N] [--requests N]
"""
import argparse, os, subprocess, sys, time

from benchlib import REPO, free_port, http_get, status_kib, wait_port

GOTEL = os.path.join(REPO, "target/release/gotel")
FIXTURE = os.path.join(REPO, "target/fixtures/httpserver-go1.26")


def get(port, path):
    return http_get(f"http://127.0.0.1:{port}{path}", timeout=10)


def run(routes, spread, requests):
    port, prom = free_port(), free_port()
    gotel = subprocess.Popen(
        [GOTEL, "run", "--prometheus-addr", f"127.0.0.1:{prom}", "--", FIXTURE,
         "-addr", f"127.0.0.1:{port}", "-routes", str(routes)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        wait_port(prom)
        time.sleep(0.5)
        attached = status_kib(gotel.pid, "VmRSS")
        for i in range(requests):
            n = i % routes if spread else 0
            get(port, f"/route{n}/{i}")
        time.sleep(0.5)  # the agent reads what is left in the ring buffer
        counted_rss = status_kib(gotel.pid, "VmRSS")
        text = get(prom, "/metrics")
        time.sleep(0.3)  # the endpoint hands the exposition's memory back after responding
        series = sum(1 for l in text.splitlines()
                     if l.startswith("http_server_request_duration_seconds_count{"))
        counted = sum(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines()
                      if l.startswith("http_server_request_duration_seconds_count{"))
        return {"attached": attached, "after": counted_rss,
                "scraped": status_kib(gotel.pid, "VmRSS"),
                "peak": status_kib(gotel.pid, "VmHWM"), "series": series, "counted": counted,
                "exposition_kib": len(text) / 1024}
    finally:
        gotel.terminate()
        gotel.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=5000)
    args = ap.parse_args()
    for f in (GOTEL, FIXTURE):
        if not os.path.exists(f):
            sys.exit(f"missing {f}: cargo build --release; scripts/build-fixtures.sh")
    rows = [("one route", run(args.routes, False, args.requests)),
            (f"{args.routes} routes", run(args.routes, True, args.requests))]
    print(f"\n{args.requests} requests each; gotel's memory in MiB")
    print("configuration   RSS attached  RSS after  after a scrape  peak  series  requests counted"
          "  /metrics KiB")
    for name, r in rows:
        print(f"{name:15} {r['attached'] / 1024:12.1f} {r['after'] / 1024:10.1f} "
              f"{r['scraped'] / 1024:15.1f} "
              f"{r['peak'] / 1024:5.1f} {r['series']:7} {r['counted']:17} "
              f"{r['exposition_kib']:13.0f}")
    extra = (rows[1][1]["after"] - rows[0][1]["after"]) / 1024
    scraped = (rows[1][1]["scraped"] - rows[0][1]["scraped"]) / 1024
    print(f"\n{args.routes} routes cost {extra:+.1f} MiB of RSS over one route "
          f"({scraped:+.1f} MiB once scraped)")


if __name__ == "__main__":
    main()
