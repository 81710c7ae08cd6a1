"""Experiment tracking with MLflow (--mlflow-uri): one MLflow experiment per study, one parent run
holding the report, and one nested run per trial, logged through Ray Tune's MLflow integration.

Why Tune's `MLflowLoggerCallback` and not `setup_mlflow` or a Train callback (Ray 2.60): a trial is
a Tune function trainable that builds a Ray Train V2 `TorchTrainer`. Train V2's RunConfig rejects
Tune's logger callbacks (ray-project/ray#49454, #64179: Train V2 has no MLflow callback of its
own), and `setup_mlflow` would open the store from the Train workers, so a `file:` or `sqlite:`
store would have to be reachable from every node. Rank 0's reports already reach Tune
(trial.ForwardToTune), so the callback on the Tuner, which runs in the study's driver, sees every
evaluation of every trial: a local store needs no server even on a cluster. `TrialTracker` keeps
Ray's lifecycle (the experiment set up once, a run opened at a trial's start, closed FINISHED or
FAILED at its end) and logs the trial's point rather than Tune's whole nested config, the
engine's metrics rather than Tune's bookkeeping, and the trial's end as the study records it.

Weights & Biases fits the same place: `ray.air.integrations.wandb.WandbLoggerCallback(project=...)`
is also a Tune logger callback that runs in the driver; appended to the callbacks
`trial_callbacks` returns, it logs each trial's Tune config and results (not tested here: it needs
a wandb login).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

from ray.air.integrations.mlflow import MLflowLoggerCallback

from ..schema import POINT_KEYS, finite_or_none, reached_the_end
from .options import study_name
from .spec import from_tune
from .study_config import StudyConfig

OPTION = "--mlflow-uri"
# Which engine report keys become MLflow metrics (besides "loss_<term>"), logged at the report's
# engine iteration as the step.
METRIC_KEYS = ("miou", "loss", "kept_fraction", "lr", "iter_per_s", "data_wait_share")
STUDY_ROLE, TRIAL_ROLE = "study", "trial"  # the "role" tag of a parent run and of a trial's run


class TrackingUnavailable(ValueError):
    """The MLflow store of --mlflow-uri cannot be opened (said before Ray starts)."""


@contextlib.contextmanager
def _no_retries() -> Iterator[None]:
    """MLflow's HTTP client retries a refused connection 7 times with backoff (minutes): the check
    of a URI should fail in seconds."""
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(uri: str):
    """An MlflowClient of the store at `uri`, which has answered a query; TrackingUnavailable,
    naming the option, when it cannot be opened."""
    try:
        import mlflow
    except ImportError as error:  # pragma: no cover -- a dependency of the package
        raise TrackingUnavailable(f"{OPTION} {uri}: mlflow is not installed ({error})") from error
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme == "file":
        # MLflow 3 refuses its file store unless told otherwise; --mlflow-uri file:... asks for it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if scheme not in ("file", "sqlite", "http", "https", "databricks", "postgresql", "mysql"):
        raise TrackingUnavailable(
            f"{OPTION} {uri!r}: expected a tracking URI such as file:/path/mlruns, "
            "sqlite:///path/mlflow.db or http://host:5000"
        )
    if scheme == "sqlite":
        path = uri.split(":///", 1)[-1] if ":///" in uri else ""
        folder = os.path.dirname(path)
        if not path or (folder and not os.path.isdir(folder)):
            raise TrackingUnavailable(f"{OPTION} {uri}: no folder {folder or '(none given)'!r}")
    try:
        with _no_retries():
            found = mlflow.MlflowClient(tracking_uri=uri)
            found.search_experiments(max_results=1)
            _OPEN[uri] = found
    except Exception as error:  # noqa: BLE001 -- whatever the store says, said once
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingUnavailable(
            f"{OPTION} {uri}: the MLflow store cannot be opened: {detail[:300]}"
        ) from error
    return found


_OPEN: dict[str, Any] = {}  # the clients of this process, by URI, once checked


def store(uri: str):
    """The MlflowClient of `uri`, checked once per process (`client`)."""
    return _OPEN.get(uri) or client(uri)


@dataclass(frozen=True)
class StudyTracking:
    """Where a study logs: the store, its experiment and the study's parent run (picklable: Tune
    keeps the trial callbacks that hold it in its experiment state)."""

    uri: str
    experiment_name: str
    experiment_id: str
    parent_run_id: str

    def finish(self, report_paths: dict[str, str], results_dir: str) -> None:
        """Attach REPORT.md, the tables and plots and study.json to the parent run; end it."""
        mlflow = store(self.uri)
        index = report_paths.get("index")
        if index and os.path.exists(index):
            mlflow.log_artifact(self.parent_run_id, index)
            folder = os.path.join(os.path.dirname(index), "report")
            if os.path.isdir(folder):
                mlflow.log_artifacts(self.parent_run_id, folder, "report")
        study_json = os.path.join(results_dir, "study.json")
        if os.path.exists(study_json):
            mlflow.log_artifact(self.parent_run_id, study_json)
        mlflow.set_terminated(self.parent_run_id, "FINISHED")


def check_tracking(cfg: StudyConfig) -> None:
    """Raise TrackingUnavailable, naming --mlflow-uri, when its store cannot be opened."""
    if cfg.storage.mlflow_uri:
        client(cfg.storage.mlflow_uri)


def experiment_name(cfg: StudyConfig) -> str:
    """One experiment per study (the study name, as Tune's storage folder is named): its trials of
    every protocol side by side, told apart by their `protocol`, `kind` and `variant` tags, and
    one parent run for the report, whose tables span the protocols."""
    return f"mgd-{study_name(cfg)}"


def open_tracking(cfg: StudyConfig) -> StudyTracking | None:
    """The study's experiment and parent run (found again on --resume, else created); None without
    --mlflow-uri. Raises TrackingUnavailable before anything is written when the store cannot be
    opened."""
    if not cfg.storage.mlflow_uri:
        return None
    mlflow = client(cfg.storage.mlflow_uri)
    name = experiment_name(cfg)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if cfg.storage.mlflow_uri.startswith("sqlite:"):
            # MLflow's default for a database store is ./mlartifacts in the current folder
            db = cfg.storage.mlflow_uri.split(":///", 1)[-1]
            location = "file:" + os.path.join(os.path.dirname(os.path.abspath(db)), "mlartifacts")
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    output_dir = os.path.abspath(cfg.storage.output_dir)
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.role = '{STUDY_ROLE}' and tags.output_dir = '{output_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if cfg.storage.resume and found:
        run_id = found[0].info.run_id
        mlflow.update_run(run_id, status="RUNNING")
    else:
        run = mlflow.create_run(
            experiment_id,
            run_name=study_name(cfg),
            tags={"role": STUDY_ROLE, "output_dir": output_dir, "dataset": cfg.data.dataset},
        )
        run_id = run.info.run_id
        for key, value in (
            ("dataset", cfg.data.dataset),
            ("student", cfg.student),
            ("protocols", " ".join(cfg.budget.protocols)),
            ("num_samples", cfg.budget.num_samples),
            ("seeds", cfg.budget.seeds),
            ("seed", cfg.seed),
            ("device", cfg.cluster.device),
        ):
            mlflow.log_param(run_id, key, value)
    return StudyTracking(cfg.storage.mlflow_uri, name, experiment_id, run_id)


_LIVE: dict[str, StudyTracking] = {}  # the driver's open tracking, by results folder


def register(cfg: StudyConfig, tracking: StudyTracking | None) -> None:
    if tracking is not None:
        _LIVE[os.path.abspath(cfg.storage.output_dir)] = tracking


def trial_callbacks(cfg: StudyConfig, protocol: str, kind: str, max_iterations: int) -> list:
    """The Tune callbacks that log one Tune run's trials ([] without --mlflow-uri)."""
    tracking = _LIVE.get(os.path.abspath(cfg.storage.output_dir))
    return [] if tracking is None else [TrialTracker(tracking, protocol, kind, max_iterations)]


def trial_params(config: dict[str, Any], protocol: str, kind: str) -> dict[str, Any]:
    """What a trial's MLflow run records as parameters: its protocol, kind, ablation variant,
    seed, the four loss weights and the confidence threshold tau, its iteration budget."""
    trial = from_tune(config)
    point = trial.point.to_tune()
    return {
        "protocol": protocol,
        "kind": kind,
        "variant": trial.variant,
        "seed": trial.seed,
        **{key: point[key] for key in POINT_KEYS},
        "iterations": trial.distill.iterations,
    }


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The engine's finite metrics of one Tune result (a Train report forwarded to Tune)."""
    keys = [k for k in result if k in METRIC_KEYS or k.startswith("loss_")]
    values = {k: finite_or_none(result[k]) for k in keys}
    return {k: v for k, v in values.items() if v is not None}


class TrialTracker(MLflowLoggerCallback):
    """Ray Tune's MLflowLoggerCallback for the trials of one Tune run of the study (one protocol,
    one kind): each trial a run nested under the study's parent run, found again on --resume
    rather than opened twice (ray-project/ray#48664)."""

    def __init__(self, tracking: StudyTracking, protocol: str, kind: str, max_iterations: int):
        super().__init__(
            tracking_uri=tracking.uri,
            experiment_name=tracking.experiment_name,
            tags={
                "role": TRIAL_ROLE,
                "protocol": protocol,
                "kind": kind,
                "mlflow.parentRunId": tracking.parent_run_id,
            },
        )
        self.tracking, self.protocol, self.kind = tracking, protocol, kind
        self.max_iterations = max_iterations

    def setup(self, *args, **kwargs):
        store(self.tracking.uri)  # MLflow 3's file store needs its opt-in in this process too
        super().setup(*args, **kwargs)
        self._last: dict[str, dict[str, Any]] = {}

    def _existing_run(self, trial_id: str) -> str | None:
        runs = store(self.tracking.uri).search_runs(
            [self.tracking.experiment_id],
            filter_string=f"tags.trial_id = '{trial_id}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def log_trial_start(self, trial):
        if trial not in self._trial_runs:
            run_id = self._existing_run(trial.trial_id)
            if run_id is None:
                params = trial_params(trial.config, self.protocol, self.kind)
                tags = {
                    **self.tags,
                    "trial_id": trial.trial_id,
                    "variant": params["variant"],
                    "status": "running",
                }
                run_id = self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id
                self.mlflow_util.log_params(run_id=run_id, params_to_log=params)
            else:
                store(self.tracking.uri).update_run(run_id, status="RUNNING")
            self._trial_runs[trial] = run_id

    def log_trial_result(self, iteration, trial, result):
        metrics = trial_metrics(result)
        if trial not in self._trial_runs or not metrics:
            return
        step = int(result.get("iteration") or result.get("training_iteration") or 0)
        self.mlflow_util.log_metrics(
            run_id=self._trial_runs[trial], metrics_to_log=metrics, step=step
        )
        if "miou" in metrics:
            self._last[trial.trial_id] = {"miou": metrics["miou"], "iteration": step}

    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        last = self._last.get(trial.trial_id)
        if last is None:  # a resumed trial that reported nothing new: its run has the history
            history = store(self.tracking.uri).get_metric_history(run_id, "miou")
            if history:
                best = max(history, key=lambda m: m.step)
                last = {"miou": best.value, "iteration": best.step}
        # as the trial record says it ended (records.TrialRecorder)
        status = (
            "failed"
            if failed
            else (
                "completed"
                if last and reached_the_end(last["iteration"], self.max_iterations)
                else "early_stopped"
            )
        )
        mlflow = store(self.tracking.uri)
        mlflow.set_tag(run_id, "status", status)
        if last is not None:
            mlflow.log_metric(run_id, "final_miou", last["miou"], step=last["iteration"])
        self.mlflow_util.end_run(run_id=run_id, status="FAILED" if failed else "FINISHED")
