#!/usr/bin/env bash
# A Python virtual environment with the interop server's libraries from PyPI
# (fixtures/interop/requirements.txt): a W3C-aware server that is neither Go nor gotel's.
#
# Output: ${GOTEL_TOOLS_DIR:-<repo>/target/tools}/interop-venv (bin/python)
# Skips the install when the environment is newer than the requirements.
set -euo pipefail

log() { printf '[interop] %s\n' "$*"; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$repo/fixtures/interop/requirements.txt"
venv="${GOTEL_TOOLS_DIR:-$repo/target/tools}/interop-venv"
ready="$venv/.installed"

if [ -f "$ready" ] && [ "$ready" -nt "$requirements" ]; then
  log "up to date: $venv"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
touch "$ready"
log "ready: $venv ($("$venv/bin/pip" freeze --disable-pip-version-check | tr '\n' ' '))"
