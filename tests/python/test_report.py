"""Tuning that succeeds without a GPU, and its pictures: tune_many against the synthetic
daemon (flashcored's own code, tests/python/synthetic_daemon.cpp, where the synthetic test
objective stands in for GPU timing), ListTuningJobs/GetTuningJob from Python, and
flashcore-report's PNGs and self-contained HTML page drawn from what those jobs recorded.
"""

import base64
import json
import os
import struct
import subprocess
import sys
from html.parser import HTMLParser

import grpc
import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The sm_86 head_dim 256 space is small (tests/rpc/test_tune.cpp's small_tune): the one
# job compiles its 24 configs of the small test template (a cancelled job and paging are
# tested in rpc/test_tune.cpp, a report without results below, without a daemon).
SHAPE = dict(head_dim=256, seq_q=1000, batch=2, heads=8)
TUNE = dict(arch="sm_86", max_evaluations=6, time_budget_ms=3_600_000, seed=7, progress=False)


@pytest.fixture(scope="module")
def tuned(flashcore, synthetic_daemon):
    client = flashcore.Client(synthetic_daemon.address, timeout=300)
    report = client.tune_many([SHAPE], **TUNE)
    yield client, report
    client.close()


def test_tune_many_tunes_each_shape_and_reports_its_speedup(flashcore, tuned):
    client, report = tuned
    assert [o.code for o in report] == ["OK"], report.table()
    for outcome in report:
        result = outcome.result
        assert result.device == "Synthetic Test Device" and result.arch == "sm_86"
        assert not result.from_database and result.evaluations == outcome.evaluations > 0
        # The family default was measured by the same job; the winner is never slower.
        assert outcome.default_us and outcome.default_us > 0
        assert outcome.speedup >= 1.0
    table = report.table().splitlines()
    assert table[1].startswith("fp16 D256 2x8 S1000") and table[1].endswith("tuned")
    assert "%.2fx" % report[0].speedup in table[1]
    assert table[-1] == "1 of 1 shapes tuned, 0 failed"
    # Tuned again: the stored result, without a speedup (no job measured the default).
    again = client.tune_many([SHAPE], **TUNE)
    assert [o.result.from_database for o in again] == [True]
    assert [o.speedup for o in again] == [None]
    assert again.table().splitlines()[1].endswith("stored")


def test_recorded_jobs_and_trials_over_grpc(flashcore, tuned):
    client, report = tuned
    jobs = list(client.iter_tuning_jobs(page_size=1))
    assert [j.status for j in jobs] == ["succeeded"]
    assert jobs[0].problem.head_dim == 256 and jobs[0].device == "Synthetic Test Device"
    job = client.get_tuning_job(jobs[0].id)
    assert job.job.id == jobs[0].id and job.job.bucket == report[0].result.bucket
    measured = [t for t in job.trials if t.status != "skipped"]
    assert len(measured) == report[0].evaluations
    chosen = [t for t in job.trials if t.id == job.job.best_trial_id]
    assert len(chosen) == 1 and chosen[0].config.block_m == report[0].result.config.block_m
    assert all(t.shape.seq_q == 1000 and len(t.key) == 64 for t in job.trials)
    with pytest.raises(flashcore.FlashCoreError) as raised:
        client.get_tuning_job(987654)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND and "job_id" in raised.value.message
    with pytest.raises(flashcore.FlashCoreError) as raised:
        client.list_tuning_jobs(page_token="not-a-token")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in raised.value.message


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.rows, self.external = [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "tr":
            self.rows += 1
        for name in ("src", "href"):
            if name in attrs and not attrs[name].startswith("data:"):
                self.external.append(attrs[name])


def _check_png(data: bytes):
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 300 and height >= 150
    return width, height


def test_report_draws_pngs_and_one_self_contained_page(flashcore, tuned, tmp_path):
    client, report = tuned
    from flashcore import report as reporting
    paths = reporting.report(client, tmp_path / "out")
    assert [p.name for p in paths] == list(reporting.FILES)
    for path in paths[:3]:
        _check_png(path.read_bytes())
    import matplotlib.image
    pixels = matplotlib.image.imread(str(tmp_path / "out" / "convergence.png"))
    assert pixels.std() > 0.05  # something was drawn, not a blank canvas
    page = _Page()
    text = paths[3].read_text()
    page.feed(text)
    assert page.external == []
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        _check_png(base64.b64decode(src.split(",", 1)[1]))
    assert page.rows == 1 + 1  # header and one row per job
    assert "fp16 D256 2x8 S1000" in text and "%.2fx" % report[0].speedup in text
    assert "not measured" in text


def test_report_without_results_still_draws(flashcore, tmp_path):
    from flashcore import pb
    from flashcore import report as reporting
    # No job yet, and a job cancelled before it measured anything.
    cancelled = reporting._view(pb.TuningJobRecord(id=3, template_id="attention_fwd",
                                                   status="cancelled"), [])
    for views, folder in (([], "empty"), ([cancelled], "cancelled")):
        paths = reporting.render(views, tmp_path / folder)
        for path in paths[:3]:
            _check_png(path.read_bytes())
        page = _Page()
        page.feed(paths[3].read_text())
        assert len(page.images) == 3 and page.rows == 1 + len(views)


def test_report_command_with_sdpa_times(flashcore, tuned, synthetic_daemon, tmp_path):
    client, report = tuned
    best = report[0].result.median_us
    sdpa = tmp_path / "sdpa.json"
    sdpa.write_text(json.dumps([dict(SHAPE, sdpa_us=best * 1.5), dict(SHAPE, seq_q=7, sdpa_us=1)]))
    package_root = os.path.dirname(os.path.dirname(flashcore.__file__))
    env = dict(os.environ, PYTHONPATH=package_root)
    run = subprocess.run([sys.executable, "-m", "flashcore.report", "--address",
                          synthetic_daemon.address, "--out", str(tmp_path / "r"),
                          "--sdpa", str(sdpa)], capture_output=True, text=True, env=env,
                         timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.split() == [str(tmp_path / "r" / name) for name in
                                  ("convergence.png", "trials.png", "speedup.png",
                                   "report.html")]
    text = (tmp_path / "r" / "report.html").read_text()
    assert "1.50x" in text  # SDPA's time over the tuned one, for the matching shape
    assert "not measured" not in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([dict(SHAPE, sdpa_us="fast")]))
    run = subprocess.run([sys.executable, "-m", "flashcore.report", "--address",
                          synthetic_daemon.address, "--out", str(tmp_path / "x"),
                          "--sdpa", str(bad)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert run.returncode == 2 and "bad.json[0].sdpa_us" in run.stderr
