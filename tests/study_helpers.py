"""What the study tests share: the CLI module, the trial records a study left, random teachers."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import torch

from mgd_ray.data import NUM_CLASSES
from mgd_ray.distributed.cluster import free_port  # noqa: F401 -- the tests' port finder
from mgd_ray.models import build_model

_spec = importlib.util.spec_from_file_location(
    "tune_loss_weights", os.path.join(os.path.dirname(__file__), "..", "experiments", "tune_loss_weights.py"))
tune_loss_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune_loss_weights)


def run_cli(argv, capsys):
    """(exit code, stderr) of experiments/tune_loss_weights.py run in this process."""
    code = tune_loss_weights.main(tune_loss_weights.get_args_parser().parse_args(argv))
    return code, capsys.readouterr().err


def trial_spec(seed=0, iterations=10):
    """A TrialSpec of the synthetic set (teacher files need not exist: nothing trains)."""
    from mgd_ray.config import DistillConfig
    from mgd_ray.distributed.spec import TrainRun, TrialSpec
    return TrialSpec(DistillConfig(seed=seed, iterations=iterations, eval_every=min(5, iterations)),
                     TrainRun(storage_path="/tmp/no-such-storage"))


def search_config(point, seed=0):
    """The Tune config of a search trial at `point` (flat, by POINT_KEYS)."""
    return {"run": trial_spec(seed=seed).to_tune(), **point}


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



def alive_nodes(address: str, env: dict[str, str]) -> dict[str, dict]:
    """{node id: resources} of the live nodes of the cluster at `address`, asked by a separate client
    process (the test process itself never joins a Ray cluster)."""
    code = ("import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print('NODES', json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))")
    done = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # Ray may print to stdout too (e.g. a just-killed node's "lagging heartbeats" notice), after the line
    [line] = [line for line in done.stdout.splitlines() if line.startswith("NODES ")]
    return json.loads(line.removeprefix("NODES "))
