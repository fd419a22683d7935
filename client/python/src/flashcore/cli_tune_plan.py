"""flashcore-tune-plan FILE: tune every shape of a JSON or YAML plan file.

    flashcore-tune-plan shapes.yaml --max-evaluations 40
    python -m flashcore.cli_tune_plan shapes.json --json outcomes.json

The plan format is flashcore.plan's (a list of shapes; ``flashcore.torch.
record_shapes()`` writes one with ``shapes.save(path)``). A progress bar
(tqdm) runs on stderr; the summary table (speedup per shape against the family
default) goes to stdout. Exit status: 0 when every shape tuned, 1 when any
failed (each with its gRPC code in the table), 2 for a plan that does not parse
or bad options.
"""

import argparse
import json
import sys
from typing import List, Optional

from .client import Client
from .plan import PlanError, load_plan


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashcore-tune-plan",
        description="Tune every attention shape of a JSON or YAML plan file on flashcored.")
    parser.add_argument("plan", help="plan file (.json, .yaml or .yml): a list of shapes")
    parser.add_argument("--address", help="daemon address ($FLASHCORE_ADDRESS, else "
                        "127.0.0.1:50051)")
    parser.add_argument("--template", default="attention_fwd", help="template id "
                        "(attention_fwd, attention_fwd_sm90, ...)")
    parser.add_argument("--arch", default="", help="arch to tune for (the daemon's GPU)")
    parser.add_argument("--searcher", default="", help="evolutionary (default), random, exhaustive")
    parser.add_argument("--max-evaluations", type=int, default=0, help="per shape; 0: the daemon's")
    parser.add_argument("--time-budget-ms", type=int, default=0, help="per shape; 0: the daemon's")
    parser.add_argument("--patience", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="tune shapes already tuned")
    parser.add_argument("--json", metavar="OUT", help="also write the outcomes as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def outcomes_json(report) -> list:
    rows = []
    for o in report:
        row = {"shape": o.shape.to_dict(), "status": o.code, "evaluations": o.evaluations,
               "seconds": round(o.seconds, 3)}
        if o.ok:
            c = o.result.config
            row.update(config={"block_m": c.block_m, "block_n": c.block_n, "warps": c.warps,
                               "stages": c.stages},
                       key=o.result.key, median_us=o.result.median_us,
                       default_us=o.default_us, speedup=o.speedup,
                       from_database=o.result.from_database, bucket=o.result.bucket)
        else:
            row.update(error=o.error.message, detail=o.error.detail)
        rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        shapes = load_plan(args.plan)
    except PlanError as error:
        print("flashcore-tune-plan: %s" % error, file=sys.stderr)
        return 2
    with Client(args.address) as client:
        report = client.tune_many(shapes, template_id=args.template, arch=args.arch,
                                  searcher=args.searcher, max_evaluations=args.max_evaluations,
                                  time_budget_ms=args.time_budget_ms, patience=args.patience,
                                  force=args.force, progress=not args.no_progress)
    print(report.table())
    if args.json:
        with open(args.json, "w") as out:
            json.dump(outcomes_json(report), out, indent=2)
            out.write("\n")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
