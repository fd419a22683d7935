#!/usr/bin/env python3
"""The decode kernels the daemon serves, checked against fp64 and timed beside
PyTorch SDPA (cuDNN and flash backends) in one process, interleaved.

    python3 bench/decode/served_bench.py HANDLES_DIR [--rounds 15] [--json OUT.json] [--md OUT.md]

HANDLES_DIR holds, per shape, the handles `flashcore --json compile
--include-cubin` returned (bench/decode/served_suite.sh writes them): TAG.tuned.json
(`--tuned`: the config the daemon's Tune chose for the shape's bucket) and
TAG.default.json (no config: the family's default), TAG = B_H_KVH_SQ_SK_D_dtype.
Each handle's cubin is loaded as served (no compile here) and launched with the
handle's kernel names, launch geometry and num_splits; the params struct is
packed as decode_lab.py packs DecodeParams (checked against the handle's ABI
field table). Method as decode_lab.py's: fresh N(0,1) inputs, (B, H, S, D)
layout, input sets rotated past 2.5x L2, CUDA-graph replay of N launches on
both sides, R interleaved rounds, median and p10-p90 spread.
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lab"))
import cudalab  # noqa: E402
import decode_lab as lab  # noqa: E402

# DecodeParams as decode_lab.params_bytes packs it: (name, offset).
PACKED_FIELDS = ["q", "k", "v", "o", "lse", "o_partial", "lse_partial", "split_counters"]
PACKED_FIELDS += [f"{t}_{s}_stride" for t in "qkvo" for s in ("batch", "head", "row")]
PACKED_FIELDS += ["batch", "heads", "kv_heads", "seq_q", "seq_k", "num_splits", "softmax_scale",
                  "softmax_scale_log2"]


def check_abi(handle):
    """The handle's params fields are where params_bytes puts them."""
    abi = handle["abi"]
    assert abi["abi_version"] == 3 and abi["params_struct"] == "flashcore::DecodeParams", abi
    offsets, position = {}, 0
    for name in PACKED_FIELDS:
        size = 4 if name in ("batch", "heads", "kv_heads", "seq_q", "seq_k", "num_splits",
                             "softmax_scale", "softmax_scale_log2") else 8
        offsets[name] = position
        position += size
    served = {f["name"]: f["offset"] for f in abi["fields"]}
    assert served == offsets, f"DecodeParams differs from this bench's packing: {served}"
    assert int(abi["params_size"]) == position == 192


class ServedLaunch:
    """The handle's split kernel, then (steps say so) its combine kernel."""

    def __init__(self, handle):
        check_abi(handle)
        cubin = base64.b64decode(handle["cubin"])
        steps = {s["role"]: s for s in handle["steps"]}
        split = steps["split"]
        self.split = cudalab.Kernel(cubin, split["lowered_name"],
                                    split["launch"].get("dynamic_smem_bytes", 0))
        self.block = split["launch"]["block"]["x"]
        self.combine = None
        if "combine" in steps:
            c = steps["combine"]
            self.combine = cudalab.Kernel(cubin, c["lowered_name"],
                                          c["launch"].get("dynamic_smem_bytes", 0))
            self.combine_block = c["launch"]["block"]["x"]
            self.combine_grid = tuple(c["launch"]["grid"].get(a, 1) for a in "xyz")
        self.splits = int(handle.get("num_splits", 1) or 1)
        self.config = handle["config"]

    def prepare(self, q, k, v, o, lse, ws=None):
        B, H, SQ, D = q.shape
        KVH, SK = k.shape[1], k.shape[2]
        if self.splits > 1 and ws is None:
            ws = lab.Workspace(B, H, KVH, SQ, D, self.splits)
        self.ws = ws
        self.params = lab.params_bytes(q, k, v, o, lse, ws.ptrs if self.splits > 1 else None,
                                       B, H, KVH, SQ, SK, self.splits, 1.0 / math.sqrt(D))
        self.grid = (self.splits, KVH, B)
        self.keep = (q, k, v, o, lse)
        return self

    def __call__(self):
        import torch
        s = torch.cuda.current_stream().cuda_stream
        self.split.launch(self.grid, (self.block, 1, 1), self.params, s)
        if self.combine is not None and self.splits > 1:
            self.combine.launch(self.combine_grid, (self.combine_block, 1, 1), self.params, s)


def label(config):
    text = f"r{config['block_m']} n{config['block_n']} w{config['warps']} s{config['stages']}"
    text += " fused" if config.get("fused_combine") else " 2-kernel"
    return text + (f" k{config['splits']}" if config.get("splits") else "")


