"""The study's searcher, driven through Tune's searcher callbacks without Ray: what Optuna is told
for a finished, an ASHA-stopped, a failed and a never-started trial."""

import optuna
import pytest
from optuna.trial import TrialState

from mgd_ray.distributed.search import TRIAL_ID_ATTR, HonestOptunaSearch
from mgd_ray.distributed.spec import search_space

PAPER = {
    "w_pixel": 1.0,
    "lambda_semantic": 0.002,
    "lambda_region": 100.0,
    "confidence_threshold": 0.0,
}


def searcher(max_iterations=8, storage=None):
    return HonestOptunaSearch(
        space=search_space,
        metric="miou",
        mode="max",
        points_to_evaluate=[PAPER],
        sampler=optuna.samplers.TPESampler(seed=0),
        max_iterations=max_iterations,
        storage=storage or optuna.storages.InMemoryStorage(),
        study_name="unit",
    )


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
        "done": TrialState.COMPLETE,
        "stopped": TrialState.PRUNED,
        "failed": TrialState.FAIL,
        "pending": TrialState.PRUNED,
    }
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
    s.on_trial_result(
        "t", result(0.25, 2, 2)
    )  # Ray Train restarted from the iteration-0 checkpoint
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


def test_a_truncated_searcher_checkpoint_is_rebuilt_from_the_optuna_storage(tmp_path):
    """A driver killed while Tune copied the searcher's checkpoint leaves an empty file; the
    restored searcher (unpickled, as Tuner.restore does) rebuilds its trial map from Optuna."""
    import pickle

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    s = searcher(max_iterations=8, storage=storage)
    s.suggest("done")
    s.suggest("running")
    s.on_trial_result("done", result(0.4, 8, 1))
    s.on_trial_complete("done", result=result(0.4, 8, 1))
    s.on_trial_result("running", result(0.2, 4, 1))
    restored = pickle.loads(pickle.dumps(s))  # the searcher as tuner.pkl kept it, before any trial
    restored._ot_trials.clear()
    restored._completed_trials.clear()
    (tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(b"")
    restored.restore_from_dir(str(tmp_path))
    assert set(restored._ot_trials) == {"done", "running"} and restored._completed_trials == {
        "done"
    }
    restored.on_trial_complete("running", result=result(0.3, 8, 2))  # told once, to the same trial
    trials = by_ray_id(restored)
    assert trials["running"].state == TrialState.COMPLETE and trials[
        "running"
    ].value == pytest.approx(0.3)
    assert trials["done"].value == pytest.approx(0.4) and len(trials) == 2


def flaky_tell(s, monkeypatch, failures):
    """Make the study's tell raise `failures` times (an OperationalError, as a locked SQLite file
    gives), then work; returns the list of calls."""
    calls, real = [], s._ot_study.tell

    def tell(*args, **kwargs):
        calls.append(args)
        if len(calls) <= failures:
            raise RuntimeError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(s._ot_study, "tell", tell)
    monkeypatch.setattr("mgd_ray.distributed.search.TELL_BACKOFF_S", 0.0)
    return calls


def test_a_tell_that_fails_once_is_retried_and_reaches_optuna(monkeypatch):
    s = searcher(max_iterations=4)
    s.suggest("t")
    calls = flaky_tell(s, monkeypatch, failures=1)
    s.on_trial_complete("t", result=result(0.3, 4, 1))
    (trial,) = s._ot_study.get_trials()
    assert len(calls) == 2 and trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(0.3) and s.untold == {}


def test_a_tell_that_keeps_failing_is_not_marked_told_and_is_reported(monkeypatch):
    said = []
    s = searcher(max_iterations=4)
    s.on_untold = lambda trial_id, error: said.append((trial_id, error))
    s.suggest("t")
    calls = flaky_tell(s, monkeypatch, failures=99)
    s.on_trial_complete("t", result=result(0.3, 4, 1))
    (trial,) = s._ot_study.get_trials()
    assert len(calls) == 3  # TELL_ATTEMPTS
    assert trial.state == TrialState.RUNNING  # Optuna never learnt it: TPE does not count it
    assert "t" not in s._completed_trials  # a later tell (e.g. after --resume) is still allowed
    assert s.untold == {"t": "RuntimeError: database is locked"}
    assert said == [("t", "RuntimeError: database is locked")]


def test_the_searcher_says_in_which_order_it_suggested_each_trials_point():
    """The order in which points were suggested (the paper's first) is what breaks a tie between
    equal scores: trial ids are random and side-by-side trials start in either order."""
    s = searcher()
    for trial_id in ("c", "a", "b"):
        s.suggest(trial_id)
    assert [s.search_order(t) for t in ("a", "b", "c", "unknown")] == [1, 2, 0, None]
    # A searcher that did not suggest them (a resumed study's Tune runs a restored one) reads the
    # order from the Optuna storage.
    stale = searcher(storage=s._ot_study._storage)
    assert [stale.search_order(t) for t in ("a", "b", "c", "unknown")] == [1, 2, 0, None]
