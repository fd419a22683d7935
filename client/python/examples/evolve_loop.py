#!/usr/bin/env python3
"""An evolution loop over the attention template, driven through the daemon.

Each generation is submitted with ``Client.evaluate_source``: the daemon
compiles every child in a sandboxed compile worker, checks it against fp64 and
times it on its GPUs (``EvaluateSource``), and keeps the lineage, so a loop
started with ``--resume`` picks up its population from ``ListCandidates``.

The search follows EvoEngineer (arXiv 2510.03760) with a rule-based mutator in
place of the LLM: a population of the best valid candidates (elitism: the top
``--elite`` survive unchanged), children made by crossover of two parents
(hunks of differing lines and tile fields taken from either) and mutation of
the template source:

  tile     the tile constants: block_m, block_n, warps, stages (TileConfig)
  unroll   one ``#pragma unroll`` becomes ``#pragma unroll 1`` / ``2`` / back
  order    the K/V prefetch issued after the wait instead of before it
  mask     masking variants: every tile masked, or the diagonal test widened

An LLM-backed mutator plugs in with ``--mutator-command CMD``: for each
generation CMD runs once with a JSON document on stdin::

  {"generation": 3, "children": 6, "template": "<attention_fwd.cuh>",
   "parents": [{"id": 12, "name": "g2-c4", "source": "...",
                "config": {"block_m": 128, "block_n": 64, "warps": 4, "stages": 2},
                "verdict": {"status": "CANDIDATE_STATUS_VALID", "median_us": 41.2,
                            "speedup_vs_served": 1.03, "detail": "...",
                            "compile_log": "..."}}]}

and writes on stdout ``{"children": [{"source": "...", "config": {...},
"parent_ids": [12], "name": "optional"}]}`` (config optional: the first
parent's). The rule-based mutator fills any children the command did not give.

Per generation it prints: valid %, compiled %, best time, speed over the
served best, and evaluations per minute. Without a GPU on the daemon the
candidates get compile verdicts only (valid % is then 0 and selection is by
compile success).

  python3 client/python/examples/evolve_loop.py --generations 10 --population 8 \
      --dtype fp16 --head-dim 64 --heads 16 --seq-q 2048
"""

import argparse
import difflib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import flashcore
from flashcore import epb

HERE = Path(__file__).resolve().parent
DEFAULT_TEMPLATE = HERE.parent.parent.parent / "kernel_templates" / "attention" / "attention_fwd.cuh"

TILE_CHOICES = {"block_m": [64, 128], "block_n": [32, 64, 128], "warps": [2, 4, 8],
                "stages": [1, 2, 3]}

PREFETCH_BEFORE = [
    "    if (tile + Stages - 1 < n_tiles) load_kv(tile + Stages - 1);",
    "    cp_async_commit();",
    "    cp_async_wait<Stages - 1>();",
    "    __syncthreads();",
]
PREFETCH_AFTER = [
    "    cp_async_wait<(Stages > 1 ? Stages - 2 : 0)>();",
    "    __syncthreads();",
    "    if (tile + Stages - 1 < n_tiles) load_kv(tile + Stages - 1);",
    "    cp_async_commit();",
]
MASK_VARIANTS = [
    ("    if (tail || diagonal) {", "    if (true) {  // evolved: every tile masked"),
    ("    const bool diagonal = Causal && n_start + BlockN - 1 > m_start + warp_row0;",
     "    const bool diagonal = Causal && n_start + BlockN > m_start;  // evolved: wider"),
]


class Individual:
    def __init__(self, source, config, name="", parent_ids=(), candidate_id=0, verdict=None):
        self.source = source
        self.config = dict(config)
        self.name = name
        self.parent_ids = list(parent_ids)
        self.id = candidate_id
        self.verdict = verdict

    @property
    def median_us(self):
        if self.verdict is None or self.verdict.status != epb.CANDIDATE_STATUS_VALID:
            return None
        return self.verdict.timing.median_us or None

    def fitness(self):
        """Lower is better: valid and fast first, then compiled, then the rest."""
        if self.verdict is None:
            return (3, 0.0)
        if self.median_us:
            return (0, self.median_us)
        if self.verdict.status == epb.CANDIDATE_STATUS_VALID:
            return (1, 0.0)
        if self.verdict.status == epb.CANDIDATE_STATUS_COMPILED:
            return (2, 0.0)
        return (3, 0.0)