def check(launch, q, k, v, B, H, SQ):
    import torch
    o = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, SQ), float("nan"), device="cuda")
    launch.prepare(q, k, v, o, lse)()
    torch.cuda.synchronize()
    ref, ref_lse = lab.reference(q, k, v)
    finite = bool(torch.isfinite(o).all()) and bool(torch.isfinite(lse).all())
    rel = ((o.double() - ref).norm() / ref.norm()).item()
    max_abs = (o.double() - ref).abs().max().item()
    lse_err = (lse.double() - ref_lse).abs().max().item()
    return finite, rel, max_abs, lse_err


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("handles")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default="")
    ap.add_argument("--md", default="")
    args = ap.parse_args()
    import torch
    torch.zeros(1, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"device {torch.cuda.get_device_name()} SMs {sms} torch {torch.__version__} "
          f"cudnn {torch.backends.cudnn.version()}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(int(time.time()))
    rows, failures = [], 0
    for path in sorted(pathlib.Path(args.handles).glob("*.tuned.json")):
        tag = path.name[: -len(".tuned.json")]
        B, H, KVH, SQ, SK, D = (int(x) for x in tag.split("_")[:6])
        dtype = tag.split("_")[6]
        handles = {"tuned": json.loads(path.read_text())}
        default_path = path.with_name(tag + ".default.json")
        if default_path.exists():
            handles["default"] = json.loads(default_path.read_text())
        launches = {n: ServedLaunch(h) for n, h in handles.items()}
        kv_bytes = 2 * B * KVH * SK * D * 2
        nsets = max(1, math.ceil(2.5 * lab.L2_BYTES / kv_bytes))
        sets = [lab.make_qkvo(B, H, KVH, SQ, SK, D, dtype, "bhsd", gen) for _ in range(nsets)]
        errors = {n: check(l, *sets[0][:3], B, H, SQ) for n, l in launches.items()}
        for n, (finite, rel, max_abs, lse_err) in errors.items():
            ok = finite and rel <= lab.TOL[dtype] and lse_err <= 1e-2
            failures += not ok
            if not ok:
                print(f"  FAIL {tag} {n}: finite {finite} rel {rel:.2e} max_abs {max_abs:.2e} "
                      f"lse {lse_err:.2e}", flush=True)
        est_us = kv_bytes / 3.5e6
        reps = max(nsets, min(400, int(1500 / max(est_us, 1.0))) // nsets * nsets)
        timers = {}
        for n, l in launches.items():
            ws = lab.Workspace(B, H, KVH, SQ, D, l.splits) if l.splits > 1 else None
            per_set = [ServedLaunch(handles[n]).prepare(*st, None, ws) for st in sets]
            timers[n] = cudalab.graph_timer(per_set, reps)
        sdpa_path = lab.sdpa_timers(sets, H, KVH, reps, timers)
        samples = cudalab.interleaved(timers, args.rounds)
        med = {n: statistics.median(x) for n, x in samples.items()}
        r = lambda x: round(x, 2) if x is not None else None  # noqa: E731
        tb = lambda us: kv_bytes / us / 1e6  # noqa: E731
        row = dict(dtype=dtype, B=B, H=H, kv_heads=KVH, Sq=SQ, Sk=SK, D=D,
                   config=label(handles["tuned"]["config"]),
                   tuned_splits=launches["tuned"].splits,
                   flashcore_us=r(med["tuned"]), spread_pct=r(lab.spread_pct(samples["tuned"])),
                   tbps=r(tb(med["tuned"])),
                   default_config=label(handles["default"]["config"]) if "default" in med else None,
                   default_us=r(med.get("default")),
                   cudnn_us=r(med.get("cudnn")), flash_us=r(med.get("flash")),
                   cudnn_spread_pct=r(lab.spread_pct(samples["cudnn"])) if "cudnn" in samples else None,
                   vs_cudnn=r(med["cudnn"] / med["tuned"]) if "cudnn" in med else None,
                   vs_flash=r(med["flash"] / med["tuned"]) if "flash" in med else None,
                   rel_err=errors["tuned"][1], max_abs_err=errors["tuned"][2],
                   lse_err=errors["tuned"][3], sdpa_path=sdpa_path, input_sets=nsets,
                   graph_reps=reps, key=handles["tuned"]["key"])
        rows.append(row)
        print(f"{tag:28} tuned {row['config']:24} /{row['tuned_splits']:<3} "
              f"{row['flashcore_us']:7.2f} us ±{row['spread_pct']:.1f}% {row['tbps']:.2f} TB/s"
              f" | default {row['default_us']} | cudnn {row['cudnn_us']} ({row['vs_cudnn']}x) "
              f"flash {row['flash_us']} ({row['vs_flash']}x) | rel {row['rel_err']:.1e}", flush=True)
        del timers, samples, sets
        torch.cuda.empty_cache()
    if args.json:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                       cudnn=torch.backends.cudnn.version(), sms=sms, rounds=args.rounds,
                       method=__doc__.split("\n\n")[-1].strip(), rows=rows),
                  open(args.json, "w"), indent=1)
    if args.md:
        with open(args.md, "w") as out:
            out.write("| dtype | B | H (kv) | Sq | Sk | tuned config / splits | FlashCore us | spread "
                      "| TB/s | default us | cuDNN us | vs cuDNN | flash us | vs flash | rel err |\n")
            out.write("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
            for x in rows:
                out.write(f"| {x['dtype']} | {x['B']} | {x['H']} ({x['kv_heads']}) | {x['Sq']} | "
                          f"{x['Sk']} | {x['config']} / {x['tuned_splits']} | {x['flashcore_us']} | "
                          f"±{x['spread_pct']}% | {x['tbps']} | {x['default_us']} | "
                          f"{x['cudnn_us']} | **{x['vs_cudnn']}x** | {x['flash_us']} | "
                          f"{x['vs_flash']}x | {x['rel_err']:.1e} |\n")
    print(f"served decode: {len(rows)} shapes, {failures} handle(s) failed the fp64 check")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
