"""Search MGD loss weights and pseudo-label confidence thresholds per partition protocol.

    python experiments/tune_loss_weights.py              # the synthetic study on this machine
    python experiments/tune_loss_weights.py --smoke      # the smallest complete run
    python experiments/tune_loss_weights.py --dataset voc --data-root /data/VOC2012 \
        --protocols 1/16 1/8 1/4 1/2 --gpus-per-trial 1 --storage-path s3://bucket/mgd --address auto

On VOC and Cityscapes every network starts from torchvision's ImageNet weights (--pretrained imagenet,
the paper's regime): the files are found in --pretrained-dir or torch hub's cache, or downloaded, on
this machine before Ray starts, and copied to STORAGE_PATH/pretrained/ for the workers. The synthetic
set trains from scratch (--pretrained none).
"""
from __future__ import annotations

import argparse
import sys

from mgd_ray.config import PROTOCOLS, STUDENTS
from mgd_ray.distributed.devices import choose_devices, detect_gpus, gpu_budget
from mgd_ray.distributed.cluster import UnmeetableResources
from mgd_ray.schema import ABLATION_VARIANTS
from mgd_ray.distributed.options import StudyConfig
from mgd_ray.distributed.plan import plan_study
from mgd_ray.distributed.study import StudyInterrupted, run_study

# --smoke: one protocol, two search trials, one ablation seed, a few iterations of everything.
SMOKE = dict(protocols=("1/8",), num_samples=2, seeds=1, iterations=8, teacher_iterations=8, eval_every=4,
             crop_size=48, batch_size=2, loader_workers=0)


