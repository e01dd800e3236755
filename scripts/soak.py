#!/usr/bin/env python3
"""Soak: 20 Go processes traced by one `gotel daemon` at a steady rate for a while, with process
churn and two collector outages. Checks that the agent's footprint stays flat and that every
span is accounted for: received by the collector, or dropped and counted by gotel by reason.

The processes (fixtures copied under a private directory, some sharing one executable file):
  http   httpserver GET /hello                         1 span per request (server)
  chain  chain A GET /one, which calls B's /c          3 spans (A server, A client, B server)
  grpc   grpc -http GET /call, a unary call to -serve  3 spans (server, gRPC client, gRPC server)
  db     dbsql GET /query, one SELECT on PostgreSQL    2 spans (server, query); lib/pq, pgx's
         database/sql driver and pgxpool
  redis  redis GET /get, one GET on Redis              2 spans (server, command); go-redis v9, v8
Startup work (dbsql's CREATE TABLE and INSERT, redis's SET) makes root client spans; they are
traced or not depending on how fast the daemon attaches, so they are counted apart.

Timeline: everything starts and is traced; a warm-up with load and one round of churn; the
start sample (load paused, so no request is in flight); then --minutes of load at --rate
requests/s per unit, with --churn units restarted (SIGKILL or SIGTERM, alternately) every
--churn-every seconds and the collector stopped (gracefully) for --outages seconds at 30% and
65% of the run; the end sample once the load stopped and every span settled.

Accounting, per span: a request's spans are either written by the collector or counted by gotel
as dropped (queue full, export failed; implausible and ring buffer full too), whatever happened
to the collector while they were in flight: a span in the export batch being retried across an
outage arrives late, one that found the queue full is counted dropped. So the totals close
exactly: spans sent (requests answered x spans per request, plus the startup spans the collector
got) = spans received + spans gotel counted dropped. A unit is restarted only with its load
paused and no request in flight, and its load resumes once the daemon traces the new processes,
so no request straddles a target restart; near an outage only units whose processes make no
span as they start (http, chain, grpc) are restarted, so no startup span is ever dropped. Per workload, for the time the collector was up (from 20 s after an outage
to 8 s before the next), spans received = requests sent x spans per request, counting each span
in the window of its start time (a request straddling a window's edge may count or not: the
check allows for those, and says how many there were).

Footprint, start vs end, both with no request in flight (tolerances, and why):
  agent RSS          +4 MiB: the queue filled during an outage (2048 spans and the batch being
                     retried) costs about 1.5 MiB at the time and is handed back; a leak of 32
                     bytes a request, or 64 KiB a restarted process, over 20 minutes fails it
  open fds           +2: the OTLP exporters' kept-alive connections (spans, metrics) reopen
                     after an outage and may be open or not; BPF fds (maps, programs, links,
                     perf events) must be equal, as must BPF links and programs (bpftool)
  BPF map entries    per hash map, entries of the processes traced now: +8 (per-connection
                     entries such as a gRPC connection's last HTTP/2 stream come and go);
                     goroutine_ctx at most 256 entries per process (see PER_PROCESS_CAP);
                     entries of exited processes: none
  processes traced and executables attached: equal

Usage: scripts/soak.sh [--minutes 20] [--rate 8] ...   (as root; needs gotel built, the
fixtures, the collector, PostgreSQL, Redis and bpftool: scripts/test.sh's setup)
"""
import argparse
import array
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import (FIXTURES, HASH_MAPS, REPO, FileCollector, Postgres, Redis, bpf_footprint,
                      free_port, http_get, open_fds, status_kib, wait_port)

