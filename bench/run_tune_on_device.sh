#!/usr/bin/env bash
# Remote tuning end to end on a GPU box, from a bundle: starts flashcored,
# then for each shape tunes over gRPC with the CLI, evolutionary search first
# (budget: 20% of the space), then exhaustive (--force) on the same bucket, and
# prints the comparison table for bench/RESULTS.md.
#
#   bench/run_tune_on_device.sh BUNDLE_DIR OUT_DIR ["B,H,S,D,causal" ...]
set -uo pipefail
bundle=$(cd "$1" && pwd); out=$2; shift 2
shapes=("${@:-4,16,2048,64,0 16,8,512,64,0 4,16,2048,128,0}")
read -r -a shapes <<<"${shapes[*]}"
mkdir -p "$out"
work=$(mktemp -d)
"$bundle/bin/flashcored" --listen 127.0.0.1:0 --port-file "$work/port" --cache-dir "$work/cache" --tuning-db "$work/tuning.db" \
  --log-level warn >"$out/tune_daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
cli=("$bundle/bin/flashcore" --address "127.0.0.1:$(cat "$work/port")" --timeout-ms 600000)
"${cli[@]}" info
for shape in "${shapes[@]}"; do
  IFS=, read -r b h s d c <<<"$shape"
  args=(--dtype fp16 --head-dim "$d" --batch "$b" --heads "$h" --seq-q "$s" --layout bhsd)
  [[ $c == 1 ]] && args+=(--causal)
  for searcher in evolutionary exhaustive; do
    extra=(); [[ $searcher == exhaustive ]] && extra=(--force --max-evals 1000 --time-budget-ms 600000)
    start=$SECONDS
    "${cli[@]}" --json tune "${args[@]}" --searcher "$searcher" "${extra[@]}" \
      >"$out/tune_${shape//,/_}_$searcher.json" 2>"$out/tune_${shape//,/_}_$searcher.log"
    echo "$shape $searcher rc=$? wall=$((SECONDS - start)) s"
    tail -c 600 "$out/tune_${shape//,/_}_$searcher.log" | tr '\r' '\n' | tail -3
  done
done
"${cli[@]}" results
kill -TERM $daemon; wait $daemon
python3 - "$out" "${shapes[@]}" <<'PY' | tee "$out/tune_table.md"
import json, sys
out, shapes = sys.argv[1], sys.argv[2:]
print("| shape (B,H,S,D,causal) | evolutionary evals | share of exhaustive | evolutionary wall s | evolutionary best | best us | exhaustive evals | exhaustive wall s | exhaustive best | best us | gap |")
print("|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|")
for shape in shapes:
    tag = shape.replace(",", "_")
    try:
        e = json.load(open(f"{out}/tune_{tag}_evolutionary.json"))
        x = json.load(open(f"{out}/tune_{tag}_exhaustive.json"))
    except Exception as err:
        print(f"| {shape} | error: {err} |"); continue
    def cfg(r):
        c = r["config"]
        q = {"Q_PLACEMENT_REGISTERS": "-qreg", "Q_PLACEMENT_SHARED": "-qsmem"}.get(c.get("q_placement", ""), "")
        l = {"SMEM_LAYOUT_SWIZZLED": "-swz", "SMEM_LAYOUT_PADDED": "-pad"}.get(c.get("smem_layout", ""), "")
        return f"{c['block_m']}x{c['block_n']}w{c['warps']}s{c['stages']}{q}{l}"
    eu, xu = e["median_us"], x["median_us"]
    ee, xe = int(e["evaluations"]), int(x["evaluations"])
    print(f"| {shape} | {ee} | {100 * ee / xe:.0f}% | {e['wall_seconds']:.1f} | {cfg(e)} | {eu:.2f} | "
          f"{xe} | {x['wall_seconds']:.1f} | {cfg(x)} | {xu:.2f} | {100 * (eu - xu) / xu:+.1f}% |")
PY
