"""Teachers: trained once per (dataset, protocol, architecture, seed, schedule) through Ray Train,
kept on the study's storage as a plain state-dict file and reused by every trial and later
study."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

from .. import storage
from ..config import TeacherConfig, protocol_slug
from ..engine.teacher import TEACHER_BRANCH
from ..models import NETWORK_VERSION
from ..models.pretrained import checkpoint_file_name, resolve_pretrained
from .ray_private import trainer_without_ray_cleaner
from .spec import TrainRun
from .trial import JOB_KEY, scaling_config, teacher_loop, train_run_config

# Options that do not change the trained weights stay out of the cache key.
_NOT_IN_KEY = ("num_workers", "split_out_dir", "split_dir")


def teacher_name(cfg: TeacherConfig) -> str:
    """e.g. synthetic-1_8-resnet101-seed0-3f2a9c1b: readable, and unique for the schedule."""
    keyed = cfg.to_dict()
    keyed["data"] = {k: v for k, v in keyed["data"].items() if k not in _NOT_IN_KEY}
    # the ImageNet file by its name (which carries its hash), not by where this machine keeps it
    keyed["backbone_weights"] = cfg.backbone_weights and os.path.basename(cfg.backbone_weights)
    keyed["network_version"] = NETWORK_VERSION  # a teacher of an older network would not load
    keyed["kept_branch"] = TEACHER_BRANCH  # teachers cached when the better branch was kept differ
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:8]
    arch = cfg.arch.removeprefix("deeplabv3plus_")
    return f"{cfg.data.dataset}-{protocol_slug(cfg.data.protocol)}-{arch}-seed{cfg.seed}-{digest}"


def stage_pretrained(
    regime: str,
    archs: list[str],
    storage_root: str,
    pretrained_dir: str | None = None,
    log=print,
    copy: bool = True,
) -> dict[str, str | None]:
    """{arch: file every worker can read} for the regime "imagenet" ({arch: None} for "none").

    Resolved on the driver (a user folder, torch hub's cache, or a download with the hash checked),
    then copied once to <storage_root>/pretrained/, next to the cached teachers, so workers without
    internet read them the way they read teachers. copy=False: the files are found (or downloaded)
    and their future places returned, nothing is copied (a study checks before it writes)."""
    local = resolve_pretrained(archs, regime, pretrained_dir)
    staged = {}
    for arch, path in local.items():
        if path is None:
            staged[arch] = None
            continue
        uri = storage.join(storage_root, "pretrained", checkpoint_file_name(arch))
        if copy and not storage.exists(uri):
            log(f"ImageNet weights {os.path.basename(path)}: copying to {uri}")
            storage.upload(path, uri)
        staged[arch] = uri
    return staged


def teacher_metrics_uri(uri: str) -> str:
    """<name>.json beside a cached <name>.pt: the teacher's val scores when it was trained."""
    return uri[:-3] + ".json" if uri.endswith(".pt") else uri + ".json"


def read_teacher_metrics(uri: str) -> dict[str, Any]:
    """The scores saved beside a cached teacher ({} for a teacher cached before they were kept)."""
    path = teacher_metrics_uri(uri)
    if not storage.exists(path):
        return {}
    with open(storage.download(path)) as f:
        return json.load(f)


def ensure_teacher(
    cfg: TeacherConfig, run: TrainRun, teachers_root: str, log=print
) -> tuple[str, bool]:
    """(the storage URI of the teacher's model.pt, whether it was cached), training it first unless
    it is already there; its val scores go to <name>.json beside it."""
    name = teacher_name(cfg)
    uri = storage.join(teachers_root, f"{name}.pt")
    if storage.exists(uri):
        log(f"teacher {name}: cached at {uri}")
        return uri, True
    log(f"teacher {name}: training {cfg.iterations} iterations (CPS) ...")
    run_name = f"teacher-{name}"
    trainer = trainer_without_ray_cleaner(
        teacher_loop,
        train_loop_config={JOB_KEY: cfg},
        scaling_config=scaling_config(run),
        run_config=train_run_config(run, run_name),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"teacher {name}: training finished without a checkpoint")
    metrics = {
        k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str, bool))
    }
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "metrics.json")
        with open(local, "w") as f:
            json.dump(
                {"name": name, "arch": cfg.arch, "iterations": cfg.iterations, **metrics},
                f,
                indent=1,
            )
        # before the weights: a cached .pt has its scores
        storage.upload(local, teacher_metrics_uri(uri))
    with result.checkpoint.as_directory() as folder:
        storage.upload(os.path.join(folder, "model.pt"), uri)
    # The run's checkpoints (both CPS branches and their optimizer state, ~6x the cached file) only
    # served to resume an interrupted training; the cached model.pt is what trials read.
    storage.remove_tree(storage.join(run.storage_path, run_name))
    log(f"teacher {name}: val mIoU {result.metrics.get('miou')}, saved to {uri}")
    return uri, False