SPANS_PER_REQUEST = {"http": 1, "chain": 3, "grpc": 3, "db": 2, "redis": 2}
ADDR = ["-addr", "{addr}"]
PG = ADDR + ["-dsn", "{dsn}", "-driver"]
REDIS = ADDR + ["-redis", "{redis}", "-client"]
# The units: (workload, path requested, processes started in order: (executable, fixture,
# arguments)); {addr} is the process's own address, {prev} the one started before it. The same
# executable name is one file shared by the processes that run it (one set of probes).
UNITS = [
    ("http", "/hello", [("http-go126", "httpserver-go1.26", ADDR)]),
    ("http", "/hello", [("http-go126", "httpserver-go1.26", ADDR)]),
    ("http", "/hello", [("http-go122s", "httpserver-go1.22-stripped", ADDR)]),
    ("http", "/hello", [("http-go119", "httpserver-go1.19", ADDR)]),
    ("chain", "/one", [("chain-go126", "chain-go1.26", ADDR),
                       ("chain-go126", "chain-go1.26", ADDR + ["-next", "http://{prev}"])]),
    ("chain", "/one", [("chain-go124s", "chain-go1.24-stripped", ADDR),
                       ("chain-go127", "chain-go1.27", ADDR + ["-next", "http://{prev}"])]),
    ("grpc", "/call?name=soak", [
        ("grpc-v185", "grpc/grpc-v1.85.0", ["-serve", "{addr}"]),
        ("grpc-v185", "grpc/grpc-v1.85.0", ["-http", "{addr}", "-grpc-target", "{prev}"])]),
    ("grpc", "/call?name=soak", [
        ("grpc-v160s", "grpc/grpc-v1.60.1-stripped", ["-serve", "{addr}"]),
        ("grpc-v140", "grpc/grpc-v1.40.0", ["-http", "{addr}", "-grpc-target", "{prev}"])]),
    ("db", "/query", [("db-go126", "dbsql-go1.26", PG + ["postgres"])]),
    ("db", "/query", [("db-go126", "dbsql-go1.26", PG + ["pgx"])]),
    ("db", "/query", [("db-go122s", "dbsql-go1.22-stripped", PG + ["postgres"])]),
    ("db", "/query", [("db-go127", "dbsql-go1.27", PG + ["pgxpool"])]),
    ("redis", "/get", [("redis-go126", "redis-go1.26", REDIS + ["v9"])]),
    ("redis", "/get", [("redis-go126", "redis-go1.26", REDIS + ["v8"])]),
    ("redis", "/get", [("redis-go124s", "redis-go1.24-stripped", REDIS + ["v9"])]),
    ("redis", "/get", [("redis-go127", "redis-go1.27", REDIS + ["v9"])]),
]
# Workloads whose processes make spans as they start (dbsql's CREATE TABLE, redis's SET).
STARTUP_SPANS = {"db", "redis"}
# A goroutine's entry in goroutine_ctx stays after it ends, until its g struct is reused for
# another goroutine (which overwrites or deletes it): entries of a process grow to the size of
# its pool of g structs (about 66 for the db and redis services here, reached within minutes)
# and stay there. Judged per traced process against a cap instead of start vs end: a leak of an
# entry per request (8 a second) passes it within a minute.
PER_PROCESS_CAP = {"goroutine_ctx": 256}
# pid -> unit#index.process/start (for the report)
PID_NAMES = {}
WAIT = 30  # seconds for a process to listen, or to be traced
# Around an outage, where spans may be lost: the batch waiting to go (OTEL_BSP_SCHEDULE_DELAY,
# 5 s) before it, the retry backoff (at most 5 s) and the queue draining after.
LOSS_BEFORE, LOSS_AFTER = 8, 20


def log(msg):
    print(msg, flush=True)


