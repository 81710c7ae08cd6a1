"""What the study tests share: the CLI module, the trial records a study left, random teachers."""
import glob
import importlib.util
import json
import os
import socket

import torch

from mgd_ray.data import NUM_CLASSES
from mgd_ray.models import build_model

_spec = importlib.util.spec_from_file_location(
    "tune_loss_weights", os.path.join(os.path.dirname(__file__), "..", "experiments", "tune_loss_weights.py"))
tune_loss_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune_loss_weights)


def run_cli(argv, capsys):
    """(exit code, stderr) of experiments/tune_loss_weights.py run in this process."""
    code = tune_loss_weights.main(tune_loss_weights.get_args_parser().parse_args(argv))
    return code, capsys.readouterr().err


def records(results_dir):
    """Every trial record of a results folder, in file-name order."""
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "trials", "*", "*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def random_teacher_files(folder) -> dict[str, str]:
    """{"--teacher-deep-checkpoint": path, "--teacher-wide-checkpoint": path}: untrained synthetic
    teachers (no time spent training them; the tests are about the study, not the teachers)."""
    out = {}
    for option, arch in (("--teacher-deep-checkpoint", "deeplabv3plus_resnet101"),
                         ("--teacher-wide-checkpoint", "deeplabv3plus_wide_resnet50_2")):
        out[option] = str(folder / f"{arch}.pt")
        torch.save(build_model(arch, NUM_CLASSES["synthetic"]).state_dict(), out[option])
    return out


def free_port(host: str = "") -> int:
    """A TCP port free on `host` now ("" = every interface, as a Ray head binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
