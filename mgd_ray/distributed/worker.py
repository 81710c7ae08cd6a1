"""The Ray Train per-worker loops: the engine's teacher and student runs behind a RayContext.

This file only adds what Ray Train needs (prepare_model / report / checkpoints); the training
itself, and the sharding of its data by rank, is `mgd_ray.engine`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import uuid
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.tune.integration.ray_train import TuneReportCallback

from .. import storage
from ..config import TeacherConfig
from ..engine import DivergedError, distill_student, train_teacher
from ..engine.context import rank, world_size
from ..models import convert_sync_batchnorm
from .spec import from_tune

DIVERGED_KEY = "diverged"


class RayContext:
    """RunContext for a Ray Train worker (gloo on CPU, nccl on GPU, set up by TorchTrainer)."""

    def __init__(self) -> None:
        self.device = ray.train.torch.get_device()
        self._checkpoint = ray.train.get_checkpoint()
        self._checkpoint_dir: str | None = None
        # One id per start of the worker group: a restart (lost node, resumed driver) reports a new one.
        self._run_start = uuid.uuid4().hex

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.device.type == "cuda" and world_size() > 1:
            model = convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        # node_id: which node rank 0 ran on; a trial record lists every node its run used.
        ray.train.report({**metrics, "world_size": world_size(), "node_id": ray.get_runtime_context().get_node_id(),
                          "run_start": self._run_start},
                         checkpoint=checkpoint)

    def latest_checkpoint(self) -> str | None:
        if self._checkpoint is None:
            return None
        if self._checkpoint_dir is None:
            # Downloads a remote (s3://) checkpoint; a local one is copied to a temporary folder.
            self._checkpoint_dir = self._checkpoint.to_directory()
        return self._checkpoint_dir


def follow_train_log_level() -> None:
    """Ray 2.60 logs "Reporting training result ..." (the checkpoint path and every metric, per
    report) on a logger named after its source file, which RunConfig's LoggingConfig level does not
    reach: give that logger the run's ray.train level, so it reaches the console only when asked."""
    try:
        from ray.train.v2._internal.execution import context as train_context
        level = train_context.get_train_context().train_run_context.get_run_config().logging_config.log_level
    except Exception:  # noqa: BLE001 -- another Ray version: leave its logging alone, never fail a run over it
        return
    logging.getLogger(train_context.__file__).setLevel(level)


def teacher_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker for one teacher (CPS) run; its ImageNet file is fetched to this node first."""
    config = dict(config)
    if config.get("backbone_weights"):
        config["backbone_weights"] = storage.download(config["backbone_weights"])
    follow_train_log_level()
    train_teacher(TeacherConfig.from_dict(config), RayContext())


def student_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker for one MGD student run; `config` is the trial's Tune config
    (spec.from_tune). Teacher files and the student's ImageNet file on the study's storage are
    fetched to this node first. A diverged run reports where and how it diverged, and stops cleanly:
    retrying it from the last checkpoint (FailureConfig) would only diverge again."""
    follow_train_log_level()
    cfg = from_tune(config).distill
    cfg = dataclasses.replace(cfg, **{key: storage.download(getattr(cfg, key)) for key in
                                      ("teacher_deep_checkpoint", "teacher_wide_checkpoint", "backbone_weights")
                                      if getattr(cfg, key)})
    try:
        distill_student(cfg, RayContext())
    except DivergedError as error:
        # Every rank gets here at the same iteration (the engine decides on rank-averaged losses).
        # The divergence travels as the run's last report, with a checkpoint because Result.metrics
        # keeps only reports that have one; ForwardToTune keeps it from Tune, so ASHA and Optuna
        # never see a made-up mIoU. run_trial raises it again from these fields.
        diverged = {"iteration": error.iteration, "losses": error.losses}
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank() == 0:
                with open(os.path.join(folder, "diverged.json"), "w") as f:
                    json.dump(diverged, f)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({DIVERGED_KEY: diverged}, checkpoint=checkpoint)


class ForwardToTune(TuneReportCallback):
    """TuneReportCallback that forwards every report except a diverged run's marker."""

    def after_report(self, run_context, metrics, checkpoint):
        if DIVERGED_KEY not in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)
