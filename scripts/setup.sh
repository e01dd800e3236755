#!/usr/bin/env bash
# Installs everything gotel's build, demo and tests need on a fresh Debian bookworm machine:
# clang/llvm 19 for the BPF C programs, libbpf-sys build deps, extra Go toolchains for the
# fixtures, wrk for load, and PostgreSQL and MariaDB for the database tests. Idempotent: a
# second run only checks.
set -euo pipefail

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# The URI of the Debian archive this machine's own apt sources name for its release (deb822
# .sources files or the one-line sources.list), not the security archive.
debian_archive_uri() {
  local f uris=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && [ "$f" != /etc/apt/sources.list.d/gotel-extra.sources ] || continue
    # One stanza a paragraph: its first URI, unless it is the security archive's.
    uris+=$(awk 'BEGIN { RS = ""; FS = "\n" }
      {
        uris = ""; suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) uris = $i
          if ($i ~ /^Suites:/) suites = $i
        }
        sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/)
        if (u[1] != "" && suites !~ /-security/ && u[1] !~ /security/) print u[1]
      }' "$f")$'\n'
  done
  if [ -f /etc/apt/sources.list ]; then
    uris+=$(awk '$1 == "deb" && $2 !~ /security/ && $3 !~ /-security/ { print $2 }' \
      /etc/apt/sources.list)
  fi
  uris=$(printf '%s\n' "$uris" | grep -v '^$' || true)
  [ -n "$uris" ] || return 1
  printf '%s\n' "${uris%%$'\n'*}"
}

# postgresql, mariadb-server, redis-server: the real servers the database tests start private
# instances of; nginx-light: the proxy the cross-host tests put between client and server;
# prometheus: the real scraper of gotel's metrics endpoint (tests start their own instance);
# bpftool: the kernel's own view of gotel's programs, links and maps (fault tests, soak).
need_pkgs=(clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config make wrk iproute2 python3-venv
  postgresql mariadb-server redis-server nginx-light prometheus bpftool
  golang-1.19-go golang-1.21-go golang-1.22-go golang-1.23-go golang-1.24-go golang-1.26-go golang-1.27-go)

missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { echo "setup: need root to apt-get install ${missing[*]}" >&2; exit 1; }
  # Newer toolchains come from later Debian suites, pinned low so nothing else is upgraded,
  # from the same archive the machine already uses.
  if [ ! -f /etc/apt/sources.list.d/gotel-extra.sources ]; then
    uri=$(debian_archive_uri) || {
      echo "setup: no Debian archive found in /etc/apt/sources.list or /etc/apt/sources.list.d/" >&2
      exit 1
    }
    log "adding Debian suites bookworm-backports, trixie, sid from $uri (Pin-Priority 100)"
    cat >/etc/apt/sources.list.d/gotel-extra.sources <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports trixie sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat >/etc/apt/preferences.d/gotel-extra <<'PIN'
Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100

Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: *
Pin: release n=sid
Pin-Priority: 100
PIN
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
log "system packages ok: ${need_pkgs[*]}"
