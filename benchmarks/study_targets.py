"""The synthetic study with shared teacher targets against the same study with live teachers
(issue 21, item 4), one after the other on this machine, same options, same cached teachers.

Each study runs as the user runs it (`experiments/tune_loss_weights.py`, its own Ray instance)
with --teacher-targets shared or live, on one --storage-path so that the second study reuses the
teachers the first trained (their training is the same for both and is left out). Figures, per
study: device-seconds of its trials (records' wall_s x devices) plus, for shared targets, of the
writers that computed them (targets.json); the wall time of its student phases (from its "targets"
progress line to its end); and the results, which must agree (same seeds, same training).

    python benchmarks/study_targets.py                          # 1/8, 200 iterations, 3 + 6 trials
    # the default study
    python benchmarks/study_targets.py --iterations 16 --eval-every 16 --protocols 1/8 1/4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import REPO, arg_parser, machine, table

from mgd_ray.schema import read_records


def run_study(variant: str, out: str, storage: str, extra: list[str]) -> dict:
    """Run one study; return its wall times (whole, student phases) and its printed lines."""
    argv = [
        sys.executable,
        os.path.join(REPO, "experiments", "tune_loss_weights.py"),
        "--teacher-targets",
        variant,
        "--output-dir",
        out,
        "--storage-path",
        storage,
        "--quiet",
        *extra,
    ]
    started = time.monotonic()
    phases = None
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if phases is None and line.startswith("== study: targets"):
            phases = time.monotonic()
    if process.wait() != 0:
        raise SystemExit(f"{variant} study failed:\n{''.join(lines[-40:])}")
    ended = time.monotonic()
    return {"wall_s": ended - started, "phases_s": ended - (phases or started)}


def device_seconds(out: str) -> dict:
    """{"trials", "writers", "total"}: device-seconds of a finished study's trials and writers."""
    trials = sum(r.wall_s * r.num_devices for r in read_records(out))
    path = os.path.join(out, "targets.json")
    writers = 0.0
    if os.path.exists(path):
        with open(path) as f:
            writers = sum(entry["device_seconds"] for entry in json.load(f).values())
    return {"trials": trials, "writers": writers, "total": trials + writers}


def results(out: str) -> dict:
    """{(kind, variant, seed, point): final mIoU} of a finished study's trials."""
    return {
        (r.kind, r.variant, r.seed, json.dumps(r.config, sort_keys=True)): r.miou
        for r in read_records(out)
    }


# docs/benchmarks.md section 7, run A (H100, 8 images per device, per-batch BN): seconds per step
CPS_STEP = {"resnet101": 0.220, "wide_resnet50_2": 0.193}
MGD_STEP = 0.152  # ResNet-18 student, both teachers live
# GMACs of that MGD step (section 7) and of its student alone (forward + backward, about 3x the
# forward's 41.2 per 512 x 512 image, on x_m and x_l: 16 images)
MGD_GMACS, STUDENT_GMACS = 8888, 3 * 41.2 * 16
VOC_EPOCHS = {"1/16": 32, "1/8": 34, "1/4": 40, "1/2": 60}
VOC_ITERATIONS_PER_EPOCH = {"1/16": 1240, "1/8": 1158, "1/4": 992, "1/2": 662}


