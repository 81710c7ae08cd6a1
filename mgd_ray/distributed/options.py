"""A study's options: `resolve_study` turns what the user gave into one frozen `StudyConfig`,
resolving every default once (--smoke, the GPUs found and the preset's GPU budget, the preset's
study size, the regime, the results folder) and checking every value before Ray starts and before
anything is written. What stays open is what the dataset preset decides per protocol and per run
role (schedules, crop, batch): `engine.presets.preset_configs` resolves those, in one place.

The config and its parts are study_config.py's; the checks against the file system, torch and
Ray are validate.py's, run by plan.plan_study before Ray starts.

Also here: the command REPORT.md suggests for a budget that separates the rows
(`separating_command`).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from ..engine.presets import read_preset
from ..models.pretrained import default_regime
from .study_config import BudgetOptions, DataOptions, StudyConfig

# --smoke: one protocol, two search trials, one ablation seed, a few iterations of everything.
SMOKE = dict(
    protocols=("1/8",),
    num_samples=2,
    seeds=1,
    iterations=8,
    teacher_iterations=8,
    eval_every=4,
    crop_size=48,
    batch_size=2,
    loader_workers=0,
)
# study option <- key of a preset's named budget section (<name>_budget: gpu_budget, ...)
BUDGET_KEYS = {
    "protocols": "protocols",
    "iterations": "student_iterations",
    "teacher_iterations": "teacher_iterations",
    "batch_size": "batch_size",
    "crop_size": "crop_size",
    "eval_every": "eval_every",
    "teacher_eval_every": "teacher_eval_every",
    "num_samples": "search_trials",
    "seeds": "ablation_seeds",
    "trials_per_gpu": "trials_per_gpu",
}


def detect_gpus(address: str | None) -> int:
    """GPUs of this machine (no --address), or of the cluster at `address`: what its live nodes
    have or, on an autoscaling cluster whose GPU workers start at zero, what its node types may
    start (cluster.cluster_gpus), whichever is more."""
    if address is None:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    from .cluster import connected_gpus

    return connected_gpus(address)


def gpu_memory(address: str | None) -> tuple[float, str] | None:
    """(GiB, name) of the GPU trials run on: this machine's first GPU (no --address), or the
    smallest GPU type of the cluster at `address` (memory.ACCELERATOR_GIB of the types
    cluster.cluster_accelerators finds); None when unknown."""
    if address is None:
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return props.total_memory / 2**30, props.name
    from .cluster import connected_accelerators
    from .memory import ACCELERATOR_GIB

    known = [
        (ACCELERATOR_GIB[name], name)
        for name in connected_accelerators(address)
        if name in ACCELERATOR_GIB
    ]
    return min(known) if known else None


def budget_names(dataset: str) -> list[str]:
    """The named budgets of a dataset's preset (its <name>_budget sections)."""
    return sorted(k[: -len("_budget")] for k in read_preset(dataset)[0] if k.endswith("_budget"))


def named_budget(dataset: str, name: str) -> dict[str, Any]:
    """The preset's `<name>_budget` section as study option names (protocols as a tuple, every
    other value an int); {} for "gpu" when the preset has none."""
    raw = read_preset(dataset)[0].get(f"{name}_budget")
    if raw is None:
        if name == "gpu":
            return {}
        raise ValueError(
            f"--budget {name}: preset {dataset}.yaml has no {name}_budget section; its budgets: "
            f"{', '.join(budget_names(dataset)) or 'none'}"
        )
    unknown = sorted(set(raw) - set(BUDGET_KEYS.values()))
    if unknown:
        raise ValueError(
            f"preset {dataset}.yaml: {name}_budget has unknown key(s) {unknown}; "
            f"expected some of {sorted(BUDGET_KEYS.values())}"
        )
    return {
        option: tuple(raw[key]) if option == "protocols" else int(raw[key])
        for option, key in BUDGET_KEYS.items()
        if key in raw
    }


def gpu_budget(dataset: str) -> dict[str, Any]:
    """The preset's `gpu_budget` section ({} when it has none), as study option names."""
    return named_budget(dataset, "gpu")


