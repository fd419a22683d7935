#!/usr/bin/env bash
# A/B a template change on a GPU box: runs attention_bench against a daemon
# that compiles from another kernel_templates folder (--templates-dir), so two
# versions of a template are swept in one run with the same binaries.
#
#   bench/ab_templates.sh BUNDLE_DIR TEMPLATES_DIR OUT_JSON [attention_bench args...]
set -euo pipefail
bundle=$(cd "$1" && pwd); templates=$(cd "$2" && pwd); out=$3; shift 3
work=$(mktemp -d)
"$bundle/bin/flashcored" --listen 127.0.0.1:0 --port-file "$work/port" --cache-dir "$work/cache" --tuning-db "$work/tuning.db" \
  --templates-dir "$templates" --log-level warn &
daemon=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
"$bundle/bin/attention_bench" --address "127.0.0.1:$(cat "$work/port")" --json "$out" "$@" |
  grep -E 'best|device'
kill -TERM $daemon; wait $daemon