class Unit:
    """Processes started together, and the load on the last of them."""

    def __init__(self, index, workload, path, procs, work, stores):
        self.index, self.workload, self.path, self.specs = index, workload, path, procs
        self.work, self.stores = work, stores
        self.ports = [free_port() for _ in procs]
        self.procs = []
        self.started = 0  # times started
        self.name = f"{workload}#{index}"

    def exe(self, name):
        return os.path.join(self.work, f"soak-{self.workload}-{name}")

    def start(self):
        postgres, redis = self.stores
        self.procs = []
        for i, (name, _, argv) in enumerate(self.specs):
            fill = {"addr": f"127.0.0.1:{self.ports[i]}", "dsn": postgres.dsn(),
                    "redis": redis.addr(),
                    "prev": f"127.0.0.1:{self.ports[i - 1]}" if i else ""}
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            self.procs.append(subprocess.Popen(
                [self.exe(name)] + [a.format(**fill) for a in argv], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(self.ports[i], WAIT)
            PID_NAMES[self.procs[-1].pid] = f"{self.name}.{i}/{self.started}"
        self.started += 1

    def stop(self, sig):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(sig)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def pids(self):
        return [p.pid for p in self.procs]


class Load(threading.Thread):
    """GET unit.path at `rate` requests/s over one kept-alive connection, until `until`
    (monotonic) or `stop`; at most rate x seconds x 1.1 requests. pause() returns once no
    request is in flight, with the connection closed."""

    def __init__(self, unit, rate, until, stop):
        super().__init__(daemon=True, name=f"load-{unit.name}")
        self.unit, self.rate, self.until, self.stop = unit, rate, until, stop
        self.limit = int(rate * (until - time.monotonic()) * 1.1) + 10
        self.ok = 0
        self.failed = []  # (time, error)
        self.times = array.array("d")  # start and end (epoch seconds) of each answered request
        self._pause = threading.Event()
        self._idle = threading.Event()

    def pause(self):
        self._idle.clear()
        self._pause.set()
        while not self._idle.wait(0.1):
            if not self.is_alive():
                return

    def resume(self):
        self._pause.clear()

    def run(self):
        conn = None
        port = self.unit.ports[-1]
        gap = 1.0 / self.rate
        next_at = time.monotonic()
        sent = 0
        while not self.stop.is_set() and sent < self.limit:
            if self._pause.is_set():
                if conn:
                    conn.close()
                    conn = None
                self._idle.set()
                while self._pause.is_set() and not self.stop.is_set():
                    time.sleep(0.05)
                next_at = time.monotonic()
                continue
            now = time.monotonic()
            if now >= self.until:
                break
            if next_at > now:
                time.sleep(min(next_at - now, 0.1))
                continue
            # A steady rate: no burst to catch up after a stall.
            next_at = max(next_at + gap, now - 1.0)
            sent += 1
            start = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", self.unit.path)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")
                self.ok += 1
                self.times.append(start)
                self.times.append(time.time())
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.failed.append((start, f"{type(e).__name__}: {e}"))
                if conn:
                    conn.close()
                conn = None
        if conn:
            conn.close()
        self._idle.set()


class Daemon:
    def __init__(self, gotel, work, collector, inject):
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint()
        env["OTEL_SERVICE_NAME"] = ""
        self.log_path = os.path.join(work, "gotel.log")
        self.log = open(self.log_path, "wb")
        argv = [gotel, "daemon", "--config", "/dev/null", "--instrument", f"exe={work}/soak-*",
                "--metrics-addr", f"127.0.0.1:{self.metrics_port}"]
        if inject:
            argv += ["--inject-traceparent", inject]
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log)
        wait_port(self.metrics_port, WAIT)

    def status(self):
        return json.loads(http_get(f"http://127.0.0.1:{self.metrics_port}/status"))

    def metrics(self):
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def wait_traced(self, pids, within=WAIT):
        deadline = time.time() + within
        while True:
            traced = {p["pid"] for p in self.status()["processes"]}
            if set(pids) <= traced:
                return
            if time.time() > deadline:
                raise RuntimeError(f"pids {sorted(set(pids) - traced)} not traced after {within} s"
                                   f" (see {self.log_path})")
            time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Received:
    """What the collector wrote, read as it grows: spans by workload (load spans by start time),
    startup spans, duplicates."""

    def __init__(self, collector):
        self.collector = collector
        self.seen = set()
        self.load = {w: array.array("d") for w in SPANS_PER_REQUEST}  # span start times
        self.startup = 0
        self.duplicates = 0
        self.strangers = 0  # from a service that is none of ours (should never happen)

    def read(self):
        for resource, span in self.collector.new_spans():
            key = (span.get("traceId"), span.get("spanId"))
            if key in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(key)
            service = str(resource.get("service.name", ""))
            parts = service.split("-")
            if len(parts) < 3 or parts[0] != "soak" or parts[1] not in self.load:
                self.strangers += 1
            elif not span.get("parentSpanId") and span.get("kind") != 2:  # a root, not SERVER
                self.startup += 1
            else:
                self.load[parts[1]].append(int(span["startTimeUnixNano"]) / 1e9)
        return self

    def total(self):
        return len(self.seen)


def descendants(pid):
    """Every process below `pid`, each before its own children."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            out.append(child)
            out += descendants(child)
    return out


def settled_fds(pid):
    """Open fds by kind once their count holds still for 300 ms (at most 5 s): a connection of
    ours to the daemon's endpoints may still be closing on its side when we look."""
    deadline = time.time() + 5
    last = open_fds(pid)[0]
    while True:
        time.sleep(0.3)
        now = open_fds(pid)[0]
        if sum(now.values()) == sum(last.values()) or time.time() > deadline:
            return now
        last = now


# Shared maps whose keys start with the pid (struct goroutine_key, or the pid alone).
PID_KEYED = {"goroutine_ctx", "server_calls", "db_calls", "matched_routes", "client_pids",
             "traced_pids"}


