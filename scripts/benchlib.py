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
