#!/usr/bin/env bash
# Builds the fuzz targets with clang into BUILD_DIR/fuzz and runs the recovery fuzzer for
# SECONDS (default 30), starting from the committed corpus. New inputs it finds go to a scratch
# corpus under the build dir; crashes are written there too and fail the run.
#   tests/fuzz/run.sh [SECONDS] [BUILD_DIR]
set -euo pipefail
seconds="${1:-30}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${2:-$root/build}/fuzz"
if [ ! -f "$build/build.ninja" ]; then
  CXX=clang++ cmake -S "$root/tests/fuzz" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" >/dev/null
scratch="$build/corpus"
mkdir -p "$scratch" "$build/artifacts"
echo "Fuzzing recovery for ${seconds}s (corpus: tests/fuzz/corpus/recovery + $scratch)"
"$build/recovery_fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$build/artifacts/" -print_final_stats=1 \
  "$scratch" "$root/tests/fuzz/corpus/recovery" 2>&1 | grep -E "^#|stat::|ERROR|SUMMARY|Done" | tail -8
status=${PIPESTATUS[0]}
exit "$status"