def sample(daemon, quiet=False):
    pid = daemon.proc.pid
    fds = settled_fds(pid) if quiet else open_fds(pid)[0]
    bpf = bpf_footprint(pid, PID_KEYED)
    status = daemon.status()
    traced = {p["pid"] for p in status["processes"]}
    for m in bpf["maps"].values():
        if "pids" in m:  # entries of processes traced now, and of others (exited)
            m["stale"] = sum(n for p, n in m["pids"].items() if p not in traced)
    return {"t": time.time(), "rss_kib": status_kib(pid, "VmRSS"), "fds": fds,
            "fds_total": sum(fds.values()),
            "fds_bpf": sum(v for k, v in fds.items() if k.startswith("bpf") or k == "perf_event"),
            "bpf": bpf, "map_entries": sum(m["entries"] or 0 for m in bpf["maps"].values()
                                           if m["type"] in HASH_MAPS),
            "stale_entries": sum(m.get("stale", 0) for m in bpf["maps"].values()),
            "traced": traced, "processes": len(status["processes"]), "executables": len(status["executables"]),
            "counters": status["counters"]}


def drops(counters):
    return (counters["dropped_queue_full"] + counters["dropped_export_failed"]
            + counters["dropped_implausible"] + counters["ringbuf_lost"])


class Soak:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="gotel-soak-")
        os.chmod(self.work, 0o755)
        self.stores = None
        self.collector = None
        self.daemon = None
        self.units = []
        self.loads = []
        self.stop_load = threading.Event()
        self.outages = []  # (stopped at, started at), epoch seconds
        self.churned = 0
        self.counters = []  # (epoch, /status counters), polled through the run
        self.failures = []

    # Setup and teardown

    def setup(self):
        a = self.args
        for _, _, procs in UNITS:
            for name, fixture, _ in procs:
                if not os.path.exists(os.path.join(FIXTURES, fixture)):
                    sys.exit(f"fixture {fixture} missing in {FIXTURES}: build the fixtures "
                             "(scripts/test.sh's steps)")
        log(f"soak: {len(UNITS)} units, {sum(len(p) for _, _, p in UNITS)} processes, "
            f"{a.rate} requests/s each, {a.minutes} min; work dir {self.work}")
        # One at a time, so an interruption in between leaves nothing unknown to cleanup().
        self.stores = []
        self.stores.append(Postgres())
        self.stores.append(Redis())
        self.collector = FileCollector(self.work)
        self.collector.start()
        self.daemon = Daemon(a.gotel, self.work, self.collector, a.inject)
        for i, (workload, path, procs) in enumerate(UNITS):
            unit = Unit(i, workload, path, procs, self.work, self.stores)
            for name, fixture, _ in procs:
                if not os.path.exists(unit.exe(name)):
                    shutil.copy(os.path.join(FIXTURES, fixture), unit.exe(name))
            self.units.append(unit)
        t = time.time()
        for unit in self.units:
            unit.start()
        self.daemon.wait_traced([p for u in self.units for p in u.pids()], 60)
        s = self.daemon.status()
        log(f"soak: {len(s['processes'])} processes of {len(s['executables'])} executables "
            f"traced in {time.time() - t:.1f} s")

    def cleanup(self):
        self.stop_load.set()
        for unit in self.units:
            unit.stop(signal.SIGKILL)
        if self.daemon:
            self.daemon.stop()
        if self.collector:
            self.collector.close()
        for store in self.stores or ():
            try:
                store.stop()
            except Exception as e:  # noqa: BLE001 - clean up the rest regardless
                log(f"soak: stopping {type(store).__name__}: {e}")
        # Whatever an interruption left running (a server caught starting, say).
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.args.keep:
            log(f"soak: kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # The run

    def poll(self):
        self.counters.append((time.time(), self.daemon.status()["counters"]))

    def pause_all(self):
        for load in self.loads:
            load.pause()

    def resume_all(self):
        for load in self.loads:
            load.resume()

    def restart(self, unit, sig):
        load = self.loads[unit.index]
        load.pause()
        unit.stop(sig)
        unit.start()
        self.daemon.wait_traced(unit.pids())
        load.resume()
        self.churned += 1

    def quiet_sample(self, label):
        """A sample with no request in flight."""
        self.pause_all()
        time.sleep(1.0)
        s = sample(self.daemon, quiet=True)
        self.resume_all()
        s["label"] = label
        return s

    def run(self):
        a = self.args
        warmup = a.warmup
        duration = a.minutes * 60
        until = time.monotonic() + warmup + duration
        self.loads = [Load(u, a.rate, until, self.stop_load) for u in self.units]
        for load in self.loads:
            load.start()
        self.received = Received(self.collector)
        # Warm-up: the first requests, one round of churn and the first scrapes raise the
        # allocator's high-water marks; flatness is measured from the end of it.
        time.sleep(warmup / 2)
        # Two pools of units, taken in turn: those whose processes make spans as they start
        # are restarted away from outages only.
        pools = [[u for u in self.units if u.workload in STARTUP_SPANS],
                 [u for u in self.units if u.workload not in STARTUP_SPANS]]
        turn = [0, 0]

        def next_of(pool):
            unit = pools[pool][turn[pool] % len(pools[pool])]
            turn[pool] += 1
            return unit

        for pool in (0, 1):
            self.restart(next_of(pool), signal.SIGKILL)
        time.sleep(max(0.0, warmup / 2 - 2))
        start = self.quiet_sample("start")
        self.samples = [start]
        t0 = time.time()
        self.t0 = t0
        self.log_progress(start)
        plan = sorted([(t0 + duration * at, "outage", seconds)
                       for at, seconds in zip((0.30, 0.65), a.outages)]
                      + [(t0 + k * a.churn_every, "churn", 0)
                         for k in range(1, int(duration // a.churn_every) + 1)],
                      key=lambda e: e[:2])
        next_progress = t0 + a.progress_every
        sig = signal.SIGTERM
        while time.time() < t0 + duration:
            now = time.time()
            if plan and now >= plan[0][0]:
                _, what, seconds = plan.pop(0)
                if what == "outage":
                    self.outage(seconds)
                else:
                    # Near an outage only units whose start makes no span are restarted.
                    near = self.near_outage(now, plan)
                    for i in range(a.churn):
                        self.restart(next_of(1 if near else i % 2), sig)
                        sig = signal.SIGKILL if sig == signal.SIGTERM else signal.SIGTERM
                continue
            if now >= next_progress:
                s = sample(self.daemon)
                s["label"] = f"{(now - t0) / 60:.1f} min"
                self.samples.append(s)
                self.log_progress(s)
                next_progress += a.progress_every
            self.poll()
            time.sleep(0.5)
        self.stop_load.set()
        for load in self.loads:
            load.join(timeout=30)
        self.t_end = time.time()
        self.settle()
        end = sample(self.daemon, quiet=True)
        end["label"] = "end"
        self.samples.append(end)
        self.log_progress(end)

    def near_outage(self, now, plan):
        """Whether a unit restarted now would start within an outage's loss window."""
        upcoming = [t for t, what, _ in plan if what == "outage"]
        past = [t for _, t in self.outages]
        return (any(t - now < LOSS_BEFORE + 5 for t in upcoming)
                or any(now - t < LOSS_AFTER for t in past)
                or not self.collector.up())

    def outage(self, seconds):
        log(f"[{self.elapsed()}] collector stopped for {seconds} s")
        self.collector.stop()
        down = time.time()
        end = down + seconds
        while time.time() < end:
            self.poll()
            time.sleep(0.5)
        self.collector.start()
        self.outages.append((down, time.time()))
        c = self.daemon.status()["counters"]
        log(f"[{self.elapsed()}] collector back; dropped so far: queue full "
            f"{c['dropped_queue_full']}, export failed {c['dropped_export_failed']}")

    def settle(self):
        """Waits until gotel has exported or counted every span it assembled, and the
        collector wrote every span gotel exported."""
        deadline = time.time() + 60
        while True:
            c = self.daemon.status()["counters"]
            self.received.read()
            done = c["spans"] == c["spans_exported"] + c["dropped_queue_full"] + \
                c["dropped_export_failed"] and self.received.total() >= c["spans_exported"]
            if done or time.time() > deadline:
                time.sleep(1.5)  # anything more (a duplicate, a late span) would show now
                self.received.read()
                self.poll()
                return
            time.sleep(0.5)

    def elapsed(self):
        s = int(time.time() - getattr(self, "t0", time.time()))
        return f"{s // 60:2d}:{s % 60:02d}"

    def requests(self):
        return sum(load.ok for load in self.loads), sum(len(load.failed) for load in self.loads)

    def log_progress(self, s):
        self.received.read()
        ok, failed = self.requests()
        c = s["counters"]
        log(f"[{self.elapsed()}] {s['label']:>7}: requests {ok} ({failed} failed), spans "
            f"{c['spans']} assembled, {c['spans_exported']} exported, "
            f"{self.received.total()} received, {drops(c)} dropped; RSS "
            f"{s['rss_kib'] / 1024:.1f} MiB, fds {s['fds_total']}, map entries "
            f"{s['map_entries']} ({s['stale_entries']} of exited processes), links {s['bpf']['links']}, progs {s['bpf']['progs']}; "
            f"{s['processes']} processes traced; collector {'up' if self.collector.up() else 'DOWN'}")

    # The checks

    def check(self, name, ok, detail):
        log(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        if not ok:
            self.failures.append(name)

    def report(self):
        a = self.args
        start, end = self.samples[0], self.samples[-1]
        mib = lambda s: round(s["rss_kib"] / 1024, 1)
        # (metric, value of a sample, tolerance, whether end vs start is within it)
        rows = [("agent RSS (MiB)", mib, f"+{a.rss_slack_mib} MiB",
                 lambda v0, v1: v1 <= v0 + a.rss_slack_mib),
                ("open fds", lambda s: s["fds_total"], "+2", lambda v0, v1: v1 <= v0 + 2),
                ("  of which BPF maps, progs, links, perf", lambda s: s["fds_bpf"], "equal", None),
                ("BPF links (bpftool link show)", lambda s: s["bpf"]["links"], "equal", None),
                ("BPF programs (bpftool prog show)", lambda s: s["bpf"]["progs"], "equal", None),
                ("BPF hash map entries, total", lambda s: s["map_entries"], "per map", "maps"),
                ("  of which of exited processes", lambda s: s["stale_entries"], "0",
                 lambda v0, v1: v1 == 0),
                ("processes traced", lambda s: s["processes"], "equal", None),
                ("executables attached", lambda s: s["executables"], "equal", None)]
        by_name = lambda s: {m["name"]: m for m in s["bpf"]["maps"].values()}
        m0, m1 = by_name(start), by_name(end)
        map_rows = []
        for name in sorted(set(m0) | set(m1)):
            info = m0.get(name) or m1[name]
            if info["type"] not in HASH_MAPS:
                continue
            label = f"  {name} ({info['type']}, max {info['max_entries']})"
            if name in PER_PROCESS_CAP:
                cap = PER_PROCESS_CAP[name]
                peak = lambda s, n=name: max((c for p, c in by_name(s).get(n, {}).get(
                    "pids", {}).items() if p in s["traced"]), default=0)
                map_rows.append((label + ", most of one process", peak, f"<= {cap}",
                                 lambda v0, v1, cap=cap: v1 <= cap))
                continue
            # Entries of the processes traced now: those of exited ones are the row below.
            live = lambda s, n=name: (by_name(s).get(n, {}).get("entries") or 0) - \
                by_name(s).get(n, {}).get("stale", 0)
            map_rows.append((label, live, f"+{a.map_slack}",
                             lambda v0, v1: v1 <= v0 + a.map_slack))
        log("\nfootprint: start and end with no request in flight, max over all samples")
        log(f"{'metric':58} {'start':>7} {'end':>7} {'max':>7}  {'tolerance':10} result")
        results = {}
        for name, get, tolerance, ok in rows[:6] + map_rows + rows[6:]:
            v0, v1 = get(start), get(end)
            hi = max(get(s) for s in self.samples)
            if ok == "maps":  # a summary row: its maps are judged one by one
                passed = all(r[3](r[1](start), r[1](end)) for r in map_rows)
            else:
                passed = v1 == v0 if ok is None else ok(v0, v1)
            results[name.strip()] = passed
            log(f"{name:58} {v0:>7} {v1:>7} {hi:>7}  {tolerance:10} "
                f"{'ok' if passed else 'NOT FLAT'}")
        log("")
        rss0, rss1 = mib(start), mib(end)
        self.check("agent RSS flat", results["agent RSS (MiB)"],
                   f"{rss0} -> {rss1} MiB (tolerance +{a.rss_slack_mib} MiB)")
        self.check("open fds flat", results["open fds"] and results[
            "of which BPF maps, progs, links, perf"],
                   f"{start['fds_total']} -> {end['fds_total']}, BPF {start['fds_bpf']} -> "
                   f"{end['fds_bpf']} ({start['fds']} -> {end['fds']})")
        self.check("BPF links and programs equal", results["BPF links (bpftool link show)"]
                   and results["BPF programs (bpftool prog show)"],
                   f"links {start['bpf']['links']} -> {end['bpf']['links']} "
                   f"({end['bpf']['links_by_type']}), programs {start['bpf']['progs']} -> "
                   f"{end['bpf']['progs']}")
        grown = [f"{r[0].strip()} {r[1](start)} -> {r[1](end)}" for r in map_rows
                 if not r[3](r[1](start), r[1](end))]
        self.check("BPF map entries of traced processes flat", not grown,
                   f"every hash map within +{a.map_slack}, goroutine_ctx <= "
                   f"{PER_PROCESS_CAP['goroutine_ctx']} a process" if not grown
                   else "grew: " + "; ".join(grown))
        for r in map_rows:
            name = r[0].split()[0]
            if r[3](r[1](start), r[1](end)) and name not in PER_PROCESS_CAP or \
                    "pids" not in m1.get(name, {}):
                continue
            p0, p1 = m0.get(name, {}).get("pids", {}), m1[name]["pids"]
            log(f"  {name} per traced process, start -> end: " + ", ".join(
                f"{PID_NAMES.get(p, p)} {p0.get(p, '-')} -> {n}" for p, n in sorted(p1.items())
                if p in end["traced"]))
        stale = {m["name"]: m["stale"] for m in end["bpf"]["maps"].values() if m.get("stale")}
        self.check("no BPF map entries of exited processes", not stale,
                   "none left" if not stale else
                   f"{sum(stale.values())} left by {self.churned} unit restarts: {stale}")
        n = sum(len(u.specs) for u in self.units)
        self.check("every process traced", start["processes"] == end["processes"] == n
                   and results["executables attached"],
                   f"{start['processes']} -> {end['processes']} of {n}, executables "
                   f"{start['executables']} -> {end['executables']}; "
                   f"{self.churned} unit restarts")
        self.account()
        verdict = "FAILED: " + ", ".join(self.failures) if self.failures else "passed"
        log(f"\nsoak: {verdict}")
        return not self.failures

    def account(self):
        r = self.received.read()
        c = self.counters[-1][1]
        log("\nspans by workload")
        log(f"{'workload':9} {'procs':>5} {'requests':>9} {'spans/req':>9} {'expected':>9} "
            f"{'received':>9}  {'up-window expected':>18} {'received':>9} {'edge':>5}")
        sent = 0
        window_problems = []
        windows = self.up_windows()
        for w, spp in SPANS_PER_REQUEST.items():
            loads = [l for l in self.loads if l.unit.workload == w]
            ok = sum(l.ok for l in loads)
            sent += ok * spp
            # Requests inside an up-window, and those straddling one of its edges.
            inside = edge = 0
            for l in loads:
                t = l.times
                for i in range(0, len(t), 2):
                    for lo, hi in windows:
                        if lo <= t[i] and t[i + 1] <= hi:
                            inside += 1
                        elif t[i] < lo <= t[i + 1] or t[i] <= hi < t[i + 1]:
                            edge += 1
            got = sum(1 for s in r.load[w] if any(lo <= s <= hi for lo, hi in windows))
            want = inside * spp
            if not want <= got <= want + edge * spp:
                window_problems.append(f"{w}: {got} received for {want} expected (+{edge} edge)")
            log(f"{w:9} {sum(len(l.unit.specs) for l in loads):>5} {ok:>9} {spp:>9} "
                f"{ok * spp:>9} {len(r.load[w]):>9}  {want:>18} {got:>9} {edge:>5}")
        ok, failed = self.requests()
        received = r.total()
        dropped = drops(c)
        log(f"\nspans sent {sent} (requests answered x spans per request) + {r.startup} startup "
            f"spans = {sent + r.startup}; received {received} (unique; {r.duplicates} duplicates)"
            f"; dropped by gotel: queue full {c['dropped_queue_full']}, export failed "
            f"{c['dropped_export_failed']}, implausible {c['dropped_implausible']}, ring buffer "
            f"full {c['ringbuf_lost']}")
        log(f"gotel: {c['spans']} assembled, {c['spans_exported']} exported")
        first = [f for l in self.loads for f in l.failed][:3]
        self.check("every request answered", failed == 0, f"{ok} answered, {failed} failed"
                   + (f", e.g. {first}" if first else ""))
        self.check("accounting closes", sent + r.startup == received + dropped,
                   f"sent {sent + r.startup} = received {received} + dropped {dropped}"
                   if sent + r.startup == received + dropped else
                   f"sent {sent + r.startup} != received {received} + dropped {dropped} "
                   f"(difference {sent + r.startup - received - dropped})")
        self.check("gotel's own books close", c["spans"] == c["spans_exported"] + dropped - (
            c["dropped_implausible"] + c["ringbuf_lost"]) and c["spans_exported"] == received,
                   f"assembled {c['spans']} = exported {c['spans_exported']} + queue full "
                   f"{c['dropped_queue_full']} + export failed {c['dropped_export_failed']}; "
                   f"exported {c['spans_exported']}, received {received}")
        self.check("nothing lost in the ring buffer, nothing implausible",
                   c["ringbuf_lost"] == 0 and c["dropped_implausible"] == 0,
                   f"ring buffer full {c['ringbuf_lost']}, implausible {c['dropped_implausible']}")
        self.check("no span from elsewhere", r.strangers == 0, f"{r.strangers} spans of "
                   "services not started by the soak")
        self.check("spans received = requests x spans while the collector was up",
                   not window_problems, "every workload, windows " + ", ".join(
                       f"{lo - self.t0:.0f}-{hi - self.t0:.0f} s" for lo, hi in windows)
                   if not window_problems else "; ".join(window_problems))
        # Drops only during outages, and each outage counted some (the queue overflowed).
        per_outage = []
        outside = 0
        prev_t, prev = self.counters[0]
        for t, cur in self.counters[1:]:
            d = drops(cur) - drops(prev)
            if d and not any(lo - LOSS_BEFORE <= t and prev_t <= hi + LOSS_AFTER
                             for lo, hi in self.outages):
                outside += d
            prev_t, prev = t, cur
        for lo, hi in self.outages:
            before = [c for t, c in self.counters if t <= lo - LOSS_BEFORE] or [self.counters[0][1]]
            after = [c for t, c in self.counters if t >= hi + LOSS_AFTER] or [self.counters[-1][1]]
            b, e = before[-1], after[0]
            per_outage.append(f"{hi - lo:.0f} s down: queue full "
                              f"{e['dropped_queue_full'] - b['dropped_queue_full']}, export failed "
                              f"{e['dropped_export_failed'] - b['dropped_export_failed']}")
        self.check("drops only while the collector was down", outside == 0,
                   f"{outside} dropped outside the outages; " + "; ".join(per_outage))

    def up_windows(self):
        """(from, to) epoch seconds where the collector was up and no span could be lost."""
        edges = [self.t0]
        for lo, hi in self.outages:
            edges += [lo - LOSS_BEFORE, hi + LOSS_AFTER]
        edges.append(self.t_end)
        return [(lo, hi) for lo, hi in zip(edges[::2], edges[1::2]) if hi - lo > 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20, help="of load, after the warm-up")
    ap.add_argument("--rate", type=float, default=8, help="requests/s per unit (16 units)")
    ap.add_argument("--warmup", type=float, help="seconds before the start sample "
                    "(default 30; 10 for a run under 10 minutes)")
    ap.add_argument("--churn-every", type=float, help="seconds between churn rounds "
                    "(default 60; 15 for a run under 10 minutes)")
    ap.add_argument("--churn", type=int, default=3, help="units restarted per round")
    ap.add_argument("--outages", help="seconds the collector is down, the first time and the "
                    "second (default 20,40: the second past the exporter's 30 s retry budget; "
                    "10,12 for a run under 10 minutes)")
    ap.add_argument("--progress-every", type=float, default=30)
    ap.add_argument("--rss-slack-mib", type=float, default=4)
    ap.add_argument("--map-slack", type=int, default=8)
    ap.add_argument("--inject", help="--inject-traceparent for the daemon (default: its own)")
    ap.add_argument("--gotel", default=None, help="gotel binary (default: the release build, "
                    "else the debug build)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, spans)")
    args = ap.parse_args()
    short = args.minutes < 10
    args.warmup = args.warmup if args.warmup is not None else (10 if short else 30)
    args.churn_every = args.churn_every or (15 if short else 60)
    args.outages = [float(x) for x in (args.outages or ("10,12" if short else "20,40")).split(",")]
    if os.geteuid() != 0:
        sys.exit("soak: run as root (the daemon attaches uprobes; bpftool reads the kernel's maps)")
    if args.gotel is None:
        for build in ("release", "debug"):
            args.gotel = os.path.join(REPO, "target", build, "gotel")
            if os.path.exists(args.gotel):
                break
    if not os.path.exists(args.gotel):
        sys.exit(f"no gotel at {args.gotel}: cargo build --release -p gotel")
    if shutil.which("bpftool") is None:
        sys.exit("no bpftool: run scripts/setup.sh")
    soak = Soak(args)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    passed = False
    try:
        soak.setup()
        soak.run()
        passed = soak.report()
    except KeyboardInterrupt:
        log("\nsoak: interrupted; cleaning up")
    finally:
        soak.cleanup()
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
