"""flashcore-report: pictures of the daemon's tuning jobs (matplotlib).

    flashcore-report --out report/                  # convergence.png, trials.png,
    flashcore-report --out report/ --sdpa sdpa.json #   speedup.png, report.html

Reads every recorded job and its trials from the daemon (ListTuningJobs,
GetTuningJob) and draws:

- convergence.png: per job, every measured trial's time in the order it was
  measured, the best so far as a step line, the chosen config marked;
- trials.png: per job, every trial's time against its config (configs in tile
  order; failed, wrong and skipped ones marked at the top, in red);
- speedup.png: per shape, the tuned config against the family default (both
  measured by the same job) and, where a measurement file gives SDPA's time for
  the shape (``--sdpa``), against PyTorch SDPA;
- report.html: one self-contained page (the PNGs inlined) with a table per job.

The SDPA file is a JSON list of shapes (flashcore.plan's fields) each with
``sdpa_us``, SDPA's median time for that shape measured on the same GPU (the
daemon never runs PyTorch); a shape matches a job whose trials measured the same
dtype, head_dim, causal, batch, heads, kv_heads, seq_q, seq_k and layout.
Without it, the SDPA bars say "not measured".
"""

import argparse
import base64
import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ._resolve import DEFAULT_CONFIGS, TEMPLATE
from ._stubs import pb
from .plan import PlanError, Shape

_DTYPE_NAMES = {pb.DTYPE_FP16: "fp16", pb.DTYPE_BF16: "bf16"}
_LAYOUT_NAMES = {pb.LAYOUT_BSHD: "bshd", pb.LAYOUT_BHSD: "bhsd"}
FILES = ("convergence.png", "trials.png", "speedup.png", "report.html")


def _config_label(c) -> str:
    label = "%dx%dw%ds%d" % (c.block_m, c.block_n, c.warps, c.stages)
    if c.q_placement == pb.Q_PLACEMENT_SHARED:
        label += " qS"
    if c.smem_layout == pb.SMEM_LAYOUT_PADDED:
        label += " pad"
    return label


def _config_order(c) -> tuple:
    """Every TileConfig field in the proto's order: block_m, block_n, warps, stages, ..."""
    return tuple(getattr(c, f.name) for f in c.DESCRIPTOR.fields)


def _shape_of(problem) -> Optional[Shape]:
    try:
        return Shape(head_dim=problem.head_dim, seq_q=problem.seq_q,
                     dtype=_DTYPE_NAMES.get(problem.dtype, "fp16"), causal=problem.causal,
                     batch=problem.batch, heads=problem.heads, kv_heads=problem.kv_heads,
                     seq_k=problem.seq_k, layout=_LAYOUT_NAMES.get(problem.layout, "bshd"))
    except (TypeError, ValueError):
        return None


@dataclass
class JobView:
    """One recorded job with what the pictures need, computed once."""
    job: pb.TuningJobRecord
    trials: List[pb.TuningTrialRecord]
    shape: Optional[Shape] = None
    best: Optional[pb.TuningTrialRecord] = None
    default: Optional[pb.TuningTrialRecord] = None
    sdpa_us: Optional[float] = None

    @property
    def measured(self) -> List[pb.TuningTrialRecord]:
        """Trials the search measured (skipped ones were never run), in order."""
        return [t for t in self.trials if t.status != "skipped"]

    @property
    def title(self) -> str:
        label = self.shape.label() if self.shape else "bucket %s" % self.job.bucket
        template = "" if self.job.template_id == TEMPLATE else " [%s]" % self.job.template_id
        return "job %d: %s%s" % (self.job.id, label, template)

    @property
    def speedup_vs_default(self) -> Optional[float]:
        if self.best is None or self.default is None or self.best.median_us <= 0:
            return None
        return self.default.median_us / self.best.median_us

    @property
    def speedup_vs_sdpa(self) -> Optional[float]:
        if self.best is None or not self.sdpa_us or self.best.median_us <= 0:
            return None
        return self.sdpa_us / self.best.median_us


