"""`mgd-ray`, the console entry point: its commands, one parser shared with
experiments/tune_loss_weights.py, bad options refused before Ray starts, `report` on a folder."""

import json
import os
import subprocess
import sys

from mgd_ray.cli import cli
from tests.study_helpers import tune_loss_weights


def test_without_a_command_it_lists_the_commands_and_fails(capsys):
    assert cli([]) == 2
    err = capsys.readouterr().err
    assert "study" in err and "report" in err and "prepare" in err
    assert cli(["--help"]) == 0 and "mgd-ray COMMAND" in capsys.readouterr().out


def test_the_script_and_the_entry_point_take_the_same_options():
    def options(parser):
        return sorted(o for a in parser._actions for o in a.option_strings)

    from mgd_ray.cli import get_args_parser

    assert options(get_args_parser("mgd-ray study")) == options(
        tune_loss_weights.get_args_parser()
    )
    assert "--mlflow-uri" in options(get_args_parser()) and "--budget" in options(
        get_args_parser()
    )


def test_study_refuses_a_bad_option_naming_it_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["study", "--protocols", "1/3", "--output-dir", str(out)]) == 2
    assert "protocol '1/3'" in capsys.readouterr().err and not out.exists()


def test_report_regenerates_a_studys_report(tmp_path, capsys):
    folder = tmp_path / "trials" / "1_8"
    folder.mkdir(parents=True)
    (tmp_path / "study.json").write_text(
        json.dumps({"dataset": "synthetic", "protocols": ["1/8"]})
    )
    (folder / "t1.json").write_text(
        json.dumps(
            {
                "trial_id": "t1",
                "protocol": "1/8",
                "kind": "search",
                "status": "completed",
                "miou": 0.4,
                "config": {},
            }
        )
    )
    assert cli(["report", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").is_file()
    assert f"report: {tmp_path / 'REPORT.md'}" in capsys.readouterr().out


def test_the_installed_console_script_runs():
    script = os.path.join(os.path.dirname(sys.executable), "mgd-ray")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "study" in done.stdout
