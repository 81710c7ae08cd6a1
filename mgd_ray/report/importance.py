"""Hyperparameter importance per protocol with Optuna's evaluators.

The search trials are rebuilt into an in-memory Optuna study (`create_trial` with distributions
whose bounds come from the data), so the report needs neither the SQLite file nor the Tune run.
"""

from __future__ import annotations

import importlib.util
import math

import optuna
import pandas as pd

from mgd_ray.report.load import CONFIG_KEYS, normalize_trials
from mgd_ray.schema import LOG_SCALE

# The keys the search samples on a log scale (the loss weights span orders of magnitude).
LOG_PARAMS = LOG_SCALE
NOT_ENOUGH = "not enough trials"


def default_evaluator(seed: int = 0) -> optuna.importance.BaseImportanceEvaluator:
    """fANOVA (Optuna's default) seeded; it needs scikit-learn, so without it PED-ANOVA, which is
    deterministic, stands in."""
    if importlib.util.find_spec("sklearn") is not None:
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return optuna.importance.PedAnovaImportanceEvaluator()


def _distribution(name: str, values: pd.Series) -> optuna.distributions.FloatDistribution:
    low, high = float(values.min()), float(values.max())
    return optuna.distributions.FloatDistribution(low, high, log=name in LOG_PARAMS and low > 0)


def protocol_importance(
    search: pd.DataFrame, evaluator=None, seed: int = 0
) -> tuple[dict[str, float], str]:
    """Importances (summing to 1 over the varied params) of one protocol's search trials, and a
    note: "" when computed, else why not (fewer than 2 completed trials or nothing varied)."""
    done = search[(search["status"] == "completed") & search["miou"].notna()]
    done = done.dropna(subset=list(CONFIG_KEYS))
    if len(done) < 2:
        return {}, f"{NOT_ENOUGH} ({len(done)} completed)"
    if done["miou"].nunique() < 2:
        # Every trial scored the same: no parameter explains any variance (fANOVA would raise).
        return {}, f"{NOT_ENOUGH} (all {len(done)} completed trials have the same mIoU)"
    varied = [key for key in CONFIG_KEYS if done[key].nunique() > 1]
    if not varied:
        return {}, f"{NOT_ENOUGH} (no parameter varies)"
    distributions = {key: _distribution(key, done[key]) for key in varied}
    study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={key: float(row[key]) for key in varied},
                distributions=distributions,
                value=float(row["miou"]),
            )
            for _, row in done.iterrows()
        ]
    )
    evaluator = evaluator or default_evaluator(seed)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {key: float(value) for key, value in importances.items()}, ""


def importance_table(
    trials: pd.DataFrame, protocols: list[str], evaluator=None, seed: int = 0
) -> pd.DataFrame:
    """One row per protocol: the importance of each config key (NaN when it did not vary or could
    not be computed), n_trials (completed search trials used), evaluator name and note."""
    frame = normalize_trials(trials)
    evaluator = evaluator or default_evaluator(seed)
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "trial added" line per trial else
    try:
        rows = []
        for protocol in protocols:
            search = frame[(frame["kind"] == "search") & (frame["protocol"] == protocol)]
            importances, note = protocol_importance(search, evaluator, seed)
            used = search[(search["status"] == "completed") & search["miou"].notna()]
            used = used.dropna(subset=list(CONFIG_KEYS))
            rows.append(
                dict(
                    protocol=protocol,
                    **{key: importances.get(key, math.nan) for key in CONFIG_KEYS},
                    n_trials=len(used),
                    evaluator=type(evaluator).__name__,
                    note=note,
                )
            )
    finally:
        optuna.logging.set_verbosity(previous)
    return pd.DataFrame(rows, columns=["protocol", *CONFIG_KEYS, "n_trials", "evaluator", "note"])
