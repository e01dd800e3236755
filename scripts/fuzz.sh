#!/usr/bin/env bash
# Coverage-guided fuzzing of gotel's parsers of untrusted input (fuzz/, cargo-fuzz + libFuzzer,
# AddressSanitizer, debug assertions on), from the committed corpora in fuzz/corpus/.
#
#   scripts/fuzz.sh [--seconds N] [--merge] [TARGET ...]
#
# Runs each TARGET (default: all of them) for N seconds (default 15), one after the other,
# and prints one status line each; exits non-zero if any crashed, overflowed, leaked past
# 2 GB, or ran an input for over 10 s (the input is saved under fuzz/artifacts/TARGET/).
# Inputs that found new coverage are kept in fuzz/target/new-corpus/TARGET; --merge then adds
# to fuzz/corpus/TARGET only those that still add coverage (libFuzzer's -merge=1), to commit.
# Stable Rust is enough: RUSTC_BOOTSTRAP lets it take cargo-fuzz's -Z flags. cargo-fuzz is
# installed into ~/.cargo/bin if missing, and the build goes to ~/.cargo/gotel-fuzz-target
# (GOTEL_FUZZ_TARGET_DIR), which a fresh clone reuses: CI's run takes about a minute then.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1
seconds=15
merge=false
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --merge) merge=true; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
target_dir=${GOTEL_FUZZ_TARGET_DIR:-$HOME/.cargo/gotel-fuzz-target}
build=(cargo fuzz build --fuzz-dir fuzz -a --target-dir "$target_dir")
if [ ${#targets[@]} -eq 1 ]; then build+=("${targets[0]}"); fi
"${build[@]}"
bin=$target_dir/x86_64-unknown-linux-gnu/release

failed=0
for t in "${targets[@]}"; do
  new=fuzz/target/new-corpus/$t
  mkdir -p "$new" "fuzz/artifacts/$t"
  log=fuzz/target/$t.log
  start=$(date +%s)
  status=ok
  "$bin/$t" "$new" "fuzz/corpus/$t" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=2048 -artifact_prefix="fuzz/artifacts/$t/" \
    -print_final_stats=1 >"$log" 2>&1 || status=FAILED
  took=$(( $(date +%s) - start ))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "fuzz/corpus/$t" "$new" -type f | wc -l)
  if [ "$status" = ok ]; then
    echo "fuzz $t: ok, ${took}s, ${runs:-?} runs (${rate:-?}/s), coverage ${cov:-?}, corpus $corpus"
  else
    failed=1
    echo "fuzz $t: FAILED after ${took}s (log $log):"
    grep -E 'ERROR|panicked|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/  /'
  fi
  if $merge; then
    "$bin/$t" -merge=1 "fuzz/corpus/$t" "$new" >>"$log" 2>&1
    echo "  merged: corpus $(find "fuzz/corpus/$t" -type f | wc -l) inputs," \
      "$(du -sh "fuzz/corpus/$t" | cut -f1)"
  fi
done
exit $failed
