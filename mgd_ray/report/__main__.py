"""`python -m mgd_ray.report RESULTS_DIR`: regenerate the tables, plots and REPORT.md of a
study."""

from __future__ import annotations

import argparse
import os
import sys

from mgd_ray.report.write import generate_report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mgd_ray.report",
        description="Write ablation / search / threshold / importance tables (Markdown, CSV, "
        "LaTeX) and PNG plots into RESULTS_DIR/report/ and an index RESULTS_DIR/REPORT.md, "
        "from a finished, running or interrupted study.",
    )
    parser.add_argument(
        "results_dir",
        metavar="RESULTS_DIR",
        help="the study's results folder (holding study.json and trials/)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the hyperparameter-importance evaluator (default 0)",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, str]:
    if not os.path.isdir(args.results_dir):
        sys.exit(
            f"python -m mgd_ray.report: RESULTS_DIR {args.results_dir!r} is not a folder; "
            "expected a study's results folder (holding study.json and trials/)"
        )
    paths = generate_report(args.results_dir, seed=args.seed)
    print(f"report: {paths['index']}")
    for name, path in sorted(paths.items()):
        if name != "index":
            print(f"  {name}: {path}")
    return paths


if __name__ == "__main__":
    main(get_args_parser().parse_args())