def get_args_parser() -> argparse.ArgumentParser:
    d = StudyConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=d.dataset, choices=["synthetic", "voc", "cityscapes"])
    p.add_argument("--data-root", default=None, help="dataset folder (VOC: JPEGImages/, SegmentationClassAug/, "
                   "ImageSets/; Cityscapes: leftImg8bit/, gtFine/); not needed for synthetic")
    p.add_argument("--split-dir", default=None, help="folder with labeled.txt / unlabeled.txt (or <protocol>/ "
                   "subfolders); default: a seeded split written to OUTPUT_DIR/splits")
    p.add_argument("--protocols", nargs="+", default=list(d.protocols), metavar="P",
                   help=f"partition protocols, from {', '.join(PROTOCOLS)} (default: %(default)s)")
    p.add_argument("--student", default=d.student, choices=STUDENTS)
    p.add_argument("--num-samples", type=int, default=None,
                   help="search trials per protocol, the paper's defaults first (default: the dataset "
                   "preset's: 3 for synthetic, 16 for VOC and Cityscapes)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per ablation row (default: the preset's: 1 for synthetic, 2 otherwise)")
    p.add_argument("--no-ablation", action="store_true", help="search only, no ablation runs")
    p.add_argument("--ablation-variants", nargs="+", default=list(ABLATION_VARIANTS), metavar="V",
                   help=f"ablation rows to run, from {', '.join(ABLATION_VARIANTS)} (default: all)")
    p.add_argument("--iterations", type=int, default=None, help="student iterations (default: the dataset preset)")
    p.add_argument("--teacher-iterations", type=int, default=None, help="teacher iterations (default: preset)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate and checkpoint every N iterations")
    p.add_argument("--crop-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="labeled images per worker and iteration")
    p.add_argument("--loader-workers", type=int, default=d.loader_workers, help="DataLoader workers per worker")
    p.add_argument("--gpus-per-trial", type=int, default=None,
                   help="GPUs per trial; 0 = train on the CPU (default: 1 when this machine, or the cluster "
                   "at --address, has a GPU, with the preset's GPU budget for every budget option not given; "
                   "else 0)")
    p.add_argument("--trials-per-gpu", type=int, default=None,
                   help="single-worker trials sharing each GPU (each asks Ray for 1/N GPU): small models "
                   "leave a GPU mostly idle (default: 1, or the preset's GPU budget when GPUs are detected)")
    p.add_argument("--workers-per-trial", type=int, default=None,
                   help="Ray Train (DDP) workers per trial (default: one per GPU, or 1 on CPU)")
    p.add_argument("--cpus-per-worker", type=int, default=d.cpus_per_worker)
    p.add_argument("--max-concurrent-trials", type=int, default=None,
                   help="default: what the cluster's GPUs (or CPUs) allow")
    p.add_argument("--max-failures", type=int, default=d.max_failures,
                   help="restarts of a training run from its last checkpoint after a worker failure")
    p.add_argument("--worker-start-timeout", type=float, default=d.worker_start_timeout_s, metavar="S",
                   help="seconds a trial's Train workers may wait for their resources (a GPU node the "
                   "autoscaler starts, CPUs held by another job) before the start is retried (default: %(default)s)")
    p.add_argument("--worker-start-retries", type=int, default=d.worker_start_retries,
                   help="retries of a worker start that timed out; then the trial fails and the study goes on")
    p.add_argument("--teacher-deep-checkpoint", default=None, help="trained ResNet-101 teacher (state dict file)")
    p.add_argument("--teacher-wide-checkpoint", default=None, help="trained WRN-50-2 teacher (state dict file)")
    p.add_argument("--pretrained", default=None, choices=["imagenet", "none"],
                   help="start students and both CPS branches of each teacher from torchvision's ImageNet weights, "
                   "or from scratch (default: imagenet for VOC and Cityscapes, the paper's regime; none for synthetic)")
    p.add_argument("--pretrained-dir", default=None,
                   help="folder holding torchvision's ImageNet files (resnet18-f37072fd.pth, ...), looked at before "
                   "torch hub's cache and before any download (for machines without internet)")
    p.add_argument("--output-dir", default=None, help="results folder (default: results/<dataset>, "
                   "results/smoke with --smoke)")
    p.add_argument("--storage-path", default=None, help="Ray storage: a local folder or s3://... shared by all "
                   "nodes (default: OUTPUT_DIR/ray)")
    p.add_argument("--optuna-storage", default=None, help="SQLAlchemy URL (default: sqlite:///OUTPUT_DIR/optuna.db)")
    p.add_argument("--address", default=None, help="connect to a running Ray cluster ('auto' on a cluster node)")
    p.add_argument("--resume", action="store_true", help="continue the study in OUTPUT_DIR where it stopped")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--smoke", action="store_true", help="the smallest complete run (tests, first try)")
    p.add_argument("--quiet", action="store_true", help="no line per finished trial")
    p.add_argument("--verbose-ray", action="store_true",
                   help="show Ray Train's per-report INFO lines on the console (default: only in its log "
                   "files under the Ray session's logs/train/)")
    p.add_argument("--keep-trial-weights", action="store_true",
                   help="keep every trial's Train run folder (weights and training state; 100+ MB per "
                   "ResNet-18 trial); by default only each protocol's best student is kept, in OUTPUT_DIR/models/")
    p.add_argument("--export-ablation-students", action="store_true",
                   help="also write each ablation row's best student to OUTPUT_DIR/models/<protocol>/<variant>.pt")
    return p


def study_config(args: argparse.Namespace) -> StudyConfig:
    """Every option validated here, before Ray starts."""
    values = dict(
        output_dir=args.output_dir or ("results/smoke" if args.smoke else f"results/{args.dataset}"),
        dataset=args.dataset, data_root=args.data_root, split_dir=args.split_dir, protocols=tuple(args.protocols),
        student=args.student, num_samples=args.num_samples, seeds=args.seeds, ablation=not args.no_ablation,
        ablation_variants=tuple(args.ablation_variants),
        iterations=args.iterations, teacher_iterations=args.teacher_iterations, eval_every=args.eval_every,
        crop_size=args.crop_size, batch_size=args.batch_size, loader_workers=args.loader_workers,
        cpus_per_worker=args.cpus_per_worker, trials_per_gpu=args.trials_per_gpu,
        max_concurrent_trials=args.max_concurrent_trials,
        max_failures=args.max_failures, worker_start_timeout_s=args.worker_start_timeout,
        worker_start_retries=args.worker_start_retries, teacher_deep_checkpoint=args.teacher_deep_checkpoint,
        teacher_wide_checkpoint=args.teacher_wide_checkpoint, pretrained=args.pretrained,
        pretrained_dir=args.pretrained_dir, storage_path=args.storage_path,
        optuna_storage=args.optuna_storage, address=args.address, resume=args.resume, seed=args.seed,
        verbose=not args.quiet, verbose_ray=args.verbose_ray, keep_trial_weights=args.keep_trial_weights,
        export_ablation_students=args.export_ablation_students)
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ValueError(f"--gpus-per-trial={args.gpus_per_trial}: expected an integer >= 0")
    detected = 0 if args.gpus_per_trial is not None else detect_gpus(args.address)
    values, chosen = choose_devices(values, args.gpus_per_trial, detected, gpu_budget(args.dataset))
    print(f"devices: {chosen}", flush=True)
    values["workers_per_trial"] = args.workers_per_trial or max(1, values["gpus_per_trial"])
    if values.get("trials_per_gpu") is None:
        values["trials_per_gpu"] = 1
    if args.smoke:
        parser_defaults = vars(get_args_parser().parse_args([]))
        for key, value in SMOKE.items():
            if getattr(args, key) == parser_defaults[key]:  # an explicit option wins
                values[key] = value
    return StudyConfig(**values)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = study_config(args)
        plans = plan_study(cfg)
    except (ValueError, OSError) as error:  # bad options or data: said before Ray starts, writing nothing
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        run_study(cfg, plans)
    except StudyInterrupted as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        return 130
    except UnmeetableResources as error:  # options the cluster cannot meet: said before anything is written
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
