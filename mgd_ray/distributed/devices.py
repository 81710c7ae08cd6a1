"""Where trials run when the user did not say: one GPU per trial when the machine (or the cluster
given by --address) has GPUs, with the dataset preset's GPU budget; the CPU otherwise. Explicit
options always win."""
from __future__ import annotations

import yaml

from ..engine.presets import PRESET_DIR

# study option <- key of the preset's gpu_budget section
GPU_BUDGET_KEYS = {"iterations": "student_iterations", "teacher_iterations": "teacher_iterations",
                   "batch_size": "batch_size", "crop_size": "crop_size", "eval_every": "eval_every",
                   "num_samples": "search_trials", "seeds": "ablation_seeds", "trials_per_gpu": "trials_per_gpu"}


def detect_gpus(address: str | None) -> int:
    """GPUs of this machine (no --address) or of the running cluster at `address`."""
    if address is None:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    import ray
    if not ray.is_initialized():
        ray.init(address=address)
    return int(ray.cluster_resources().get("GPU", 0))


def gpu_budget(dataset: str) -> dict:
    """The preset's `gpu_budget` section ({} when it has none), as study option names."""
    with open(PRESET_DIR / f"{dataset}.yaml") as f:
        raw = (yaml.safe_load(f) or {}).get("gpu_budget") or {}
    unknown = sorted(set(raw) - set(GPU_BUDGET_KEYS.values()))
    if unknown:
        raise ValueError(f"preset {dataset}.yaml: gpu_budget has unknown key(s) {unknown}; "
                         f"expected some of {sorted(GPU_BUDGET_KEYS.values())}")
    return {option: int(raw[key]) for option, key in GPU_BUDGET_KEYS.items() if key in raw}


def choose_devices(values: dict, gpus_option: int | None, detected_gpus: int, budget: dict) -> tuple[dict, str]:
    """Study option values with the device choice made: --gpus-per-trial when given (even 0);
    otherwise 1 GPU per trial if any GPU was detected, and the GPU budget for every budget option
    left unset (None). Returns (values, a sentence saying what was chosen)."""
    values = dict(values)
    if gpus_option is not None:
        values["gpus_per_trial"] = gpus_option
        return values, f"--gpus-per-trial {gpus_option} (given)"
    if detected_gpus < 1:
        values["gpus_per_trial"] = 0
        return values, "no GPU found: training on the CPU"
    values["gpus_per_trial"] = 1
    applied = {k: v for k, v in budget.items() if values.get(k) is None}
    values.update(applied)
    budget_text = ", ".join(f"{k}={v}" for k, v in applied.items()) or "none (all given)"
    shared = int(values.get("trials_per_gpu") or 1)
    per_gpu = "one GPU per trial" if shared == 1 else f"{shared} trials share each GPU"
    return values, (f"{detected_gpus} GPU(s) found: {per_gpu}, up to {detected_gpus * shared} trial(s) at a time; "
                    f"GPU budget applied: {budget_text} (--gpus-per-trial 0 trains on the CPU)")
