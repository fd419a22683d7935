"""KernelEvolution through the Python client against the built daemon (issue 18).

On a CPU box the daemon has no evaluation workers, so candidates get compile
verdicts (the compile runs in the daemon's sandboxed compile worker with real
NVRTC); the example loop runs its generations on those verdicts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
LOOP = REPO / "client" / "python" / "examples" / "evolve_loop.py"

KERNEL = """#include "common/attention_params.cuh"
__global__ void zero_output(const flashcore::AttentionParams __grid_constant__ p) {
  unsigned short* o = static_cast<unsigned short*>(p.o);
  const int row = blockIdx.x * 32 + threadIdx.x;
  if (row < p.seq_q)
    for (int d = 0; d < 64; ++d) o[blockIdx.z * p.o_batch_stride + blockIdx.y * p.o_head_stride + row * p.o_row_stride + d] = 0;
}
"""

BROKEN = """#include "common/attention_params.cuh"
__global__ void broken(const flashcore::AttentionParams __grid_constant__ p) {
  undeclared_thing = 1;
}
"""


def problem(flashcore):
    return flashcore.problem(dtype="fp16", head_dim=64, heads=2, seq_q=128)


def test_evaluate_source_streams_compile_verdicts_and_keeps_the_lineage(flashcore, client):
    launch = {"block_m": 32, "threads": 32}
    stream = client.evaluate_source(
        problem=problem(flashcore), generation=4, arch="sm_80", tags=["pytest"],
        candidates=[flashcore.source_candidate("ok", KERNEL, name_expression="zero_output",
                                               launch=launch),
                    flashcore.source_candidate("broken", BROKEN, name_expression="broken",
                                               launch=launch)],
        options={"depth": "quick"})
    summary = stream.wait()
    assert summary is not None and summary.candidates == 2 and summary.compiled == 1
    ok_id, broken_id = stream.started.candidate_ids
    ok, broken = stream.verdicts[ok_id], stream.verdicts[broken_id]
    assert ok.final and ok.compile.ok and ok.resources.registers > 0
    if not stream.started.gpu_available:
        assert ok.status == flashcore.epb.CANDIDATE_STATUS_COMPILED
    assert broken.status == flashcore.epb.CANDIDATE_STATUS_COMPILE_FAILED
    assert "candidate.cu(3)" in broken.compile.log and "undeclared_thing" in broken.compile.log

    stored = client.get_candidate(broken_id)
    assert stored.source == BROKEN and stored.generation == 4 and "pytest" in stored.tags
    assert stored.verdict.status == flashcore.epb.CANDIDATE_STATUS_COMPILE_FAILED
    listed = [c.id for c in client.iter_candidates(generation=4, tag="pytest")]
    assert listed == [ok_id, broken_id]

    with pytest.raises(flashcore.FlashCoreError) as refused:
        client.evaluate_source(
            problem=problem(flashcore), arch="sm_80",
            candidates=[flashcore.source_candidate("evil", '#include "/etc/passwd"\n',
                                                   name_expression="x", launch=launch)]).wait()
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "absolute paths are not allowed" in refused.value.message
    with pytest.raises(flashcore.FlashCoreError) as missing:
        client.get_candidate(987654)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


MUTATOR = r"""
import json, sys
document = json.load(sys.stdin)
parent = document["parents"][0]
print(json.dumps({"children": [{"name": "llm-%d" % document["generation"],
                                "source": parent["source"] + "\n// from the hook\n",
                                "parent_ids": [parent["id"]] if parent["id"] else []}]}))
"""


def run_loop(flashcore, daemon, tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(Path(flashcore.__file__).resolve().parent.parent))
    done = subprocess.run([sys.executable, str(LOOP), "--address", daemon.address, "--arch",
                           "sm_80", "--head-dim", "64", "--heads", "2", "--seq-q", "256",
                           "--population", "2", "--tag", "pytest-loop", *args],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_example_loop_runs_generations_and_resumes(flashcore, daemon, client, tmp_path):
    mutator = tmp_path / "mutator.py"
    mutator.write_text(MUTATOR)
    out = run_loop(flashcore, daemon, tmp_path, "--generations", "2", "--json",
                   "--mutator-command", "%s %s" % (sys.executable, mutator))
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [line["generation"] for line in lines] == [0, 1]
    for line in lines:
        assert line["candidates"] == 2
        assert line["compiled_pct"] > 0  # the seed (the template itself) compiles
        assert line["evaluations_per_min"] > 0
        for key in ("valid_pct", "best_us", "speedup_vs_served"):
            assert key in line
    stored = list(client.iter_candidates(tag="pytest-loop", include_source=True))
    assert len(stored) == 4
    hook = [c for c in stored if c.name.startswith("llm-")]
    assert len(hook) == 2 and all(c.source.endswith("// from the hook\n") for c in hook)
    assert any(c.parent_ids for c in stored if c.generation == 1)

    resumed = run_loop(flashcore, daemon, tmp_path, "--generations", "1", "--resume")
    assert "resumed 4 stored candidates of tag pytest-loop at generation 2" in resumed
    assert "gen   2" in resumed and "valid" in resumed and "evals/min" in resumed
    assert len(list(client.iter_candidates(tag="pytest-loop"))) == 6
