"""Whole-model tuning without a GPU: plan files (JSON and YAML) and their errors, which
name the entry and the field; Client.tune_many and flashcore-tune-plan against a real
daemon without GPU workers, where every shape must come back FAILED_PRECONDITION with
the daemon's reason, one by one, in the report, the table and the JSON.
"""

import io
import json
import os
import subprocess
import sys

import grpc
import pytest

SHAPES = [
    {"dtype": "fp16", "head_dim": 128, "batch": 2, "heads": 16, "kv_heads": 4, "seq_q": 1000,
     "causal": True},
    {"dtype": "bf16", "head_dim": 64, "heads": 8, "seq_q": 1, "seq_k": 4096},
]

YAML_PLAN = """\
# two shapes of a model
shapes:
  - {dtype: fp16, head_dim: 128, batch: 2, heads: 16, kv_heads: 4, seq_q: 1000, causal: true}
  - dtype: bf16
    head_dim: 64
    heads: 8
    seq_q: 1
    seq_k: 4096
"""


def test_json_and_yaml_plans_give_the_same_shapes(flashcore, tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps(SHAPES))
    (tmp_path / "plan.yaml").write_text(YAML_PLAN)
    from_json = flashcore.load_plan(tmp_path / "plan.json")
    from_yaml = flashcore.load_plan(tmp_path / "plan.yaml")
    assert from_json == from_yaml
    first, second = from_json
    assert (first.head_dim, first.batch, first.heads, first.kv_heads, first.seq_q, first.seq_k,
            first.causal, first.layout) == (128, 2, 16, 4, 1000, 1000, True, "bhsd")
    assert (second.dtype, second.kv_heads, second.seq_q, second.seq_k) == ("bf16", 8, 1, 4096)
    assert first.label() == "fp16 D128 causal 2x16/4 S1000"
    # A saved plan reads back as the same shapes.
    flashcore.save_plan(from_json, tmp_path / "again.json")
    assert flashcore.load_plan(tmp_path / "again.json") == from_json


@pytest.mark.parametrize("text, suffix, expected", [
    ('[{"seq_q": 128}]', ".json", "plan.json[0].head_dim: missing"),
    ('[{"head_dim": "64", "seq_q": 128}]', ".json", "plan.json[0].head_dim: expected an integer"),
    ('[{"head_dim": 64, "seq_q": 128}, {"head_dim": 64, "seq_q": 0}]', ".json",
     "plan.json[1].seq_q: must be >= 1"),
    ('[{"head_dim": 64, "seq_q": 128, "sequence": 3}]', ".json",
     "plan.json[0].sequence: unknown field"),
    ('[{"head_dim": 64, "seq_q": 128, "dtype": "fp32"}]', ".json",
     "plan.json[0].dtype: 'fp32' is not one of fp16, bf16"),
    ('[{"head_dim": 64, "seq_q": 128, "layout": "sbhd"}]', ".json", "plan.json[0].layout"),
    ('[{"head_dim": 64, "seq_q": 128, "causal": "yes"}]', ".json",
     "plan.json[0].causal: expected true or false"),
    ('[{"head_dim": 64, "seq_q": 128, "heads": 6, "kv_heads": 4}]', ".json",
     "plan.json[0].kv_heads: 4 must divide heads 6"),
    ('[{"head_dim": 64, "seq_q": true}]', ".json", "plan.json[0].seq_q: expected an integer"),
    ('{"shape": []}', ".json", "unknown top-level field 'shape'"),
    ('[]', ".json", "plan.json: the list of shapes is empty"),
    ('[{"head_dim": 64,', ".json", "plan.json: not valid JSON"),
    ('shapes:\n  - {head_dim: 64, seq_q: 128}\n  - {head_dim: 64}\n', ".yaml",
     "plan.yaml.shapes[1].seq_q: missing"),
    ('shapes: [{head_dim: 64, seq_q: [}\n', ".yml", "not valid YAML"),
    ('- 64\n', ".yaml", "plan.yaml[0]: expected a mapping of shape fields, got int"),
])
def test_plan_errors_name_the_entry_and_field(flashcore, tmp_path, text, suffix, expected):
    path = tmp_path / ("plan" + suffix)
    path.write_text(text)
    with pytest.raises(flashcore.PlanError) as raised:
        flashcore.load_plan(path)
    assert expected in str(raised.value)


