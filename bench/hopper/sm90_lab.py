#!/usr/bin/env python3
"""Lab for the Hopper attention family (kernel_templates/hopper/): compile its
configs with NVRTC, check them against an fp64 reference and time them against
PyTorch SDPA (cuDNN and flash backends) in one process, interleaved, CUDA-graph
replay on both sides.

    python3 bench/hopper/sm90_lab.py --compile-only      # no GPU: NVRTC time, regs, spills
    python3 bench/hopper/sm90_lab.py --check --bench     # on the H200
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import pathlib
import statistics
import struct
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lab"))
import cudalab  # noqa: E402

ELEM = {"fp16": "flashcore::fp16_t", "bf16": "flashcore::bf16_t"}


class Cfg:
    def __init__(self, dtype, d, causal, block_n, stages, consumers, pingpong, separate_o=False,
                 persistent=False, creg=None, preg=24, templates=None, tag="base"):
        self.dtype, self.d, self.causal = dtype, d, causal
        # Another kernel_templates folder (--baseline) and its label, or None.
        self.templates, self.tag = templates, tag
        self.block_n, self.stages, self.consumers, self.pingpong = block_n, stages, consumers, pingpong
        self.separate_o, self.persistent = separate_o, persistent
        self.creg = creg if creg is not None else {1: 0, 2: 240, 3: 160}[consumers]
        self.preg = preg if consumers > 1 else 0

    @property
    def block_m(self):
        return 64 * self.consumers

    def name_expression(self):
        b = lambda x: "true" if x else "false"
        return (f"flashcore::attention_fwd_sm90<{ELEM[self.dtype]}, {self.d}, {b(self.causal)}, "
                f"{self.block_n}, {self.stages}, {self.consumers}, {b(self.pingpong)}, "
                f"{b(self.separate_o)}, {self.creg}, {self.preg}>")

    def smem_bytes(self):  # Sm90Layout::kBytes
        q = self.consumers * 64 * self.d * 2
        kv = self.block_n * self.d * 2
        return (q * (2 if self.separate_o else 1) + 2 * self.stages * kv
                + 8 * (2 * self.consumers + 4 * self.stages) + 1024)

    def threads(self):
        return 128 * (self.consumers + 1)

    def grid(self, B, H, SQ, sms):
        tiles = (SQ + self.block_m - 1) // self.block_m * H * B
        return (min(tiles, sms) if self.persistent else tiles, 1, 1)

    def short(self):
        return (f"n{self.block_n}s{self.stages}c{self.consumers}{'p' if self.pingpong else ''}"
                f"{'o' if self.separate_o else ''}{'P' if self.persistent else ''}"
                f"{'@' + self.tag if self.templates else ''}")

    @staticmethod
    def parse(dtype, d, causal, label):
        """A config from its short label, e.g. n128s2c2poP."""
        import re as _re
        m = _re.fullmatch(r"n(\d+)s(\d+)c(\d+)(p?)(o?)(P?)", label)
        if not m:
            raise SystemExit(f"--configs: '{label}' is not a label like n128s2c2poP")
        return Cfg(dtype, d, causal, int(m[1]), int(m[2]), int(m[3]), bool(m[4]), bool(m[5]),
                   bool(m[6]))

    def with_templates(self, templates, tag="base"):
        return Cfg(self.dtype, self.d, self.causal, self.block_n, self.stages, self.consumers,
                   self.pingpong, self.separate_o, self.persistent, self.creg, self.preg,
                   templates, tag)

    def __repr__(self):
        return f"{self.dtype} d{self.d} {'causal' if self.causal else 'full'} {self.short()}"


def default_configs(dtypes=("fp16", "bf16"), causals=(False, True)):
    out = []
    per_d = {  # (block_n, stages, consumers, pingpong, separate_o, persistent): the family defaults first
        64: [(128, 3, 2, True, True, True), (128, 2, 3, False, True, True),
             (192, 2, 2, True, True, True)],
        128: [(128, 2, 2, True, True, True), (128, 2, 2, True, False, False),
              (176, 2, 2, True, False, True)],
        256: [(80, 2, 2, True, False, True), (80, 2, 2, True, False, False)],
    }
    for dtype, causal, (d, lst) in itertools.product(dtypes, causals, per_d.items()):
        for bn, st, c, pp, so, pe in lst:
            out.append(Cfg(dtype, d, causal, bn, st, c, pp, so, pe))
    return out


_compiled = {}


def compile_cfg(cfg: Cfg):
    key = (cfg.name_expression(), cfg.templates)
    if key not in _compiled:
        cubin, lowered, log, secs = cudalab.compile_template(
            key[0], ["hopper/attention_fwd_sm90.cuh"], arch="sm_90a", templates=cfg.templates)
        _compiled[key] = (cubin, lowered, log, secs)
    return _compiled[key]


# --------------------------------------------------------------- GPU side
def params_bytes(tq, tk, tv, to, lse_ptr, q, k, v, o, B, H, KVH, SQ, SK, scale, layout):
    def strides(t):  # (batch, head, row) in elements for the logical [B, H, S, D] view
        return (t.stride(0), t.stride(1), t.stride(2)) if layout == "bhsd" else (
            t.stride(0), t.stride(2), t.stride(1))
    attn = struct.pack("<5Q", q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse_ptr)
    for t in (q, k, v, o):
        attn += struct.pack("<3q", *strides(t))
    attn += struct.pack("<5i2f", B, H, KVH, SQ, SK, scale, scale * math.log2(math.e))
    attn += b"\0" * (-len(attn) % 8)
    blob = tq + tk + tv + to + attn
    return blob + b"\0" * (-len(blob) % 64)


def tensor_map(t, dtype, layout, rows_box):
    # logical dims innermost first: (D, S, H, B)
    if layout == "bhsd":
        B, H, S, D = t.shape
        st = (t.stride(2), t.stride(1), t.stride(0))
    else:
        B, S, H, D = t.shape
        st = (t.stride(1), t.stride(2), t.stride(0))
    return cudalab.encode_tensor_map(dtype, t.data_ptr(), (D, S, H, B), [x * 2 for x in st],
                                     (64, rows_box, 1, 1), swizzle="128B", l2="256B")


class Launch:
    def __init__(self, cfg: Cfg):
        cubin, lowered, log, _ = compile_cfg(cfg)
        self.cfg = cfg
        self.kernel = cudalab.Kernel(cubin, lowered, cfg.smem_bytes())

    def prepare(self, q, k, v, o, lse, layout, causal, scale=None):
        import torch
        cfg = self.cfg
        if layout == "bhsd":
            B, H, SQ, D = q.shape
            KVH, SK = k.shape[1], k.shape[2]
        else:
            B, SQ, H, D = q.shape
            SK, KVH = k.shape[1], k.shape[2]
        scale = scale if scale is not None else 1.0 / math.sqrt(D)
        tq = tensor_map(q, cfg.dtype, layout, 64)
        tk = tensor_map(k, cfg.dtype, layout, cfg.block_n)
        tv = tensor_map(v, cfg.dtype, layout, cfg.block_n)
        to = tensor_map(o, cfg.dtype, layout, 64)
        self.params = params_bytes(tq, tk, tv, to, lse.data_ptr() if lse is not None else 0,
                                   q, k, v, o, B, H, KVH, SQ, SK, scale, layout)
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        self.grid = cfg.grid(B, H, SQ, sms)
        self.keep = (q, k, v, o, lse)
        return self

    def __call__(self):
        import torch
        self.kernel.launch(self.grid, (self.cfg.threads(), 1, 1), self.params,
                           torch.cuda.current_stream().cuda_stream)


def reference(q, k, v, causal, layout, scale=None):
    import torch
    if layout == "bshd":
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    q, k, v = q.double(), k.double(), v.double()
    H, KVH = q.shape[1], k.shape[1]
    if KVH != H:
        k = k.repeat_interleave(H // KVH, dim=1)
        v = v.repeat_interleave(H // KVH, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        SQ, SK = s.shape[-2], s.shape[-1]
        mask = torch.ones(SQ, SK, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.softmax(s, dim=-1) @ v
    if layout == "bshd":
        out = out.transpose(1, 2)
    return out, lse


def make_inputs(B, H, KVH, SQ, SK, D, dtype, layout, gen, x_scale=1.0):
    import torch
    tdt = torch.float16 if dtype == "fp16" else torch.bfloat16
    def mk(h, s):
        shape = (B, h, s, D) if layout == "bhsd" else (B, s, h, D)
        return (torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32) * x_scale).to(tdt)
    q, k, v = mk(H, SQ), mk(KVH, SK), mk(KVH, SK)
    o = torch.full_like(q, float("nan"))
    return q, k, v, o


def check_cfg(cfg, cases, gen):
    import torch
    launch = Launch(cfg)
    worst = (0.0, 0.0, 0.0)
    fails = []
    for (B, H, KVH, SQ, SK, layout) in cases:
        q, k, v, o = make_inputs(B, H, KVH, SQ, SK, cfg.d, cfg.dtype, layout, gen)
        lse = torch.full((B, H, SQ), float("nan"), device="cuda", dtype=torch.float32)
        launch.prepare(q, k, v, o, lse, layout, cfg.causal)()
        torch.cuda.synchronize()
        ref, ref_lse = reference(q, k, v, cfg.causal, layout)
        err = (o.double() - ref)
        rel = (err.norm() / ref.norm()).item()
        mae = err.abs().max().item()
        lerr = (lse.double() - ref_lse).abs().max().item()
        if not (rel < 2e-2 if cfg.dtype == "bf16" else rel < 4e-3) or not (lerr < 1e-2) \
                or not math.isfinite(mae):
            fails.append(f"B{B} H{H}/{KVH} Sq{SQ} Sk{SK} {layout}: rel {rel:.2e} max {mae:.2e} lse {lerr:.2e}")
        worst = tuple(max(a, b) for a, b in zip(worst, (rel, mae, lerr)))
    return worst, fails


CHECK_CASES = [  # (B, H, KVH, SQ, SK, layout)
    (2, 4, 4, 256, 256, "bhsd"),
    (1, 4, 2, 1, 1, "bhsd"),
    (1, 2, 2, 1, 300, "bhsd"),
    (2, 8, 2, 197, 333, "bshd"),
    (1, 4, 1, 515, 130, "bhsd"),
    (1, 3, 3, 130, 515, "bshd"),
    (1, 8, 8, 1024, 1024, "bhsd"),
    (2, 16, 4, 1024, 1024, "bshd"),  # more tiles than SMs: persistent CTAs take several
    (3, 12, 12, 777, 777, "bhsd"),
]


SUITE = [  # (B, H, KVH, S, D, causal)
    (1, 8, 8, 512, 64, False), (16, 8, 8, 512, 64, False), (4, 16, 16, 2048, 64, False),
    (4, 16, 16, 2048, 128, False), (4, 16, 16, 2048, 128, True), (2, 16, 16, 8192, 128, False),
    (2, 16, 16, 8192, 128, True), (1, 16, 16, 16384, 64, False), (1, 32, 8, 8192, 128, True),
    (4, 16, 16, 4096, 256, False),
]


def load_tuned(folder):
    """TuningResult JSON files (flashcore --json tune ...) -> {row key: (Cfg, result)}:
    the configs the daemon's own Tune chose, to be timed here beside SDPA."""
    out = {}
    for f in sorted(pathlib.Path(folder).glob("*.json")):
        try:
            r = json.loads(f.read_text())
        except ValueError:
            continue
        if r.get("template_id") != "attention_fwd_sm90" or "config" not in r:
            continue
        # The file is named for the shape asked (tune_suite.sh): a result
        # answered from the database carries the shape it was first tuned on.
        c = r["config"]
        dtype, b, h, kvh, sq, d, causal = f.stem.split("_")
        d, causal = int(d), causal == "1"
        key = (dtype, int(b), int(h), int(kvh), int(sq), d, causal)
        cfg = Cfg(dtype, d, causal, int(c["block_n"]), int(c["stages"]), int(c["block_m"]) // 64,
                  bool(c.get("pingpong")), bool(c.get("separate_o")), bool(c.get("persistent")))
        out[key] = (cfg, r)
    return out


