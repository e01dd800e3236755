#!/usr/bin/env bash
# Installs everything gotel's build, demo and tests need on a fresh Debian bookworm machine:
# clang/llvm 19 for the BPF C programs, libbpf-sys build deps, extra Go toolchains for the
# fixtures, and wrk for load. Idempotent: a second run only checks.
set -euo pipefail

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

need_pkgs=(clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config make wrk iproute2 python3-venv
  golang-1.19-go golang-1.21-go golang-1.22-go golang-1.23-go golang-1.24-go golang-1.26-go golang-1.27-go)

missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { echo "setup: need root to apt-get install ${missing[*]}" >&2; exit 1; }
  # Newer toolchains come from later Debian suites, pinned low so nothing else is upgraded.
  if [ ! -f /etc/apt/sources.list.d/gotel-extra.sources ]; then
    log "adding Debian suites bookworm-backports, trixie, sid (Pin-Priority 100)"
    cat >/etc/apt/sources.list.d/gotel-extra.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
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
