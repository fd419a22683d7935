#!/usr/bin/env python3
"""Launches each given config of the Hopper family a few times on one shape,
eagerly (no CUDA graph), for a profiler to pick out one launch:

    ncu --clock-control none -k regex:attention_fwd_sm90 --launch-skip 2 --launch-count 1 \\
        python3 bench/hopper/launch_once.py --shape 4,16,16,2048,64,0 --configs n128s2c2oP
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lab"))
import sm90_lab  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, help="B,H,KVH,S,D,causal")
    ap.add_argument("--configs", required=True, help="labels like n128s2c2oP, space separated")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--times", type=int, default=3)
    ap.add_argument("--baseline", default="", help="other kernel_templates folders (DIR or TAG=DIR, "
                    "space separated), launched after")
    args = ap.parse_args()
    import torch
    b, h, kvh, s, d, causal = (int(x) for x in args.shape.split(","))
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, v, o = sm90_lab.make_inputs(b, h, kvh, s, s, d, args.dtype, "bhsd", gen)
    cfgs = [sm90_lab.Cfg.parse(args.dtype, d, bool(causal), lab) for lab in args.configs.split()]
    if args.baseline:
        cfgs += [c.with_templates(d, t) for t, d in sm90_lab.baselines(args.baseline) for c in list(cfgs)]
    for c in cfgs:
        launch = sm90_lab.Launch(c).prepare(q, k, v, o, None, "bhsd", bool(causal))
        for _ in range(args.times):
            launch()
        torch.cuda.synchronize()
        print(f"launched {c} x{args.times}", flush=True)


if __name__ == "__main__":
    main()
