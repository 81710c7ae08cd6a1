"""What runs inside a trial: the Tune trainable (`run_trial`), the Ray Train per-worker loops of
the student and teacher runs, and the RunContext they give the engine.

Train V2 pattern (Ray 2.60): a Tune function trainable builds a TorchTrainer whose RunConfig has a
stable name (so `Tuner.restore` resumes the trial from its last checkpoint) and a
TuneReportCallback (so ASHA and Optuna see rank 0's intermediate results; `ForwardToTune` is that
callback minus the divergence report and the "done" flag). This module only adds what Ray Train
needs (prepare_model / report / checkpoints); the training itself, and the sharding of its data by
rank, is `mgd_ray.engine`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.tune.integration.ray_train import TuneReportCallback

from .. import storage
from ..config import DistillConfig, TeacherConfig
from ..engine import DivergedError, distill_student, train_teacher, write_targets
from ..engine.context import world_size
from ..models import convert_sync_batchnorm
from .cluster import WORKER_START_TIMEOUT_ENV
from .ray_private import follow_train_log_level, trainer_without_ray_cleaner
from .spec import TrainRun, from_tune

Job = TypeVar("Job", DistillConfig, TeacherConfig)

DIVERGED_KEY = "diverged"
# Every Train run's train_loop_config is {JOB_KEY: one frozen dataclass}: a student trial's
# DistillConfig, a teacher's TeacherConfig or a TargetsJob; the loops below read nothing else.
JOB_KEY = "job"


@dataclass(frozen=True)
class TargetsJob:
    """One writer of a protocol's store of teacher targets: iterations first to last (exclusive)
    of the store distill.targets, for the mask streams `streams`."""

    distill: DistillConfig
    streams: tuple[int, ...]
    first: int
    last: int


def scaling_config(run: TrainRun) -> ray.train.ScalingConfig:
    resources = {"CPU": run.cpus_per_worker}
    if run.gpus_per_worker:
        resources["GPU"] = run.gpus_per_worker
    # A multi-worker trial's workers all on one node: DDP's all-reduce stays on the node (NVLink
    # or PCIe for NCCL, shared memory for gloo) instead of crossing the network, as cluster.yaml's
    # gpu_4x type is sized for. Ray's default PACK is best-effort and spreads when no node has
    # room; STRICT_PACK waits for (or makes the autoscaler start) a node that holds them all.
    return ray.train.ScalingConfig(
        num_workers=run.workers,
        use_gpu=bool(run.gpus_per_worker),
        resources_per_worker=resources,
        placement_strategy="STRICT_PACK" if run.workers > 1 else "PACK",
    )


def train_run_config(run: TrainRun, name: str, callbacks=()) -> ray.train.RunConfig:
    return ray.train.RunConfig(
        name=name,
        storage_path=run.storage_path,
        callbacks=list(callbacks),
        # controller_failure_limit bounds the retries of a worker group that cannot start (Ray's
        # default retries it forever); the run then fails with WorkerGroupStartupTimeoutError.
        failure_config=ray.train.FailureConfig(
            max_failures=run.max_failures, controller_failure_limit=run.worker_start_retries
        ),
        # One checkpoint is all resuming needs; Ray registers the new one before deleting the old.
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        # Ray Train's INFO lines ("Checkpoint successfully created at ...", worker-group start-up,
        # twice per report) go to its log files under the Ray session's logs/train/; the console
        # gets them only with --verbose-ray. Warnings and errors still show.
        logging_config=ray.train.LoggingConfig(log_level=run.log_level),
    )


def run_trial(
    config: dict[str, Any], loop: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """The study's Tune trainable: one Ray Train run of `loop` (the MGD student's) for the trial
    of this Tune config, its reports forwarded to Tune, returning once the run has ended and
    given back its workers (cluster.py)."""
    trial = from_tune(config)  # checked here, on the trial's driver, before any worker starts
    # read by TorchTrainer here, passed on to its controller
    os.environ[WORKER_START_TIMEOUT_ENV] = f"{float(trial.spec.run.worker_start_timeout_s):g}"
    trainer = trainer_without_ray_cleaner(
        loop or student_loop,
        train_loop_config={JOB_KEY: trial.distill},
        scaling_config=scaling_config(trial.spec.run),
        run_config=train_run_config(
            trial.spec.run,
            f"train-{ray.tune.get_context().get_trial_id()}",
            callbacks=[ForwardToTune()],
        ),
    )
    diverged = (trainer.fit().metrics or {}).get(DIVERGED_KEY)
    if diverged:
        # Raising marks the trial as failed in Tune and Optuna; Tune keeps the exception (pickled,
        # with its fields), from which the trial record takes its "diverged" field (records.py).
        raise DivergedError(diverged["iteration"], diverged["losses"])


class RayContext:
    """RunContext for a Ray Train worker (gloo on CPU, nccl on GPU, set up by TorchTrainer)."""

    def __init__(self) -> None:
        self.device = ray.train.torch.get_device()
        self._checkpoint = ray.train.get_checkpoint()
        self._checkpoint_dir: str | None = None
        # One id per start of the worker group: a restart (lost node, resumed driver) reports a new
        # one.
        self._run_start = uuid.uuid4().hex

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.device.type == "cuda" and world_size() > 1:
            model = convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        checkpoint = (
            ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        )
        # node_id: which node rank 0 ran on; a trial record lists every node its run used.
        ray.train.report(
            {
                **metrics,
                "world_size": world_size(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "run_start": self._run_start,
            },
            checkpoint=checkpoint,
        )

    def latest_checkpoint(self) -> str | None:
        if self._checkpoint is None:
            return None
        if self._checkpoint_dir is None:
            # Downloads a remote (s3://) checkpoint; a local one is copied to a temporary folder.
            self._checkpoint_dir = self._checkpoint.to_directory()
        return self._checkpoint_dir


def teacher_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker for one teacher (CPS) run, config[JOB_KEY] its TeacherConfig; its
    ImageNet file is fetched to this node first."""
    follow_train_log_level()
    train_teacher(fetched(config[JOB_KEY], ("backbone_weights",)), RayContext())