def test_missing_plan_file_is_named(flashcore, tmp_path):
    with pytest.raises(flashcore.PlanError, match="nothing.json: cannot read"):
        flashcore.load_plan(tmp_path / "nothing.json")


def _require_no_workers(client):
    info = client.server_info()
    if info.gpu_available:
        pytest.skip("this daemon has a GPU (%s); the refusals below need one without"
                    % info.gpu_name)


def test_tune_many_reports_failed_precondition_per_shape(flashcore, client):
    _require_no_workers(client)
    shapes = flashcore.parse_plan(SHAPES) + [flashcore.Shape(head_dim=64, seq_q=256)]
    seen = []
    bar = io.StringIO()
    report = client.tune_many(shapes, max_evaluations=8, stream=bar, on_outcome=seen.append)
    assert len(report) == 3 and len(seen) == 3
    for outcome, shape in zip(report, shapes):
        assert outcome.shape == shape
        assert not outcome.ok and outcome.result is None and outcome.speedup is None
        assert outcome.code == "FAILED_PRECONDITION"
        assert outcome.error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert outcome.error.message.startswith(
            "Tune: tuning needs a GPU evaluation worker and the daemon has none: ")
    assert len(report.failed) == 3
    table = report.table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["shape", "config", "tuned"]
    assert "fp16 D128 causal 2x16/4 S1000" in lines[1] and "FAILED_PRECONDITION: Tune:" in lines[1]
    assert "bf16 D64 1x8 S1x4096" in lines[2]
    assert lines[-1] == "0 of 3 shapes tuned, 3 failed"
    # The tqdm bar ran on the given stream, through all three shapes.
    assert "3/3" in bar.getvalue()


def test_tune_many_takes_dicts_and_refuses_a_bad_one_by_field(flashcore, client):
    with pytest.raises(flashcore.PlanError, match=r"shapes\[1\].head_dim: missing"):
        client.tune_many([SHAPES[0], {"seq_q": 3}], progress=False)


def test_tune_many_invalid_shape_is_its_own_error(flashcore, client):
    _require_no_workers(client)
    # head_dim 80 is served by no family: refused for that shape, the next still tried.
    report = client.tune_many([flashcore.Shape(head_dim=80, seq_q=128),
                               flashcore.Shape(head_dim=64, seq_q=128)], progress=False)
    assert report[0].code == "INVALID_ARGUMENT" and "head_dim" in report[0].error.message
    assert report[1].code == "FAILED_PRECONDITION"


def test_tune_plan_command(flashcore, daemon, tmp_path):
    from flashcore import cli_tune_plan
    plan = tmp_path / "plan.yaml"
    plan.write_text(YAML_PLAN)
    out = tmp_path / "outcomes.json"
    package_root = os.path.dirname(os.path.dirname(flashcore.__file__))
    env = dict(os.environ, PYTHONPATH=package_root)
    env.pop("FLASHCORE_ADDRESS", None)
    run = subprocess.run([sys.executable, "-m", "flashcore.cli_tune_plan", str(plan),
                          "--address", daemon.address, "--max-evaluations", "8",
                          "--json", str(out)], capture_output=True, text=True, env=env,
                         timeout=120)
    info = flashcore.Client(daemon.address).server_info()
    if info.gpu_available:
        pytest.skip("this daemon has a GPU")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "0 of 2 shapes tuned, 2 failed" in run.stdout
    assert run.stdout.count("FAILED_PRECONDITION") == 2
    rows = json.loads(out.read_text())
    assert [row["status"] for row in rows] == ["FAILED_PRECONDITION"] * 2
    assert rows[1]["shape"]["seq_k"] == 4096 and "GPU evaluation worker" in rows[1]["error"]
    # A plan that does not parse: exit 2, the field named on stderr, no daemon asked.
    bad = tmp_path / "bad.json"
    bad.write_text('[{"head_dim": 64, "seq_q": 128, "kv_heads": -1}]')
    assert cli_tune_plan.main([str(bad), "--address", "127.0.0.1:1"]) == 2
    run = subprocess.run([sys.executable, "-m", "flashcore.cli_tune_plan", str(bad)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 2
    assert "bad.json[0].kv_heads: must be >= 0, got -1" in run.stderr
