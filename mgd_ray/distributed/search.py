"""The study's searcher: Ray's OptunaSearch, telling Optuna how each trial really ended.

Ray 2.60's OptunaSearch tells Optuna COMPLETE for every trial that ends with a metric, ASHA-stopped
ones included (Tune calls `on_trial_complete` with the last result either way), and COMPLETE for
a failed trial that had reported a metric before failing. TPE then learns from truncated runs as
if they had finished and drifts toward configurations that start fast. Here:
- a trial that reached `max_iterations` is COMPLETE with its final mIoU,
- a trial that ended earlier (ASHA stop, or stopped while pending) is PRUNED, keeping the
  intermediate values it reported, which is how Optuna's own pruners record a pruned trial,
- a trial that raised (diverged, failed, its worker group never started) is FAIL.
Intermediate values are keyed by the engine's iteration (the step the trial records show), not by
Tune's report counter, and every Optuna trial carries the Tune trial id as user attribute
`ray_trial_id`, so the Optuna storage and OUTPUT_DIR/trials/ can be matched one to one.

That attribute also makes the Optuna storage enough to restore the searcher: Tune copies its
searcher checkpoint to the study's storage without renaming it into place, so a driver killed
during that copy leaves a truncated file, and Tune then restarts the whole search. When the
checkpoint cannot be read, the searcher rebuilds its trial map from the Optuna study instead.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from .ray_private import optuna_trial_id, optuna_trials

logger = logging.getLogger(__name__)

TRIAL_ID_ATTR = "ray_trial_id"
TELL_ATTEMPTS = 3  # a tell that raised is retried (a locked SQLite file, a dropped connection)
TELL_BACKOFF_S = 0.5  # seconds before the first retry, doubled after each
# Trial record status (records.TrialRecorder) -> the Optuna state this searcher tells.
RECORD_TO_OPTUNA_STATE = {
    "completed": TrialState.COMPLETE,
    "early_stopped": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}


class HonestOptunaSearch(OptunaSearch):
    """OptunaSearch that tells ASHA-stopped trials as PRUNED and failed ones as FAIL.

    max_iterations: the iteration a trial must reach to count as finished.
    iteration_key: the result key holding that iteration (the engine's "iteration").
    on_untold: called with (Tune trial id, error text) when Optuna could not be told how a trial
    ended after TELL_ATTEMPTS tries; the trial stays untold (`untold`), so TPE does not learn
    from it, and the study writes the error into the trial's record. Must pickle (Tune
    checkpoints the searcher): a module-level function or a functools.partial of one.
    Other arguments as OptunaSearch (space, metric, mode, points_to_evaluate, sampler, storage,
    ...).
    """

    def __init__(
        self,
        *args: Any,
        max_iterations: int,
        iteration_key: str = "iteration",
        on_untold: Callable[[str, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(kwargs.get("metric"), list):
            raise ValueError(
                "HonestOptunaSearch: single-objective only (Optuna cannot prune multi-objective "
                "trials)"
            )
        super().__init__(*args, **kwargs)
        self.max_iterations = int(max_iterations)
        self.iteration_key = iteration_key
        self.on_untold = on_untold
        self.untold: dict[str, str] = {}  # Tune trial id -> why Optuna could not be told
        self._reported_steps: dict[str, set[int]] = {}

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = optuna_trials(self)[0].get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        return config

    def search_order(self, trial_id: str) -> int | None:
        """The place of a Tune trial's point in the order the study's points were suggested (0:
        the first, the paper's): its Optuna trial number, None for a trial Optuna never saw.
        Read from the Optuna storage when this searcher did not suggest it itself (a resumed
        study's Tune runs a searcher restored from its checkpoint)."""
        ot_trial = optuna_trials(self)[0].get(trial_id)
        if ot_trial is None:
            stored = self._ot_study.get_trials(deepcopy=False)
            ot_trial = next(
                (t for t in stored if t.user_attrs.get(TRIAL_ID_ATTR) == trial_id), None
            )
        return None if ot_trial is None else int(ot_trial.number)

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        try:
            super().restore_from_dir(checkpoint_dir)
        except Exception as error:  # noqa: BLE001 -- a missing, empty or truncated pickle alike
            logger.warning(
                "searcher checkpoint in %s unreadable (%s: %s); its state is rebuilt from the "
                "Optuna storage",
                checkpoint_dir,
                type(error).__name__,
                error,
            )
            self.rebuild_from_storage()

    def rebuild_from_storage(self) -> None:
        """The Tune trial id -> Optuna trial map from the Optuna study itself: trials still running
        are resumed by Tune and told later; finished ones are never told again."""
        trials, study, told = optuna_trials(self)
        trials.clear()
        told.clear()
        for frozen in study.get_trials(deepcopy=False):
            tune_id = frozen.user_attrs.get(TRIAL_ID_ATTR)
            if tune_id is None:
                continue  # enqueued (the points to evaluate), never asked yet
            trials[tune_id] = optuna.trial.Trial(study, optuna_trial_id(frozen))
            if frozen.state.is_finished():
                told.add(tune_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trials, _, told = optuna_trials(self)
        if trial_id in told or trial_id not in trials:
            return
        value, step = result.get(self.metric), result.get(self.iteration_key)
        if value is None or step is None or not math.isfinite(float(value)):
            return
        # A trial restarted from its last checkpoint reports some iterations again; Optuna keeps
        # the first value of a step and warns about the repeat, so skip it here.
        steps = self.__dict__.setdefault("_reported_steps", {}).setdefault(trial_id, set())
        if int(step) not in steps:
            trials[trial_id].report(float(value), int(step))
            steps.add(int(step))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        trials, study, told = optuna_trials(self)
        if trial_id in told or trial_id not in trials:
            return
        state, value = ending(result, error, self.metric, self.iteration_key, self.max_iterations)
        problem = tell(study, trials[trial_id], value, state)
        if problem is None:
            told.add(trial_id)
            self.untold.pop(trial_id, None)
            return
        logger.error(
            "Optuna could not be told that trial %s ended %s: %s", trial_id, state.name, problem
        )
        self.untold[trial_id] = problem
        if self.on_untold is not None:
            self.on_untold(trial_id, problem)


def tell(
    study: optuna.Study, trial: optuna.trial.Trial, value: float | None, state: TrialState
) -> str | None:
    """Tell `study` how `trial` ended, TELL_ATTEMPTS times at most; None once told (or found
    finished in the storage, as after a tell whose answer was lost), else the last error."""
    problem = None
    for attempt in range(TELL_ATTEMPTS):
        if attempt:
            time.sleep(TELL_BACKOFF_S * 2 ** (attempt - 1))
        try:
            study.tell(trial, value, state=state)
            return None
        except Exception as exc:  # noqa: BLE001 -- any storage error; reported, never swallowed
            problem = f"{type(exc).__name__}: {exc}"
        try:
            stored = study.get_trials(deepcopy=False)[trial.number]
        except Exception:  # noqa: BLE001 -- the storage itself unreachable: try again
            continue
        if stored.state.is_finished():
            return None
    return problem


def ending(
    result: dict | None, error: bool, metric: str, iteration_key: str, max_iterations: int
) -> tuple[TrialState, float | None]:
    """(Optuna state, value to tell) of a trial that ended with `result` (its last) and `error`."""
    if error:
        return TrialState.FAIL, None
    value = (result or {}).get(metric)
    iteration = (result or {}).get(iteration_key)
    if (
        value is None
        or not math.isfinite(float(value))
        or iteration is None
        or int(iteration) < max_iterations
    ):
        return TrialState.PRUNED, None
    return TrialState.COMPLETE, float(value)
