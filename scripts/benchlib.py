"""What the benchmark scripts share: ports on loopback and a process's memory from /proc."""
import os
import socket
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on {port}")


def status_kib(pid, key):
    """A kB figure of /proc/PID/status: VmRSS, VmHWM (peak RSS)..."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Postgres:
    """A private PostgreSQL server on a loopback port (trust authentication for the user
    gotel), run as the postgres user Debian's package made; stop() ends and removes it."""

    def __init__(self):
        import glob, shutil, subprocess, tempfile
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
        if not bins:
            sys.exit("no PostgreSQL server in /usr/lib/postgresql: run scripts/setup.sh")
        bindir = os.path.dirname(bins[-1])
        # Its own directory: the postgres user cannot enter the benchmark's private one.
        self.dir = tempfile.mkdtemp(prefix="gotel-bench-postgres-")
        shutil.chown(self.dir, "postgres", "postgres")
        as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        data = os.path.join(self.dir, "data")
        subprocess.run(as_pg + [os.path.join(bindir, "initdb"), "--auth=trust", "--username=gotel",
                                "--no-sync", "-D", data], check=True, stdout=subprocess.DEVNULL)
        self.port = free_port()
        self.proc = subprocess.Popen(
            as_pg + [os.path.join(bindir, "postgres"), "-D", data, "-p", str(self.port),
                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                     "-c", "fsync=off", "-c", "max_connections=300"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 30)

    def dsn(self):
        return f"postgres://gotel@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def stop(self):
        import shutil, signal
        self.proc.send_signal(signal.SIGINT)  # fast shutdown: backends end too
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """A private Redis server on a loopback port persisting nothing; stop() ends it."""

    def __init__(self):
        import subprocess, tempfile
        self.dir = tempfile.mkdtemp(prefix="gotel-bench-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 30)

    def addr(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        import shutil
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def http_get(url, timeout=5):
    """The body of GET url, as text."""
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


COLLECTOR = os.environ.get("GOTEL_COLLECTOR", os.path.join(REPO, "target/tools/otelcol-gotel"))
FIXTURES = os.environ.get("GOTEL_FIXTURES_DIR", os.path.join(REPO, "target/fixtures"))


class FileCollector:
    """The pinned OpenTelemetry Collector (scripts/build-collector.sh) on fixed loopback ports,
    writing the spans it receives as OTLP JSON lines (metrics to a file of their own). It can be
    stopped and started again, an outage: each run writes a file of its own, so nothing an
    earlier run wrote is lost, and new_spans() reads what arrived since it last looked."""

    def __init__(self, work, binary=COLLECTOR):
        if not os.path.exists(binary):
            sys.exit(f"no collector at {binary}: run scripts/build-collector.sh")
        self.binary, self.work = binary, work
        self.http_port, self.grpc_port = free_port(), free_port()
        self.files = []  # one per run, in order
        self.offsets = {}  # file -> bytes already read
        self.proc = None
        self.log = open(os.path.join(work, "collector.log"), "ab")

    def endpoint(self):
        """The OTLP/HTTP base endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self):
        import subprocess
        run = len(self.files)
        spans = os.path.join(self.work, f"spans-{run}.jsonl")
        cfg = os.path.join(self.work, f"collector-{run}.yaml")
        with open(cfg, "w") as f:
            f.write(f"""receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: 127.0.0.1:{self.grpc_port} }}
      http: {{ endpoint: 127.0.0.1:{self.http_port} }}
exporters:
  file: {{ path: {spans}, flush_interval: 100ms }}
  file/metrics: {{ path: {os.path.join(self.work, f"metrics-{run}.jsonl")}, flush_interval: 1s }}
service:
  telemetry: {{ metrics: {{ level: none }}, logs: {{ level: warn }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [file] }}
    metrics: {{ receivers: [otlp], exporters: [file/metrics] }}
""")
        self.files.append(spans)
        self.proc = subprocess.Popen([self.binary, "--config", cfg], stdout=self.log,
                                     stderr=self.log)
        wait_port(self.http_port, 30)

    def stop(self):
        """A graceful stop (SIGTERM): the receivers close, then the exporters write out what
        they hold, so every request the collector answered is in its file."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def up(self):
        return self.proc is not None and self.proc.poll() is None

    def new_spans(self):
        """(resource attributes, span) of every span written since the last call; a line the
        collector is still writing is left for the next."""
        import json
        for path in self.files:
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            self.offsets[path] = self.offsets.get(path, 0) + end
            for line in data[:end].splitlines():
                if not line.strip():
                    continue
                for rs in json.loads(line).get("resourceSpans", []):
                    attrs = {a["key"]: next(iter(a["value"].values()), None)
                             for a in rs.get("resource", {}).get("attributes", [])}
                    for ss in rs.get("scopeSpans", []):
                        for span in ss.get("spans", []):
                            yield attrs, span

    def close(self):
        self.stop()
        self.log.close()


def open_fds(pid):
    """A process's open fds by kind (bpf-map, bpf-prog, bpf_link, perf_event, socket, file,
    ...), and the kernel ids of its BPF objects from /proc/PID/fdinfo: (counts, ids) with ids
    {"map": set, "prog": set, "link": set}."""
    counts, ids = {}, {"map": set(), "prog": set(), "link": set()}
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed while we looked
        if target.startswith("anon_inode:"):
            kind = target[len("anon_inode:"):].strip("[]")
        elif target.startswith("socket:"):
            kind = "socket"
        elif target.startswith("pipe:"):
            kind = "pipe"
        else:
            kind = "file"
        counts[kind] = counts.get(kind, 0) + 1
        key = {"bpf-map": ("map", "map_id:"), "bpf-prog": ("prog", "prog_id:"),
               "bpf_link": ("link", "link_id:")}.get(kind)
        if key:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    for line in f:
                        if line.startswith(key[1]):
                            ids[key[0]].add(int(line.split()[1]))
            except OSError:
                pass
    return counts, ids


def bpftool(*args):
    import json, subprocess
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bpftool {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout or "null")


def prog_runs(pid):
    """{program name: (runs, ns run)} of the BPF programs process `pid` holds, as the kernel
    counts them while kernel.bpf_stats_enabled is 1 (see BpfStats)."""
    runs = {}
    for p in held_programs(pid)[2]:
        cnt, ns = runs.get(p.get("name", "?"), (0, 0))
        runs[p.get("name", "?")] = (cnt + p.get("run_cnt", 0), ns + p.get("run_time_ns", 0))
    return runs


def held_programs(pid):
    """(the ids of the BPF objects process `pid` has open, by kind; the links it holds and any
    other link of its programs; the programs it holds or those links attach, as bpftool shows
    them): the links keep programs it may have closed."""
    _, ids = open_fds(pid)
    links = [link for link in bpftool("link", "show") or []
             if link["id"] in ids["link"] or link.get("prog_id") in ids["prog"]]
    prog_ids = ids["prog"] | {link["prog_id"] for link in links if "prog_id" in link}
    return ids, links, [p for p in bpftool("prog", "show") or [] if p["id"] in prog_ids]


class BpfStats:
    """kernel.bpf_stats_enabled set to 1 for the `with` block (the kernel then counts each
    program's runs and run time, at the cost of two clock reads a run), as it was after."""
    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __enter__(self):
        self.was = open(self.PATH).read().strip()
        open(self.PATH, "w").write("1")
        return self

    def __exit__(self, *exc):
        open(self.PATH, "w").write(self.was)


# Maps whose entries come and go; the others hold max_entries always (arrays) or cannot be
# listed from user space (ring buffers).
HASH_MAPS = {"hash", "lru_hash", "percpu_hash", "lru_percpu_hash", "sockhash", "hash_of_maps"}


def bpf_footprint(pid, pid_keyed=()):
    """The BPF objects process `pid` holds, as the kernel reports them through bpftool: the
    links it holds (and any other link of its programs), the programs they attach and, per
    map, name, type and entries (None where bpftool cannot list them). For the maps named in
    `pid_keyed`, whose keys start with a pid (u32), also the entries per pid."""
    ids, links, progs = held_programs(pid)
    maps = {}
    for m in bpftool("map", "show") or []:
        if m["id"] not in ids["map"]:
            continue
        info = {"name": m.get("name", "?"), "type": m["type"], "entries": m.get("max_entries"),
                "max_entries": m.get("max_entries")}
        if m["type"] in HASH_MAPS:
            try:
                dump = bpftool("map", "dump", "id", str(m["id"])) or []
                info["entries"] = len(dump)
            except RuntimeError:
                dump, info["entries"] = [], None
            if info["name"] in pid_keyed:
                info["pids"] = _count(_key_pid(e) for e in dump)
        elif m["type"] == "ringbuf":
            info["entries"] = None
        maps[m["id"]] = info
    return {"maps": maps, "progs": len(progs), "links": len(links),
            "links_by_type": _count(LINK_TYPES.get(link.get("type"), link.get("type", "?"))
                                    for link in links)}


# Link types newer than bpftool's names for them (it prints the number).
LINK_TYPES = {10: "netfilter", 11: "tcx", 12: "uprobe_multi", 13: "netkit", 14: "sockmap"}


def _key_pid(entry):
    """The pid a map entry's key starts with (a u32 in host order, little-endian here)."""
    key = entry.get("key")
    if isinstance(key, list) and len(key) >= 4:
        return int.from_bytes(bytes(int(b, 16) for b in key[:4]), "little")
    return None


def _count(items):
    out = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out
