"""The study's searcher, driven through Tune's searcher callbacks without Ray: what Optuna is told
for a finished, an ASHA-stopped, a failed and a never-started trial."""
import optuna
import pytest
from optuna.trial import TrialState

from mgd_ray.distributed.search import TRIAL_ID_ATTR, HonestOptunaSearch
from mgd_ray.distributed.spec import search_space

PAPER = {"w_pixel": 1.0, "lambda_semantic": 0.002, "lambda_region": 100.0, "confidence_threshold": 0.0}


def searcher(max_iterations=8):
    s = HonestOptunaSearch(space=search_space, metric="miou", mode="max", points_to_evaluate=[PAPER],
                           sampler=optuna.samplers.TPESampler(seed=0), max_iterations=max_iterations,
                           storage=optuna.storages.InMemoryStorage(), study_name="unit")
    return s


def result(miou, iteration, training_iteration):
    # Tune's own counter (training_iteration) differs from the engine's iteration on purpose.
    return {"miou": miou, "iteration": iteration, "training_iteration": training_iteration}


def by_ray_id(s):
    return {t.user_attrs[TRIAL_ID_ATTR]: t for t in s._ot_study.get_trials(deepcopy=False)}


def test_finished_stopped_failed_and_pending_trials_reach_optuna_as_they_ended():
    s = searcher(max_iterations=8)
    assert s.suggest("done") == PAPER  # the paper's point is evaluated first
    for trial_id in ("stopped", "failed", "pending"):
        assert set(s.suggest(trial_id)) == set(PAPER)
    for step, it in ((1, 4), (2, 8)):
        s.on_trial_result("done", result(0.30 + it / 100, it, step))
    s.on_trial_complete("done", result=result(0.38, 8, 2))
    s.on_trial_result("stopped", result(0.11, 4, 1))
    s.on_trial_complete("stopped", result=result(0.11, 4, 1))  # ASHA's stop: last result, no error
    s.on_trial_result("failed", result(0.2, 4, 1))
    s.on_trial_complete("failed", result=result(0.2, 4, 1), error=True)  # raised after one report
    s.on_trial_complete("pending")  # removed before it ever ran: no result

    trials = by_ray_id(s)
    assert {k: t.state for k, t in trials.items()} == {
        "done": TrialState.COMPLETE, "stopped": TrialState.PRUNED, "failed": TrialState.FAIL,
        "pending": TrialState.PRUNED}
    assert trials["done"].value == pytest.approx(0.38)
    assert trials["done"].intermediate_values == {4: pytest.approx(0.34), 8: pytest.approx(0.38)}
    assert trials["stopped"].intermediate_values == {4: pytest.approx(0.11)}
    assert trials["failed"].value is None
    # Only the finished trial counts as a result for TPE and for best_value.
    assert s._ot_study.best_trial.user_attrs[TRIAL_ID_ATTR] == "done"


def test_a_restarted_trial_reporting_an_iteration_again_keeps_one_value_per_step():
    s = searcher(max_iterations=4)
    s.suggest("t")
    s.on_trial_result("t", result(0.2, 2, 1))
    s.on_trial_result("t", result(0.25, 2, 2))  # Ray Train restarted from the iteration-0 checkpoint
    s.on_trial_result("t", result(0.3, 4, 3))
    s.on_trial_complete("t", result=result(0.3, 4, 3))
    (trial,) = s._ot_study.get_trials()
    assert trial.state == TrialState.COMPLETE
    assert trial.intermediate_values == {2: pytest.approx(0.2), 4: pytest.approx(0.3)}


def test_a_nan_metric_is_not_a_result():
    s = searcher(max_iterations=4)
    s.suggest("t")
    s.on_trial_result("t", result(float("nan"), 2, 1))
    s.on_trial_complete("t", result=result(float("nan"), 4, 2))
    (trial,) = s._ot_study.get_trials()
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {}
