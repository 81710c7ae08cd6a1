"""Inputs the workers would trip over are refused by the CLI before Ray starts, writing nothing:
corrupt or wrong teacher files, a protocol given twice."""

import pytest
import ray
import torch

from mgd_ray.models import build_model
from tests.study_helpers import run_cli


def refused(argv, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(argv + ["--smoke", "--output-dir", str(out)], capsys)
    assert code == 2
    assert not out.exists()  # nothing written, not even the folder
    assert not ray.is_initialized()
    return err


@pytest.mark.parametrize("option", ["--teacher-deep-checkpoint", "--teacher-wide-checkpoint"])
def test_a_corrupt_teacher_file_is_refused_naming_its_option(option, tmp_path, capsys):
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    err = refused([option, str(path)], tmp_path, capsys)
    assert f"{option} {path}" in err and "state dict" in err


def test_a_teacher_of_the_wrong_architecture_is_refused(tmp_path, capsys):
    path = tmp_path / "student.pt"
    torch.save(build_model("deeplabv3plus_mobilenetv2", 5).state_dict(), path)
    err = refused(["--teacher-deep-checkpoint", str(path)], tmp_path, capsys)
    assert "--teacher-deep-checkpoint" in err and "deeplabv3plus_resnet101" in err


def test_a_protocol_given_twice_is_refused(tmp_path, capsys):
    err = refused(["--protocols", "1/8", "1/4", "1/8"], tmp_path, capsys)
    assert "--protocols" in err and "1/8 given more than once" in err
