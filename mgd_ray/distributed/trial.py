"""The Tune trainable: one trial = one Ray Train (DDP) run of the MGD student.

Train V2 pattern (Ray 2.60): a Tune function trainable builds a TorchTrainer whose RunConfig has a
stable name (so `Tuner.restore` resumes the trial from its last checkpoint) and a
TuneReportCallback (so ASHA and Optuna see rank 0's intermediate results; `ForwardToTune` is that
callback minus the divergence report).
"""
from __future__ import annotations

import os
from typing import Any

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer

from ..engine import DivergedError
from .cluster import WORKER_START_TIMEOUT_ENV
from .spec import TrainRun, from_tune
from .worker import DIVERGED_KEY, ForwardToTune, student_loop


def scaling_config(run: TrainRun) -> ray.train.ScalingConfig:
    resources = {"CPU": run.cpus_per_worker}
    if run.gpus_per_worker:
        resources["GPU"] = run.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=run.workers, use_gpu=bool(run.gpus_per_worker),
                                   resources_per_worker=resources)


def train_run_config(run: TrainRun, name: str, callbacks=()) -> ray.train.RunConfig:
    return ray.train.RunConfig(
        name=name, storage_path=run.storage_path, callbacks=list(callbacks),
        # controller_failure_limit bounds the retries of a worker group that cannot start (Ray's
        # default retries it forever); the run then fails with WorkerGroupStartupTimeoutError.
        failure_config=ray.train.FailureConfig(max_failures=run.max_failures,
                                               controller_failure_limit=run.worker_start_retries),
        # One checkpoint is all resuming needs; Ray registers the new one before deleting the old.
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        # Ray Train's INFO lines ("Checkpoint successfully created at ...", worker-group start-up,
        # twice per report) go to its log files under the Ray session's logs/train/; the console
        # gets them only with --verbose-ray. Warnings and errors still show.
        logging_config=ray.train.LoggingConfig(log_level=run.log_level))


def run_trial(config: dict[str, Any]) -> None:
    run = from_tune(config).spec.run  # checked here, on the trial's driver, before any worker starts
    # read by TorchTrainer here, passed on to its controller
    os.environ[WORKER_START_TIMEOUT_ENV] = f"{float(run.worker_start_timeout_s):g}"
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        student_loop, train_loop_config=config, scaling_config=scaling_config(run),
        run_config=train_run_config(run, f"train-{trial_id}", callbacks=[ForwardToTune()]))
    result = trainer.fit()
    diverged = (result.metrics or {}).get(DIVERGED_KEY)
    if diverged:
        # Raising marks the trial as failed in Tune and Optuna; Tune keeps the exception (pickled,
        # with its fields), from which the trial record takes its "diverged" field (records.py).
        raise DivergedError(diverged["iteration"], diverged["losses"])
