"""The command line: `mgd-ray study|report` (the console entry point) and
experiments/tune_loss_weights.py, which runs `study` with the same options."""

from __future__ import annotations

import argparse
import sys

from .config import DATASETS, PROTOCOLS, STUDENTS
from .distributed.cluster import UnmeetableResources
from .distributed.console import study_console
from .distributed.options import resolve_study
from .distributed.plan import plan_study
from .distributed.progress import latest_line, live_status
from .distributed.study import StudyInterrupted, run_study
from .distributed.study_config import StudyConfig
from .distributed.tracking import check_tracking
from .schema import ABLATION_VARIANTS

STUDY_HELP = """Search MGD loss weights and pseudo-label confidence thresholds per partition
protocol (`mgd-ray study` and `python experiments/tune_loss_weights.py` take the same options).

    python experiments/tune_loss_weights.py              # the synthetic study on this machine
    mgd-ray study --smoke                                # the smallest complete run
    python experiments/tune_loss_weights.py --dataset voc --data-root /data/VOC2012 \
        --protocols 1/16 1/8 1/4 1/2 --gpus-per-trial 1 --storage-path s3://bucket/mgd \
        --address auto

On VOC and Cityscapes every network starts from torchvision's ImageNet weights (--pretrained
imagenet, the paper's regime): the files are found in --pretrained-dir or torch hub's cache, or
downloaded, on this machine before Ray starts, and copied to STORAGE_PATH/pretrained/ for the
workers. The synthetic set trains from scratch (--pretrained none).
"""