def voc_on_paper(search_trials: int = 16, seeds: int = 2) -> list[list]:
    """GPU-hours of a whole VOC study (4 protocols, ResNet-18) on paper, from measured step times,
    counting no evaluation or start-up: live teachers against shared targets, the student step
    from targets taken as the MGD step's student share by MACs, or by launches (a third)."""
    rows = []
    for label, student in (
        ("MAC share", MGD_STEP * STUDENT_GMACS / MGD_GMACS),
        ("a third (launch-bound)", MGD_STEP / 3),
    ):
        before = after = teachers = 0.0
        for protocol, epochs in VOC_EPOCHS.items():
            iterations = VOC_ITERATIONS_PER_EPOCH[protocol] * epochs
            # ASHA, reduction factor 2, grace 10 epochs: half stop at 10, a quarter at 20
            asha = (0.5 * 10 + 0.25 * 20 + 0.25 * epochs) / epochs
            distilling = (search_trials * asha + 5 * seeds) * iterations  # 5 rows use teachers
            supervised = seeds * iterations
            cps = sum(CPS_STEP.values()) * iterations
            # u0, u1, x_l once; x_m once per mask stream (seed)
            writer = (MGD_STEP - student) * iterations * (3 + seeds) / 4
            teachers += cps
            before += cps + distilling * MGD_STEP + supervised * student
            after += cps + writer + (distilling + supervised) * student
        rows.append(
            [
                label,
                round(student * 1000),
                round(before / 3600),
                round(after / 3600),
                round(before / after, 2),
                round((before - teachers) / (after - teachers), 2),
            ]
        )
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__)
    p.add_argument("--protocols", nargs="+", default=["1/8"])
    p.add_argument("--iterations", type=int, default=200, help="student iterations per trial")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument(
        "--order",
        nargs=2,
        default=["live", "shared"],
        choices=["live", "shared"],
        help="which study runs first (it trains the teachers the second reuses)",
    )
    p.add_argument(
        "--voc-on-paper",
        action="store_true",
        help="only print a whole VOC study's GPU-hours on paper, live against shared",
    )
    return p


def main(args: argparse.Namespace) -> None:
    if args.voc_on_paper:
        print(
            "VOC study on paper (4 protocols, 16 search trials with ASHA, 6 ablation rows x 2 "
            "seeds, ResNet-18; H100 step times of docs/benchmarks.md section 7; no evaluation "
            "or start-up)"
        )
        print(
            table(
                [
                    "student step from targets",
                    "ms",
                    "GPU-h live teachers",
                    "GPU-h shared targets",
                    "ratio",
                    "ratio without teacher training",
                ],
                voc_on_paper(),
            )
        )
        return
    print(f"machine: {machine()}")
    root = tempfile.mkdtemp(prefix="bench-study-targets-")
    storage = os.path.join(root, "storage")
    extra = [
        "--protocols",
        *args.protocols,
        "--iterations",
        str(args.iterations),
        "--eval-every",
        str(args.eval_every),
    ]
    rows, found = [], {}
    for variant in args.order:
        out = os.path.join(root, variant)
        timing = run_study(variant, out, storage, extra)
        spent = device_seconds(out)
        found[variant] = results(out)
        rows.append(
            [
                variant,
                round(spent["trials"]),
                round(spent["writers"]),
                round(spent["total"]),
                round(timing["phases_s"]),
                round(timing["wall_s"]),
            ]
        )
        print(f"  {rows[-1]}", flush=True)
    live, shared = (next(r for r in rows if r[0] == v) for v in ("live", "shared"))
    print(
        f"\nsynthetic study, protocols {' '.join(args.protocols)}, {args.iterations} student "
        f"iterations, evaluated every {args.eval_every}; default study size (search trials, "
        "ablation rows, seeds)"
    )
    print(
        table(
            [
                "teachers",
                "trial device-s",
                "writer device-s",
                "device-s in all",
                "wall s, student phases",
                "wall s, whole study",
            ],
            rows,
        )
    )
    print(
        f"device-seconds live / shared: {live[3] / shared[3]:.2f}x; student-phase wall: "
        f"{live[4] / shared[4]:.2f}x"
    )
    common = [
        k
        for k in found["live"]
        if k in found["shared"] and found["live"][k] is not None and found["shared"][k] is not None
    ]
    gap = max((abs(found["live"][k] - found["shared"][k]) for k in common), default=float("nan"))
    print(
        "trials run by both (same variant, seed and point; TPE's later points and ASHA's stops "
        f"depend on timing): {len(common)}; largest final-mIoU difference among them: {gap:.2e}; "
        f"results in {root}"
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
