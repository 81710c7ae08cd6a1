"""The shared schema: one atomic writer (old or new content, never a partial file) and the record
fields both the writer (distributed/records.py) and the reader (report/load.py) use."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mgd_ray.schema import (
    POINT_KEYS,
    RECORD_FIELDS,
    TrialRecord,
    atomic_write,
    best_trial,
    ranked_trials,
    reached_the_end,
    read_json_object,
    read_records,
    write_json_atomic,
    write_text_atomic,
)


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "a.txt"  # the folder is created
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert os.listdir(path.parent) == ["a.txt"]
    plain = path.parent / "plain.txt"
    plain.write_text("x")  # the permissions open() gives under this umask
    assert os.stat(path).st_mode == os.stat(plain).st_mode


def test_a_failing_writer_leaves_the_old_file_intact_and_no_temp_file(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, lambda f: f.write(b"old content"))

    def failing(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_write_json_atomic_refuses_nan_and_keeps_the_old_record(tmp_path):
    path = tmp_path / "t.json"
    write_json_atomic(path, {"miou": 0.5})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"miou": math.nan})
    assert json.loads(path.read_text()) == {"miou": 0.5}
    assert os.listdir(tmp_path) == ["t.json"]


def test_read_json_object_refuses_a_list(tmp_path):
    path = tmp_path / "study.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_json_object(path)
    path.write_text('{"protocols": ["1/8"]}')
    assert read_json_object(path) == {"protocols": ["1/8"]}


def test_schema_imports_no_heavy_library():
    code = (
        "import sys, mgd_ray.schema; "
        "print(sorted(m for m in ('torch', 'ray', 'pandas', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.stdout.strip() == "[]"


def test_a_new_trial_record_has_the_schema_fields_and_the_report_reads_them(tmp_path):
    from mgd_ray.distributed.records import TrialRecorder
    from mgd_ray.report.load import TRIAL_COLUMNS
    from tests.study_helpers import search_config

    recorder = TrialRecorder(str(tmp_path), "1/8", "search", 100, "cpu", 1, verbose=False)
    point = {
        "w_sup": 1.0,
        "w_pixel": 2.0,
        "lambda_semantic": 0.1,
        "lambda_region": 0.2,
        "confidence_threshold": 0.7,
    }
    trial = SimpleNamespace(trial_id="t0", config=search_config(point, seed=3))
    record = recorder._load(trial).to_json()
    assert tuple(record) == RECORD_FIELDS
    assert record["config"] == point and record["variant"] == "search" and record["seed"] == 3
    # The report's columns are the record's fields with the config spread into its point keys.
    assert set(TRIAL_COLUMNS) == (set(RECORD_FIELDS) - {"config"}) | set(POINT_KEYS)


def test_the_one_reader_skips_what_is_not_a_record_and_says_so(tmp_path):
    folder = tmp_path / "trials" / "1_8"
    good = TrialRecord(
        "t1",
        "1/8",
        "search",
        "search",
        0,
        {},
        8,
        "cpu",
        1,
        status="completed",
        history=[{"iteration": 8, "miou": 0.4}],
    )
    write_json_atomic(folder / "t1.json", good.to_json())
    (folder / "t2.json").write_text(
        '{"trial_id": "t2", "protocol": "1/8", "kind": "search"'
    )  # half-written
    write_json_atomic(folder / "t3.json", {**good.to_json(), "trial_id": "t3", "status": "lost"})
    skipped = []
    records = read_records(
        tmp_path, "1/8", on_skip=lambda path, error: skipped.append((path, str(error)))
    )
    assert [r.trial_id for r in records] == ["t1"]
    assert (
        records[0].miou == 0.4
    )  # a record written between its history and its score reads its last score
    assert [os.path.basename(p) for p, _ in skipped] == ["t2.json", "t3.json"]
    assert "status 'lost'" in skipped[1][1]


def test_completed_and_best_are_one_rule_for_records_and_frames():
    def record(trial_id, status, miou, kind="search", variant="search"):
        return TrialRecord(
            trial_id, "1/8", kind, variant, 0, {}, 8, "cpu", 1, status=status, miou=miou
        )

    records = [
        record("c", "completed", 0.5),
        record("a", "completed", 0.5),
        record("b", "early_stopped", 0.9),
        record("d", "completed", math.nan),
        record("e", "completed", 0.7, "ablation", "pixel"),
    ]
    assert [r.trial_id for r in ranked_trials(records)] == [
        "e",
        "a",
        "c",
    ]  # a tie (no search order, equal point) goes to the first id
    assert best_trial(records, kind="search").trial_id == "a"
    assert best_trial(records, variant="pixel").trial_id == "e"
    assert best_trial([record("x", "running", None)]) is None
    assert not reached_the_end(7, 8) and reached_the_end(8, 8) and not reached_the_end(None, 8)


def test_a_tie_goes_to_the_point_the_searcher_suggested_first_never_to_start_times_or_ids():
    """Tune's trial ids are random, and trials in flight side by side start in either order (two
    smoke runs started the paper's point 2 s before and 2 s after TPE's). Equal scores (a small
    study often has them) must pick the same trial in every run: the point the searcher suggested
    first (the paper's is suggested first), then the point itself."""

    def record(trial_id, started, threshold, order):
        return TrialRecord(
            trial_id,
            "1/8",
            "search",
            "search",
            0,
            {"w_sup": 1.0, "confidence_threshold": threshold},
            8,
            "cpu",
            1,
            status="completed",
            miou=0.5,
            started_at=started,
            search_order=order,
        )

    for first_id, second_id in (("ffff0000", "0000ffff"), ("0000ffff", "ffff0000")):
        for paper_start, tpe_start in (("20:00:00", "20:00:02"), ("20:00:02", "20:00:00")):
            paper = record(first_id, f"2026-12-06T{paper_start}+00:00", 0.0, 0)
            tpe = record(second_id, f"2026-12-06T{tpe_start}+00:00", 0.7, 1)
            assert best_trial([tpe, paper]).config["confidence_threshold"] == 0.0
            assert best_trial([paper, tpe]).config["confidence_threshold"] == 0.0
    # Records without an order (ablation rows, older studies) fall back to the point.
    a, b = record("ffff0000", None, 0.7, None), record("0000ffff", None, 0.2, None)
    assert best_trial([a, b]).config["confidence_threshold"] == 0.2
    assert best_trial([b, a]).config["confidence_threshold"] == 0.2