D = StudyConfig().options()  # the defaults of options no preset or machine decides


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Every option of a study, named as options.OPTIONS names it; one not given is None (or its
    flag's off value), and options.resolve_study decides it."""
    p = argparse.ArgumentParser(
        prog=prog, description=STUDY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--dataset", choices=DATASETS, help=f"(default: {D['dataset']})")
    add(
        "--data-root",
        help="dataset folder (VOC: JPEGImages/, SegmentationClassAug/, ImageSets/; Cityscapes: "
        "leftImg8bit/, gtFine/); not needed for synthetic",
    )
    add(
        "--split-dir",
        help="folder with labeled.txt / unlabeled.txt (or <protocol>/ subfolders); default: the "
        "paper's lists on VOC and Cityscapes, else a seeded split written to OUTPUT_DIR/splits",
    )
    add(
        "--protocols",
        nargs="+",
        metavar="P",
        help=f"partition protocols, from {', '.join(PROTOCOLS)} (default: "
        f"{' '.join(D['protocols'])})",
    )
    add("--student", choices=STUDENTS, help=f"(default: {D['student']})")
    add(
        "--num-samples",
        type=int,
        help="search trials per protocol, the paper's defaults first (default: the "
        "dataset preset's: 3 for synthetic, 16 for VOC and Cityscapes)",
    )
    add(
        "--seeds",
        type=int,
        help="seeds per ablation row (default: the preset's: 1 for synthetic, 2 otherwise)",
    )
    add(
        "--no-ablation",
        dest="ablation",
        action="store_false",
        help="search only, no ablation runs",
    )
    add(
        "--ablation-variants",
        nargs="+",
        metavar="V",
        help=f"ablation rows to run, from {', '.join(ABLATION_VARIANTS)} (default: all)",
    )
    add(
        "--iterations",
        type=int,
        help="student iterations (default: the dataset preset's schedule)",
    )
    add(
        "--teacher-iterations",
        type=int,
        help="teacher iterations (default: the preset's schedule)",
    )
    add(
        "--eval-every",
        type=int,
        help="evaluate and checkpoint every N iterations (default: the preset's)",
    )
    add("--crop-size", type=int, help="(default: the preset's)")
    add("--batch-size", type=int, help="images per worker and batch (default: the preset's)")
    add(
        "--loader-workers",
        type=int,
        help=f"DataLoader workers per Train worker (default: {D['loader_workers']})",
    )
    add(
        "--gpus-per-trial",
        type=int,
        help="GPUs per trial; 0 = train on the CPU (default: 1 when this machine, or the cluster "
        "at --address, has a GPU, with the preset's GPU budget for every budget option not "
        "given; else 0)",
    )
    add(
        "--trials-per-gpu",
        type=int,
        help="single-worker trials sharing each GPU (each asks Ray for 1/N GPU): small models "
        "leave a GPU mostly idle (default: 1, or the preset's GPU budget when GPUs are "
        "detected)",
    )
    add(
        "--workers-per-trial",
        type=int,
        help="Ray Train (DDP) workers per trial (default: one per GPU, or 1 on CPU)",
    )
    add("--cpus-per-worker", type=int, help=f"(default: {D['cpus_per_worker']})")
    add(
        "--max-concurrent-trials",
        type=int,
        help="default: what the cluster can hold, asked before each phase",
    )
    add(
        "--max-failures",
        type=int,
        help="restarts of a training run from its last checkpoint after a worker "
        f"failure (default: {D['max_failures']})",
    )
    add(
        "--worker-start-timeout",
        dest="worker_start_timeout_s",
        type=float,
        metavar="S",
        help="seconds a trial's Train workers may wait for their resources (a GPU node the "
        "autoscaler starts, CPUs held by another job) before the start is retried; the "
        "progress line says meanwhile what they wait for, and who holds the cluster once "
        f"they have waited that long (default: {D['worker_start_timeout_s']:g})",
    )
    add(
        "--worker-start-retries",
        type=int,
        help="retries of a worker start that timed out; then the trial "
        f"fails and the study goes on (default: {D['worker_start_retries']})",
    )
    add("--teacher-deep-checkpoint", help="trained ResNet-101 teacher (state dict file)")
    add("--teacher-wide-checkpoint", help="trained WRN-50-2 teacher (state dict file)")
    add(
        "--pretrained",
        choices=["imagenet", "none"],
        help="start students and both CPS branches of each teacher from torchvision's ImageNet "
        "weights, or from scratch (default: imagenet for VOC and Cityscapes, the paper's "
        "regime; none for synthetic)",
    )
    add(
        "--pretrained-dir",
        help="folder holding torchvision's ImageNet files (resnet18-f37072fd.pth, ...), looked "
        "at before torch hub's cache and before any download (for machines without internet)",
    )
    add(
        "--output-dir",
        help="results folder (default: results/<dataset>, results/smoke with --smoke)",
    )
    add(
        "--storage-path",
        help="Ray storage: a local folder or s3://... shared by all nodes (default: "
        "OUTPUT_DIR/ray)",
    )
    add("--optuna-storage", help="SQLAlchemy URL (default: sqlite:///OUTPUT_DIR/optuna.db)")
    add("--address", help="connect to a running Ray cluster ('auto' on a cluster node)")
    add("--resume", action="store_true", help="continue the study in OUTPUT_DIR where it stopped")
    add("--seed", type=int, help=f"(default: {D['seed']})")
    add("--smoke", action="store_true", help="the smallest complete run (tests, first try)")
    add(
        "--budget",
        help="a named study size from the dataset's preset (its <NAME>_budget section), e.g. "
        "showcase: the synthetic study whose rows separate on 2 CPU cores (README); explicit "
        "options still win",
    )
    add(
        "--teacher-eval-every",
        type=int,
        help="evaluate and checkpoint the teachers every N iterations (default: --eval-every, "
        "else the preset's)",
    )
    add("--quiet", dest="verbose", action="store_false", help="no line per finished trial")
    add(
        "--verbose-ray",
        action="store_true",
        help="show Ray Train's per-report INFO lines on the console "
        "(default: only in its log files under the Ray session's logs/train/)",
    )
    add(
        "--keep-trial-weights",
        action="store_true",
        help="keep every trial's Train run folder (weights and training state; 100+ MB per "
        "ResNet-18 trial); by default only each protocol's best student is kept, in "
        "OUTPUT_DIR/models/",
    )
    add(
        "--teacher-targets",
        choices=["shared", "live"],
        help="shared (default): each protocol's teacher outputs are computed once, before its "
        "search, into a store on the storage path that every trial reads (no trial loads a "
        "teacher; the same training for less compute: docs/benchmarks.md); live: every trial "
        "runs both "
        "teachers itself",
    )
    add(
        "--compile",
        choices=["on", "off"],
        help="torch.compile the students and CPS branches, and capture the frozen teachers' "
        "forward in CUDA graphs (default: on with a GPU, off on the CPU)",
    )
    add(
        "--keep-targets",
        action="store_true",
        help="keep each protocol's store of teacher targets "
        "(STORAGE_PATH/targets/) after its last phase; by default it is deleted",
    )
    add(
        "--export-ablation-students",
        action="store_true",
        help="also write each ablation row's best student to "
        "OUTPUT_DIR/models/<protocol>/<variant>.pt",
    )
    add(
        "--mlflow-uri",
        help="log every trial (its point, per-evaluation metrics, final mIoU and status) to "
        "this MLflow store, with the report attached to a parent run: file:/path/mlruns or "
        "sqlite:///path/mlflow.db need no server; http://host:5000 a tracking server",
    )
    return p


def main(args: argparse.Namespace) -> int:
    try:  # bad options or data: said before Ray starts, writing nothing
        given = vars(args) | {"compile": {"on": True, "off": False}.get(args.compile)}
        cfg, devices = resolve_study(**given)
        print(f"devices: {devices}", flush=True)
        plans = plan_study(cfg)
        check_tracking(cfg)  # an MLflow store that cannot be opened: said before Ray starts
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:  # Ray's known-harmless lines filtered, the progress a live line in a terminal
        with study_console(status=latest_line, restore=False) as show, live_status(show):
            run_study(cfg, plans)
    except StudyInterrupted as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        return 130
    except (
        UnmeetableResources
    ) as error:  # options the cluster cannot meet: said before anything is written
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


COMMANDS = {
    "study": "run (or --resume) a study: the options of experiments/tune_loss_weights.py",
    "report": "regenerate a study's tables, plots and REPORT.md from its results folder",
    "prepare": "voc|cityscapes SOURCE... --output DIR: downloaded archives into the data layout",
}


def cli(argv: list[str] | None = None) -> int:
    """`mgd-ray COMMAND ...`: the console entry point (pyproject.toml's [project.scripts])."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:8s} {text}" for name, text in COMMANDS.items())
        stream = sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr
        print(
            f"usage: mgd-ray COMMAND [options]  (mgd-ray COMMAND --help)\n{listing}", file=stream
        )
        return 0 if stream is sys.stdout else 2
    command, rest = argv[0], argv[1:]
    if command == "study":
        return main(get_args_parser(prog="mgd-ray study").parse_args(rest))
    if command == "prepare":
        from . import prepare

        return prepare.main(rest)
    from .report import __main__ as report

    parser = report.get_args_parser()
    parser.prog = "mgd-ray report"
    report.main(parser.parse_args(rest))
    return 0
