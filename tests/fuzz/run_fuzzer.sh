#!/usr/bin/env bash
# Runs one libFuzzer harness for a fixed time on its committed seed corpus
# (read only: new inputs go to a scratch folder). Fails on a crash, a leak,
# a sanitizer report or a timeout; prints the number of inputs run.
#   run_fuzzer.sh BINARY CORPUS_DIR SECONDS
# A missing binary (build-fuzz not built) skips (exit 77) unless
# FLASHCORE_FUZZ_REQUIRED=1, as deploy/setup.sh --test sets it.
set -uo pipefail
binary=$1 corpus=$2 seconds=$3
name=$(basename "$binary")
if [[ ! -x $binary ]]; then
  echo "$name: $binary not built (deploy/setup.sh --test builds build-fuzz with clang)"
  [[ ${FLASHCORE_FUZZ_REQUIRED:-0} == 1 ]] && exit 1
  exit 77
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/flashcore_fuzz_${name}.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/new" "$scratch/artifacts"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
"$binary" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$scratch/artifacts/" \
  "$scratch/new" "$corpus" >"$scratch/log" 2>&1
rc=$?
runs=$(grep -m1 'stat::number_of_executed_units' "$scratch/log" | awk '{print $2}')
grep -E '^#[0-9]+ +(DONE|INITED)' "$scratch/log" | tail -2
if [[ $rc -ne 0 ]] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$scratch/log"; then
  echo "$name: FAILED (exit $rc) after ${runs:-?} inputs; the report:"
  tail -60 "$scratch/log"
  for artifact in "$scratch"/artifacts/*; do
    [[ -e $artifact ]] && echo "input: $(basename "$artifact") ($(wc -c <"$artifact") bytes): $(head -c 256 "$artifact" | od -An -c | head -4)"
  done
  exit 1
fi
echo "$name: ${runs:-0} inputs in ${seconds} s, no crash, leak or sanitizer report"