def _view(job: pb.TuningJobRecord, trials: Sequence[pb.TuningTrialRecord]) -> JobView:
    view = JobView(job, list(trials))
    if view.trials:
        view.shape = _shape_of(view.trials[0].shape)
    ok = [t for t in view.trials if t.status == "ok" and t.median_us > 0]
    chosen = [t for t in ok if t.id == job.best_trial_id]
    view.best = chosen[0] if chosen else (min(ok, key=lambda t: t.median_us) if ok else None)
    # The family default, what an untuned bucket is served: the sm80 family's
    # tile for the head dim (flashcore._resolve), else the job's first trial
    # (a job measures the default first).
    tile = DEFAULT_CONFIGS.get(job.problem.head_dim) if job.template_id == TEMPLATE else None
    if tile is not None:
        matches = [t for t in ok if (t.config.block_m, t.config.block_n, t.config.warps,
                                     t.config.stages) == tile]
        view.default = matches[0] if matches else None
    elif view.measured and view.measured[0].status == "ok":
        view.default = view.measured[0]
    return view


def collect(client, *, last: int = 0) -> List[JobView]:
    """Every recorded job (the ``last`` N when set) with its trials."""
    jobs = list(client.iter_tuning_jobs())
    if last > 0:
        jobs = jobs[-last:]
    return [_view(job, client.get_tuning_job(job.id).trials) for job in jobs]