def fetched(cfg: Job, keys: tuple[str, ...]) -> Job:
    """cfg with the files its `keys` name on the study's storage fetched to this node."""
    return dataclasses.replace(
        cfg, **{key: storage.download(getattr(cfg, key)) for key in keys if getattr(cfg, key)}
    )


def student_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker for one MGD student run: config[JOB_KEY] is the trial's
    DistillConfig. The student's ImageNet file, and the teacher files unless the trial reads a
    store of their targets, are fetched to this node first. A diverged run reports where and how
    it diverged, and stops cleanly: retrying it from the last checkpoint (FailureConfig) would
    only diverge again."""
    follow_train_log_level()
    cfg: DistillConfig = config[JOB_KEY]
    teachers = () if cfg.targets else ("teacher_deep_checkpoint", "teacher_wide_checkpoint")
    cfg = fetched(cfg, (*teachers, "backbone_weights"))
    try:
        distill_student(cfg, RayContext())
    except DivergedError as error:
        report_divergence(error)


def targets_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker of one writer of a protocol's store of teacher targets
    (config[JOB_KEY], a TargetsJob), with as many workers as the protocol's trials (each rank
    writes its own files). The teacher files are fetched to this node first."""
    follow_train_log_level()
    job: TargetsJob = config[JOB_KEY]
    cfg = fetched(job.distill, ("teacher_deep_checkpoint", "teacher_wide_checkpoint"))
    write_targets(cfg, list(job.streams), range(job.first, job.last), RayContext(), cfg.targets)


def report_divergence(error: DivergedError) -> None:
    """End a diverged run with its divergence as the last report. Every rank gets here at the same
    iteration (the engine decides on rank-averaged losses). The report has a checkpoint because
    Result.metrics keeps only reports that have one; ForwardToTune keeps it from Tune, so ASHA and
    Optuna never see a made-up mIoU; run_trial raises it again from these fields."""
    diverged = {"iteration": error.iteration, "losses": error.losses}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            with open(os.path.join(folder, "diverged.json"), "w") as f:
                json.dump(diverged, f)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({DIVERGED_KEY: diverged}, checkpoint=checkpoint)


class ForwardToTune(TuneReportCallback):
    """TuneReportCallback that forwards every report except a diverged run's marker, and without
    the engine's "done": Tune ends a trial at a report saying done by ending the trial's actor,
    before the Train run has given back its workers' placement group (cluster.py). Without it the
    trial ends as its Train run returns, having given back everything itself."""

    def after_report(self, run_context, metrics, checkpoint):
        if DIVERGED_KEY not in metrics[0]:
            forwarded = [{k: v for k, v in metrics[0].items() if k != "done"}, *metrics[1:]]
            super().after_report(run_context, forwarded, checkpoint)