def bench(cfgs, dtypes, rounds, out_json, tuned=None, head_dims=None, shapes=None):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel, SDPBackend
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows = []
    for dtype in dtypes:
        for (B, H, KVH, S, D, causal) in SUITE:
            if head_dims is not None and D not in head_dims:
                continue
            if shapes is not None and (B, H, KVH, S, D, causal) not in shapes:
                continue
            q, k, v, o = make_inputs(B, H, KVH, S, S, D, dtype, "bhsd", gen)
            flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
            reps = max(2, min(50, int(2e13 / flops) + 1))
            cands = [c for c in cfgs if c.dtype == dtype and c.d == D and c.causal == causal]
            tuned_cfg = None
            if tuned is not None:
                hit = tuned.get((dtype, B, H, KVH, S, D, causal))
                if hit is None:
                    print(f"  no tuned result for {dtype} B{B} H{H}/{KVH} S{S} D{D} causal={causal}",
                          flush=True)
                else:
                    tuned_cfg = hit[0]
                    cands = [tuned_cfg] + [c for c in cands if c.short() != tuned_cfg.short()]
            timers = {}
            for c in cands:
                try:
                    launch = Launch(c).prepare(q, k, v, o, None, "bhsd", causal)
                    timers[c.short()] = cudalab.graph_timer([launch], reps, warmup=2)
                except Exception as e:  # noqa: BLE001
                    print(f"  {c}: {e}", flush=True)
            for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
                def f(be=be, kk=k, vv=v, gqa=KVH != H):
                    with sdpa_kernel([be]):
                        return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal,
                                                              enable_gqa=gqa)
                try:
                    timers[name] = cudalab.graph_timer([f], reps, warmup=2)
                except Exception as e:  # noqa: BLE001
                    # A backend without GQA: the user would expand K and V first.
                    print(f"  sdpa {name} enable_gqa: {str(e)[:100]}; timing with K/V expanded",
                          flush=True)
                    ke = k.repeat_interleave(H // KVH, dim=1)
                    ve = v.repeat_interleave(H // KVH, dim=1)
                    try:
                        timers[name] = cudalab.graph_timer([lambda: f(kk=ke, vv=ve, gqa=False)], reps,
                                                         warmup=2)
                    except Exception as e2:  # noqa: BLE001
                        print(f"  sdpa {name}: {str(e2)[:100]}", flush=True)
            samples = cudalab.interleaved(timers, rounds)
            med = {n: statistics.median(v) for n, v in samples.items()}
            ours = {n: m for n, m in med.items() if n not in ("cudnn", "flash")}
            best = min(ours, key=ours.get) if ours else None
            if tuned_cfg is not None and tuned_cfg.short() in ours:
                best = tuned_cfg.short()  # the row reports the daemon's pick, not our sweep
            def spread(n):
                xs = sorted(samples[n])
                return 100 * (xs[int(0.9 * (len(xs) - 1))] - xs[int(0.1 * (len(xs) - 1))]) / med[n]
            row = dict(dtype=dtype, B=B, H=H, kv_heads=KVH, S=S, D=D, causal=causal, family="sm90",
                       config=best, flashcore_us=round(med[best], 2) if best else None,
                       spread_pct=round(spread(best), 1) if best else None,
                       cudnn_us=round(med["cudnn"], 2) if "cudnn" in med else None,
                       flash_us=round(med["flash"], 2) if "flash" in med else None,
                       tflops=round(flops / med[best] / 1e6, 1) if best else None,
                       tuned=tuned_cfg is not None,
                       all={n: round(m, 2) for n, m in ours.items()})
            rows.append(row)
            vs = lambda x: f"{x / med[best]:.2f}x" if x and best else "-"
            print(f"{dtype} B{B} H{H}/{KVH} S{S} D{D} {'causal' if causal else 'full  '} "
                  f"best {best} {row['flashcore_us']} us ±{row['spread_pct']}% {row['tflops']} TF/s | "
                  f"cudnn {row['cudnn_us']} ({vs(row['cudnn_us'])}) flash {row['flash_us']} "
                  f"({vs(row['flash_us'])}) | " + " ".join(f"{n}:{m:.1f}" for n, m in ours.items()),
                  flush=True)
    if out_json:
        pathlib.Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows),
                  open(out_json, "w"), indent=1)