def load_sdpa(path) -> Dict[Shape, float]:
    """SDPA times by shape from a JSON list of shapes with ``sdpa_us``."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PlanError("%s: %s" % (path, error)) from None
    if not isinstance(entries, list):
        raise PlanError("%s: expected a list of shapes with sdpa_us" % path)
    times = {}
    for i, entry in enumerate(entries):
        where = "%s[%d]" % (path.name, i)
        if not isinstance(entry, dict) or "sdpa_us" not in entry:
            raise PlanError("%s.sdpa_us: missing" % where)
        value = entry["sdpa_us"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise PlanError("%s.sdpa_us: expected a time in microseconds > 0, got %r"
                            % (where, value))
        shape = Shape.from_dict({k: v for k, v in entry.items() if k != "sdpa_us"}, where)
        times[shape] = float(value)
    return times


# -- drawing ------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("flashcore-report needs matplotlib: pip install 'flashcore[report]'")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _grid(plt, count: int, width: float = 5.2, height: float = 3.4):
    cols = min(3, max(count, 1))
    rows = (max(count, 1) + cols - 1) // cols
    figure, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for extra in flat[count:]:
        extra.set_visible(False)
    return figure, flat


def _no_jobs(plt, path: Path, text: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, text, ha="center", va="center")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_convergence(plt, views: List[JobView], path: Path) -> None:
    views = [v for v in views if v.measured]
    if not views:
        return _no_jobs(plt, path, "no tuning job has measured a trial yet")
    figure, axes = _grid(plt, len(views))
    for axis, view in zip(axes, views):
        xs, times, best_xs, best = [], [], [], []
        low = None
        for n, trial in enumerate(view.measured, start=1):
            if trial.status == "ok" and trial.median_us > 0:
                xs.append(n)
                times.append(trial.median_us)
                low = trial.median_us if low is None else min(low, trial.median_us)
            if low is not None:
                best_xs.append(n)
                best.append(low)
        axis.scatter(xs, times, s=14, color="#9aa5b1", label="trial", zorder=2)
        if best_xs:  # carried half a step past the last trial, so a last-step win shows
            best_xs.append(best_xs[-1] + 0.5)
            best.append(best[-1])
        axis.step(best_xs, best, where="post", color="#1f5fa8", linewidth=2,
                  label="best so far", zorder=3)
        if view.default is not None:
            n = next(i for i, t in enumerate(view.measured, start=1) if t.id == view.default.id)
            axis.scatter([n], [view.default.median_us], s=60, facecolors="none",
                         edgecolors="#495057", linewidths=1.5, zorder=4,
                         label="family default %s" % _config_label(view.default.config))
        if view.best is not None:
            n = next(i for i, t in enumerate(view.measured, start=1) if t.id == view.best.id)
            axis.scatter([n], [view.best.median_us], s=70, marker="*", color="#d9480f",
                         zorder=4, label="chosen %s" % _config_label(view.best.config))
        axis.set_title(view.title, fontsize=9)
        axis.set_xlabel("evaluation")
        axis.set_ylabel("median time (us)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper right")
    figure.suptitle("Convergence: best time so far against evaluations", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_trials(plt, views: List[JobView], path: Path) -> None:
    views = [v for v in views if v.trials]
    if not views:
        return _no_jobs(plt, path, "no trials recorded yet")
    figure, axes = _grid(plt, len(views), width=6.0, height=3.8)
    for axis, view in zip(axes, views):
        configs = sorted({_config_order(t.config): t.config for t in view.trials}.items())
        index = {key: i for i, (key, _) in enumerate(configs)}
        ok = [t for t in view.trials if t.status == "ok" and t.median_us > 0]
        ok_ids = {t.id for t in ok}
        bad = [t for t in view.trials if t.id not in ok_ids]
        top = max((t.median_us for t in ok), default=1.0) * 1.08
        axis.scatter([index[_config_order(t.config)] for t in ok], [t.median_us for t in ok],
                     s=16, color="#1f5fa8", label="ok", zorder=3)
        if bad:
            axis.scatter([index[_config_order(t.config)] for t in bad], [top] * len(bad),
                         s=18, marker="x", color="#c92a2a",
                         label="failed / wrong / skipped (%d)" % len(bad), zorder=3)
        if view.default is not None:
            axis.scatter([index[_config_order(view.default.config)]], [view.default.median_us],
                         s=60, facecolors="none", edgecolors="#495057", linewidths=1.5,
                         zorder=4, label="family default")
        if view.best is not None:
            axis.scatter([index[_config_order(view.best.config)]], [view.best.median_us], s=80,
                         marker="*", color="#d9480f", zorder=5, label="chosen")
        step = max(1, len(configs) // 24)
        ticks = list(range(0, len(configs), step))
        axis.set_xticks(ticks)
        axis.set_xticklabels([_config_label(configs[i][1]) for i in ticks], rotation=70,
                             fontsize=6, ha="right")
        axis.set_title(view.title, fontsize=9)
        axis.set_ylabel("median time (us)")
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=7)
    figure.suptitle("All trials: time against config (tile order)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_speedup(plt, views: List[JobView], path: Path) -> None:
    views = [v for v in views if v.best is not None]
    if not views:
        return _no_jobs(plt, path, "no tuning job has a result yet")
    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(views) + 2), 4.2))
    width = 0.38
    xs = list(range(len(views)))
    default = [v.speedup_vs_default or 0.0 for v in views]
    sdpa = [v.speedup_vs_sdpa or 0.0 for v in views]
    bars = axis.bar([x - width / 2 for x in xs], default, width, color="#1f5fa8",
                    label="vs family default")
    sdpa_bars = axis.bar([x + width / 2 for x in xs], sdpa, width, color="#2b8a3e",
                         label="vs PyTorch SDPA")
    for bar, value in zip(bars, [v.speedup_vs_default for v in views]):
        axis.annotate("%.2fx" % value if value else "n/a", (bar.get_x() + bar.get_width() / 2,
                      bar.get_height()), ha="center", va="bottom", fontsize=7)
    for bar, value in zip(sdpa_bars, [v.speedup_vs_sdpa for v in views]):
        axis.annotate("%.2fx" % value if value else "not\nmeasured",
                      (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=7)
    axis.axhline(1.0, color="#495057", linewidth=1, linestyle="--")
    axis.set_xticks(xs)
    axis.set_xlim(-1, len(views))
    axis.set_xticklabels([v.title.replace(": ", ":\n", 1) for v in views], fontsize=7)
    axis.set_ylabel("speedup (x)")
    top = max(default + sdpa + [1.0])
    axis.set_ylim(0, top * 1.2)
    axis.set_title("Speedup of the tuned config per shape", fontsize=11)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_html(views: List[JobView], out: Path, source: str) -> Path:
    """One page, no external files: the three PNGs inlined and a row per job."""
    rows = []
    for v in views:
        best = v.best
        rows.append("<tr>" + "".join("<td>%s</td>" % html.escape(str(cell)) for cell in (
            v.job.id, v.shape.label() if v.shape else "", v.job.template_id, v.job.bucket,
            v.job.device, v.job.arch, v.job.status, v.job.evaluations,
            _config_label(best.config) if best else "-",
            "%.2f" % best.median_us if best else "-",
            "%.2f" % v.default.median_us if v.default else "-",
            "%.2fx" % v.speedup_vs_default if v.speedup_vs_default else "-",
            "%.2fx" % v.speedup_vs_sdpa if v.speedup_vs_sdpa else "not measured")) + "</tr>")
    header = "".join("<th>%s</th>" % h for h in (
        "job", "shape", "template", "bucket", "device", "arch", "status", "evaluations",
        "chosen config", "tuned us", "default us", "vs default", "vs SDPA"))
    images = "".join(
        '<h2>%s</h2>\n<img alt="%s" src="%s">\n' % (title, name, _png_data(out / name))
        for title, name in (("Convergence", "convergence.png"), ("All trials", "trials.png"),
                            ("Speedup per shape", "speedup.png")))
    page = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>FlashCore tuning report</title>
<style>body{font-family:sans-serif;margin:2em;color:#212529}table{border-collapse:collapse;
font-size:13px}td,th{border:1px solid #ced4da;padding:3px 8px;text-align:left}
th{background:#f1f3f5}img{max-width:100%%;border:1px solid #dee2e6}</style></head>
<body><h1>FlashCore tuning report</h1>
<p>%d tuning jobs from %s. Times are the daemon's medians (us); speedups divide the family
default's (or SDPA's) time by the chosen config's.</p>
<table><thead><tr>%s</tr></thead><tbody>
%s
</tbody></table>
%s</body></html>
""" % (len(views), html.escape(source), header, "\n".join(rows), images)
    path = out / "report.html"
    path.write_text(page)
    return path