def mutate(rng, parent):
    lines = parent.source.split("\n")
    config = dict(parent.config)
    kind = rng.choice(["tile", "tile", "unroll", "order", "mask"])
    if kind == "tile":
        field = rng.choice(sorted(TILE_CHOICES))
        config[field] = rng.choice([v for v in TILE_CHOICES[field] if v != config.get(field)])
    elif kind == "unroll":
        sites = [i for i, line in enumerate(lines) if line.strip().startswith("#pragma unroll")]
        if sites:
            i = rng.choice(sites)
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            lines[i] = indent + rng.choice(["#pragma unroll", "#pragma unroll 1", "#pragma unroll 2"])
    elif kind == "order":
        for i in range(len(lines) - 3):
            if lines[i:i + 4] == PREFETCH_BEFORE:
                lines[i:i + 4] = PREFETCH_AFTER
                break
            if lines[i:i + 4] == PREFETCH_AFTER:
                lines[i:i + 4] = PREFETCH_BEFORE
                break
    else:
        before, after = rng.choice(MASK_VARIANTS)
        for i, line in enumerate(lines):
            if line == before:
                lines[i] = after
            elif line == after:
                lines[i] = before
    return Individual("\n".join(lines), config, parent_ids=[parent.id] if parent.id else [])


def crossover(rng, a, b):
    """Hunks where the parents differ come from either; tile fields likewise."""
    left, right = a.source.split("\n"), b.source.split("\n")
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, left, right, autojunk=False).get_opcodes():
        out.extend(left[i1:i2] if tag == "equal" or rng.random() < 0.5 else right[j1:j2])
    config = {k: (a.config if rng.random() < 0.5 else b.config).get(k, a.config.get(k))
              for k in TILE_CHOICES}
    return Individual("\n".join(out), config, parent_ids=[p.id for p in (a, b) if p.id])