def study_budget(dataset: str) -> dict[str, int]:
    """{"num_samples", "seeds"}: a dataset's default study size (16 search trials and 2 seeds per
    ablation row unless its preset says otherwise)."""
    raw = read_preset(dataset)[0]
    return {
        "num_samples": int(raw.get("search_trials", BudgetOptions.num_samples)),
        "seeds": int(raw.get("ablation_seeds", BudgetOptions.seeds)),
    }


def resolve_study(
    smoke: bool = False,
    gpus: Callable[[str | None], int] | None = None,
    budget: str | None = None,
    **given: Any,
) -> tuple[StudyConfig, str]:
    """The study's config from the options a user gave (keyword arguments named as OPTIONS; None
    means not given), and a sentence saying where its trials run.

    Explicit options always win; then --smoke's values, or the preset's named `budget`
    (--budget NAME: its NAME_budget section); then, when --gpus-per-trial is not given and
    `gpus(address)` (default: detect_gpus) finds GPUs, one GPU per trial with the preset's GPU
    budget (not over a named budget); then the preset's study size, the dataset's regime and
    results folder (results/<dataset>-<budget> for a named budget), and StudyConfig's own
    defaults."""
    values = {key: value for key, value in given.items() if value is not None}
    dataset = values.get("dataset", DataOptions.dataset)
    if smoke and budget is not None:
        raise ValueError(f"--smoke and --budget {budget}: give one of them")
    if smoke:
        values = {**SMOKE, **values}
    if budget is not None:
        values = {**named_budget(dataset, budget), **values, "budget": budget}
        values.setdefault("output_dir", f"results/{dataset}-{budget}")
    if "gpus_per_trial" in values:
        devices = f"--gpus-per-trial {values['gpus_per_trial']} (given)"
    elif (found := (gpus or detect_gpus)(values.get("address"))) > 0:
        on_top = {} if budget is not None else gpu_budget(dataset)
        applied = {key: value for key, value in on_top.items() if key not in values}
        values.update(applied, gpus_per_trial=1)
        shared = values.get("trials_per_gpu", 1)
        per_gpu = "one GPU per trial" if shared == 1 else f"{shared} trials share each GPU"
        devices = (
            f"{found} GPU(s) found: {per_gpu}, up to {found * shared} trial(s) at a time; GPU "
            "budget applied: "
            f"{', '.join(f'{k}={v}' for k, v in applied.items()) or 'none (all given)'} "
            "(--gpus-per-trial 0 trains on the CPU)"
        )
    else:
        values["gpus_per_trial"] = 0
        devices = "no GPU found: training on the CPU"
    values = {**study_budget(dataset), **values}
    values.setdefault("workers_per_trial", max(1, values["gpus_per_trial"]))
    values.setdefault("pretrained", default_regime(dataset))
    values.setdefault("output_dir", "results/smoke" if smoke else f"results/{dataset}")
    for name in ("protocols", "ablation_variants"):
        if name in values:
            values[name] = tuple(values[name])
    return StudyConfig.from_options(**values), devices


def study_name(cfg: StudyConfig) -> str:
    return os.path.basename(os.path.abspath(cfg.storage.output_dir))


def separating_command(cfg: StudyConfig) -> tuple[str, str]:
    """(command, note): what REPORT.md tells a user to run for results whose rows may be told
    apart (more iterations and seeds than the first-run budget), and where it runs."""
    base = "python experiments/tune_loss_weights.py"
    if cfg.budget.name == "showcase":
        return "", ""  # the showcase is that command: its report stands on its own numbers
    if cfg.data.dataset == "synthetic":
        return (
            f"{base} --budget showcase",
            " (on 2 CPU cores within the hour; its measured verdict is quoted below)",
        )
    return (
        f"{base} --dataset {cfg.data.dataset} --data-root {cfg.data.data_root} --protocols "
        f"{' '.join(cfg.budget.protocols)} --gpus-per-trial 1 --seeds 3",
        " (the paper's schedule, three seeds per row)",
    )