def render(views: List[JobView], out, source: str = "flashcored") -> List[Path]:
    """Writes the three PNGs and the HTML page into ``out``; returns their paths."""
    plt = _pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    draw_convergence(plt, views, out / "convergence.png")
    draw_trials(plt, views, out / "trials.png")
    draw_speedup(plt, views, out / "speedup.png")
    write_html(views, out, source)
    return [out / name for name in FILES]


def report(client, out, *, sdpa: Optional[Dict[Shape, float]] = None, last: int = 0) -> List[Path]:
    """Reads the daemon's jobs and trials through ``client`` and renders them into ``out``."""
    views = collect(client, last=last)
    for view in views:
        if sdpa and view.shape is not None:
            view.sdpa_us = sdpa.get(view.shape)
    return render(views, out, client.address)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="flashcore-report",
        description="Draw the daemon's tuning jobs: convergence, all trials, speedup per shape "
                    "(PNG files and one self-contained HTML page).")
    parser.add_argument("--address", help="daemon address ($FLASHCORE_ADDRESS, else "
                        "127.0.0.1:50051)")
    parser.add_argument("--out", default="flashcore-report", help="output folder "
                        "(default: ./flashcore-report)")
    parser.add_argument("--last", type=int, default=0, help="only the last N jobs")
    parser.add_argument("--sdpa", metavar="FILE", help="JSON list of shapes with sdpa_us "
                        "(SDPA's time on the same GPU) for the SDPA speedups")
    args = parser.parse_args(argv)
    from .client import Client
    from .errors import FlashCoreError
    try:
        sdpa = load_sdpa(args.sdpa) if args.sdpa else None
    except PlanError as error:
        print("flashcore-report: %s" % error, file=sys.stderr)
        return 2
    try:
        with Client(args.address) as client:
            paths = report(client, args.out, sdpa=sdpa, last=args.last)
    except FlashCoreError as error:
        print("flashcore-report: %s" % error, file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
