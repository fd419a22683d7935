"""Tuning many shapes in one go: Client.tune_many and `flashcore tune-plan FILE`.

Each shape is one Tune call, in order (the daemon runs one job per GPU at a
time, so sending them together would only queue them). A shape that fails
(FAILED_PRECONDITION from a daemon without GPU workers, INVALID_ARGUMENT for
a shape no family serves, ...) is reported with its gRPC code and message and
the next one is tuned; nothing is raised for it.

The speedup of a shape is the family default's time over the tuned config's:
the job measures the default among its first trials (server/tuning/
tuning_job.cpp) and re-times it beside the finalists, so both numbers come
from the same job on the same GPU.
A stored result returned without tuning (``from_database``) carries neither,
and its speedup is unknown ("-").
"""

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, TextIO

from ._resolve import DEFAULT_CONFIGS, TEMPLATE
from ._stubs import pb
from .errors import FlashCoreError
from .plan import PlanError, Shape, ShapeLike


@dataclass
class ShapeOutcome:
    """What tuning one shape gave: a result, or the error, with the default's time."""
    shape: Shape
    result: Optional[pb.TuningResult] = None
    error: Optional[FlashCoreError] = None
    default_us: Optional[float] = None     # the family default's (re-timed) median
    evaluations: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def code(self) -> str:
        """"OK", or the gRPC status name of the failure ("FAILED_PRECONDITION", ...)."""
        return "OK" if self.error is None else self.error.code.name

    @property
    def speedup(self) -> Optional[float]:
        if self.result is None or not self.default_us or self.result.median_us <= 0:
            return None
        return self.default_us / self.result.median_us


@dataclass
class TunePlanReport:
    """The outcome of every shape, in the order given; ``table()`` formats them."""
    outcomes: List[ShapeOutcome] = field(default_factory=list)

    def __iter__(self):
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def __getitem__(self, index) -> ShapeOutcome:
        return self.outcomes[index]

    @property
    def failed(self) -> List[ShapeOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def table(self) -> str:
        """One row per shape: config, tuned and default time, speedup, or the error."""
        header = ("shape", "config", "tuned us", "default us", "speedup", "evals", "status")
        rows = []
        for o in self.outcomes:
            if o.ok:
                c = o.result.config
                config = "%dx%dw%ds%d" % (c.block_m, c.block_n, c.warps, c.stages)
                status = "stored" if o.result.from_database else "tuned"
                rows.append((o.shape.label(), config, "%.2f" % o.result.median_us,
                             "%.2f" % o.default_us if o.default_us else "-",
                             "%.2fx" % o.speedup if o.speedup else "-",
                             str(o.result.evaluations), status))
            else:
                rows.append((o.shape.label(), "-", "-", "-", "-", str(o.evaluations),
                             "%s: %s" % (o.code, o.error.message)))
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header) - 1)]
        lines = []
        for r in [header] + rows:
            cells = [r[i].ljust(widths[i]) if i == 0 or i == 1 else r[i].rjust(widths[i])
                     for i in range(len(header) - 1)]
            lines.append("  ".join(cells + [r[-1]]).rstrip())
        tuned = [o for o in self.outcomes if o.ok]
        lines.append("%d of %d shapes tuned, %d failed" % (len(tuned), len(self.outcomes),
                                                          len(self.outcomes) - len(tuned)))
        return "\n".join(lines)


def default_median_us(result: pb.TuningResult, trials: List[pb.TuneTrial],
                      template_id: str) -> Optional[float]:
    """The family default's time in this job: its re-timed finalist entry, else its
    measurement. The sm80 family's default tile is flashcore._resolve's (what an
    untuned bucket is served); for another family, the job's first trial (a job
    measures the default first)."""
    tile = DEFAULT_CONFIGS.get(result.problem.head_dim) if template_id == TEMPLATE else None
    if tile is None:
        if not trials or trials[0].status != "ok":
            return None
        tile = _tile(trials[0].config)
    for finalist in result.finalists:
        if _tile(finalist.config) == tile:
            return finalist.median_us
    for trial in trials:
        if trial.status == "ok" and _tile(trial.config) == tile:
            return trial.median_us
    return None


def _tile(config) -> tuple:
    return (config.block_m, config.block_n, config.warps, config.stages)


class _Progress:
    """A tqdm bar over the shapes (evaluations and best time as its postfix), or plain lines
    when tqdm is not installed or ``enabled`` is False."""

    def __init__(self, total: int, enabled: bool, stream: TextIO):
        self.bar = None
        self.stream = stream
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="shape", file=stream, dynamic_ncols=True)

    def shape(self, index: int, total: int, shape: Shape) -> None:
        if self.bar is not None:
            self.bar.set_description(shape.label())
        elif self.enabled:
            print("[%d/%d] tuning %s" % (index + 1, total, shape.label()), file=self.stream,
                  flush=True)

    def event(self, evaluations: int, best_us: Optional[float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("evals %d best %s" % (
                evaluations, "%.2f us" % best_us if best_us else "-"))

    def done(self, outcome: ShapeOutcome) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if not outcome.ok:
                self.bar.write("%s: %s" % (outcome.shape.label(), outcome.error), file=self.stream)
        elif self.enabled:
            print("  %s" % ("%.2f us" % outcome.result.median_us if outcome.ok
                            else str(outcome.error)), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tune_many(client, shapes: Iterable[ShapeLike], *, template_id: str = "attention_fwd",
              arch: str = "", searcher: str = "", max_evaluations: int = 0,
              time_budget_ms: int = 0, patience: int = 0, force: bool = False, seed: int = 0,
              timeout: Optional[float] = None, progress: bool = True,
              stream: Optional[TextIO] = None,
              on_outcome: Optional[Callable[[ShapeOutcome], None]] = None) -> TunePlanReport:
    """Tunes each shape with ``client.tune`` (see Client.tune_many)."""
    shapes = [Shape.from_dict(s, "shapes[%d]" % i) for i, s in enumerate(shapes)]
    report = TunePlanReport()
    bar = _Progress(len(shapes), progress, stream or sys.stderr)
    try:
        for index, shape in enumerate(shapes):
            bar.shape(index, len(shapes), shape)
            outcome = ShapeOutcome(shape)
            started = time.monotonic()
            trials = []
            best_us = None
            try:
                tune = client.tune(pb.TuneRequest(
                    kernel=shape.kernel_request(template_id, arch), searcher=searcher,
                    max_evaluations=max_evaluations, time_budget_ms=time_budget_ms,
                    patience=patience, force=force, seed=seed), timeout=timeout)
                for event in tune:
                    kind = event.WhichOneof("event")
                    if kind == "trial":
                        trials.append(event.trial)
                        outcome.evaluations = event.trial.evaluations
                    elif kind == "best":
                        best_us = event.best.median_us
                    bar.event(outcome.evaluations, best_us)
                outcome.result = tune.result
                if outcome.result is None:
                    raise FlashCoreError(_cancelled_code(), "Tune: the stream ended without a result")
                outcome.default_us = default_median_us(outcome.result, trials, template_id)
            except FlashCoreError as error:
                outcome.result, outcome.error = None, error
            outcome.seconds = time.monotonic() - started
            report.outcomes.append(outcome)
            bar.done(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    finally:
        bar.close()
    return report


def _cancelled_code():
    import grpc
    return grpc.StatusCode.CANCELLED


__all__ = ["PlanError", "ShapeOutcome", "TunePlanReport", "tune_many"]