def baselines(arg):
    """'DIR' or 'TAG=DIR' items, space separated -> [(tag, resolved dir)]."""
    out = []
    for item in arg.split():
        tag, _, d = item.rpartition("=")
        out.append((tag or "base", pathlib.Path(d).resolve()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--d", default="64,128,256")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default="")
    ap.add_argument("--tuned", default="", help="folder of TuningResult JSON files: time the "
                    "configs the daemon's Tune chose (rows report them)")
    ap.add_argument("--shapes", default="", help="suite rows to time, 'B,H,KVH,S,D,causal' "
                    "separated by spaces (default: all)")
    ap.add_argument("--only-tuned", action="store_true", help="with --tuned: time only the "
                    "daemon's picks beside SDPA, not the lab's own configs")
    ap.add_argument("--configs", default="", help="the lab's configs to use instead of its "
                    "defaults, labels like n128s2c2oP separated by spaces (for every dtype, D "
                    "and causal asked)")
    ap.add_argument("--baseline", default="", help="other kernel_templates folders (earlier "
                    "versions), space separated, each DIR or TAG=DIR: every config is also "
                    "compiled from each and timed beside, labelled @TAG (default @base)")
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    ds = [int(x) for x in args.d.split(",")]
    cfgs = [c for c in default_configs(dtypes) if c.d in ds]
    if args.configs:
        cfgs = [Cfg.parse(dtype, d, causal, label) for label in args.configs.split()
                for dtype in dtypes for d in ds for causal in (False, True)]
    if args.only_tuned:
        cfgs = []
    if args.baseline:
        cfgs = [x for c in cfgs for x in [c] + [c.with_templates(d, t) for t, d in baselines(args.baseline)]]
    shapes = None
    if args.shapes:
        shapes = set()
        for row in args.shapes.split():
            b, h, kv, s_, d, c = (int(x) for x in row.split(","))
            shapes.add((b, h, kv, s_, d, bool(c)))
    t0 = time.time()
    for c in cfgs:
        try:
            _, _, log, secs = compile_cfg(c)
            rr = cudalab.resource_report(log)
            warn = [ln for ln in log.splitlines() if "warning" in ln.lower() or "C75" in ln]
            print(f"compiled {c}: {secs:.2f} s, smem {c.smem_bytes()} B, {rr}"
                  + (f" WARN {warn[:2]}" if warn else ""), flush=True)
        except cudalab.CompileError as e:
            print(f"FAILED {c}: {str(e)[:3000]}", flush=True)
            if args.compile_only:
                sys.exit(1)
    print(f"compile total {time.time() - t0:.1f} s", flush=True)
    if args.compile_only:
        return
    import torch
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    if args.check:
        gen = torch.Generator(device="cuda").manual_seed(0)
        nfail = 0
        for c in cfgs:
            try:
                worst, fails = check_cfg(c, CHECK_CASES, gen)
            except Exception as e:  # noqa: BLE001
                worst, fails = (float("nan"),) * 3, [f"exception {e}"]
            nfail += bool(fails)
            print(f"check {c}: worst rel {worst[0]:.2e} max {worst[1]:.2e} lse {worst[2]:.2e} "
                  + ("OK" if not fails else "FAIL " + "; ".join(fails[:3])), flush=True)
        print(f"check: {len(cfgs) - nfail}/{len(cfgs)} configs pass", flush=True)
    if args.bench:
        bench(cfgs, dtypes, args.rounds, args.json, load_tuned(args.tuned) if args.tuned else None,
              head_dims=[int(x) for x in args.d.split(",")], shapes=shapes)


if __name__ == "__main__":
    main()