def external_children(command, generation, parents, count, template):
    document = {
        "generation": generation, "children": count, "template": template,
        "parents": [{
            "id": p.id, "name": p.name, "source": p.source, "config": p.config,
            "verdict": None if p.verdict is None else {
                "status": epb.CandidateStatus.Name(p.verdict.status),
                "median_us": p.verdict.timing.median_us,
                "speedup_vs_served": p.verdict.timing.speedup_vs_served,
                "detail": p.verdict.detail, "compile_log": p.verdict.compile.log[:8000]},
        } for p in parents]}
    done = subprocess.run(command, shell=True, input=json.dumps(document), capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        print("mutator command failed (%d): %s" % (done.returncode, done.stderr.strip()[:400]),
              file=sys.stderr)
        return []
    children = []
    for child in json.loads(done.stdout).get("children", [])[:count]:
        base = parents[0] if parents else None
        children.append(Individual(child["source"], child.get("config") or (base.config if base else {}),
                                   name=child.get("name", ""), parent_ids=child.get("parent_ids", [])))
    return children


def config_message(config):
    return flashcore.tile_config(**{k: config[k] for k in TILE_CHOICES})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=None)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--population", type=int, default=8, help="children per generation")
    parser.add_argument("--elite", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-q", type=int, default=2048)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--arch", default="")
    parser.add_argument("--depth", default="quick", choices=["compile", "quick", "full"])
    parser.add_argument("--gpu-budget-ms", type=int, default=0)
    parser.add_argument("--template", default=str(DEFAULT_TEMPLATE))
    parser.add_argument("--mutator-command", default="", help="LLM hook, see the module doc")
    parser.add_argument("--tag", default="", help="lineage tag (default evolve-<seed>)")
    parser.add_argument("--resume", action="store_true", help="start from the tag's stored candidates")
    parser.add_argument("--json", action="store_true", help="one JSON line per generation")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    tag = args.tag or "evolve-%d" % args.seed
    template = Path(args.template).read_text()
    client = flashcore.Client(args.address, timeout=60)
    problem = flashcore.problem(dtype=args.dtype, head_dim=args.head_dim, heads=args.heads,
                                batch=args.batch, seq_q=args.seq_q, causal=args.causal)
    seed = Individual(template, {"block_m": 128, "block_n": 64, "warps": 4, "stages": 2},
                      name="seed")
    population = [seed]
    first_generation = 0
    if args.resume:
        stored = list(client.iter_candidates(tag=tag, include_source=True))
        if stored:
            first_generation = max(c.generation for c in stored) + 1
            population = [Individual(c.source, {k: getattr(c.config, k) for k in TILE_CHOICES},
                                     name=c.name, parent_ids=c.parent_ids, candidate_id=c.id,
                                     verdict=c.verdict) for c in stored]
            population.sort(key=Individual.fitness)
            population = population[:max(args.elite, 2)]
            print("resumed %d stored candidates of tag %s at generation %d"
                  % (len(stored), tag, first_generation))

    for generation in range(first_generation, first_generation + args.generations):
        parents = sorted(population, key=Individual.fitness)[:max(args.elite, 2)]
        children = []
        if generation == 0 and not args.resume:
            children.append(seed)
        if args.mutator_command:
            children += external_children(args.mutator_command, generation, parents,
                                          args.population - len(children), template)
        while len(children) < args.population:
            if len(parents) >= 2 and rng.random() < 0.5:
                a, b = rng.sample(parents, 2)
                child = mutate(rng, crossover(rng, a, b))
                child.parent_ids = sorted({p for p in (a.id, b.id) if p})
            else:
                child = mutate(rng, rng.choice(parents))
            children.append(child)
        for i, child in enumerate(children):
            if not child.name or (child.name == "seed" and generation > 0):
                child.name = "g%d-c%d" % (generation, i)
        seen = set()  # names are unique within a generation
        for i, child in enumerate(children):
            if child.name in seen:
                child.name = "%s-%d" % (child.name, i)
            seen.add(child.name)
        candidates = [flashcore.source_candidate(c.name, c.source, config=config_message(c.config),
                                                 parent_ids=c.parent_ids) for c in children]
        started = time.monotonic()
        stream = client.evaluate_source(problem=problem, candidates=candidates,
                                        generation=generation, arch=args.arch, tags=[tag],
                                        options={"depth": args.depth,
                                                 "gpu_time_budget_ms": args.gpu_budget_ms})
        stream.wait()
        minutes = (time.monotonic() - started) / 60.0
        ids = list(stream.started.candidate_ids)
        for child, candidate_id in zip(children, ids):
            child.id = candidate_id
            child.verdict = stream.verdicts.get(candidate_id)
        summary = stream.summary
        evaluated = len(children)
        valid = sum(1 for c in children if c.verdict and c.verdict.status == epb.CANDIDATE_STATUS_VALID)
        compiled = sum(1 for c in children if c.verdict and c.verdict.compile.ok)
        # Elitism: the best of parents and children survive (each once: the seed
        # is both in generation 0).
        pool = list({id(i): i for i in parents + children}.values())
        population = sorted(pool, key=Individual.fitness)[:max(args.elite, 2)]
        best = population[0]
        line = {
            "generation": generation, "candidates": evaluated,
            "valid_pct": 100.0 * valid / evaluated, "compiled_pct": 100.0 * compiled / evaluated,
            "best_us": best.median_us or 0.0,
            "speedup_vs_served": best.verdict.timing.speedup_vs_served if best.median_us else 0.0,
            "evaluations_per_min": evaluated / minutes if minutes > 0 else 0.0,
            "best_candidate": best.id, "note": summary.note if summary else "",
        }
        if args.json:
            print(json.dumps(line), flush=True)
        else:
            print("gen %3d  valid %5.1f%%  compiled %5.1f%%  best %s  vs served %s  %.1f evals/min%s"
                  % (generation, line["valid_pct"], line["compiled_pct"],
                     "%.1f us" % line["best_us"] if line["best_us"] else "-",
                     "%.3fx" % line["speedup_vs_served"] if line["speedup_vs_served"] else "-",
                     line["evaluations_per_min"], "  (%s)" % line["note"] if line["note"] else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
