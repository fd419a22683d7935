#!/usr/bin/env bash
# Builds and runs bench/compile_cache_bench: cold compile, memory hit and disk
# hit latency over gRPC for N distinct attention kernels. Arguments go to the
# program (--configs N, --memory-repeats N, --arch sm_XX, --address HOST:PORT,
# --compile-threads N, --keep-cache). The markdown table is printed and saved
# to <build>/bench/compile_cache_bench.md.
#
# Environment: FLASHCORE_BUILD_DIR (default <repo>/build); FLASHCORE_BENCH_BIN
# runs that binary instead of building (e.g. a bundle's bin/compile_cache_bench).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${FLASHCORE_BUILD_DIR:-$ROOT/build}"

if [[ -n "${FLASHCORE_BENCH_BIN:-}" ]]; then
  bench="$FLASHCORE_BENCH_BIN"
  results="$(mktemp -t compile_cache_bench.XXXXXX.md)"
else
  if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
    FLASHCORE_BUILD_DIR="$BUILD_DIR" "$ROOT/deploy/setup.sh" --build-only
  fi
  cmake --build "$BUILD_DIR" --target compile_cache_bench -j "${FLASHCORE_JOBS:-$(nproc)}"
  bench="$BUILD_DIR/bench/compile_cache_bench"
  results="$BUILD_DIR/bench/compile_cache_bench.md"
fi

# The table goes to stdout, progress to stderr; keep only the table.
"$bench" "$@" | tee "$results"
echo "saved: $results" >&2
