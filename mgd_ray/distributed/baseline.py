"""What a study's rows are measured against: the all-background score of the val set, and the
command whose budget separates the rows (REPORT.md quotes both)."""
from __future__ import annotations

import numpy as np

from ..data.dataset import load_label
from ..metrics import mean_iou
from ..schema import IGNORE_INDEX
from .devices import gpu_budget


def background_miou(val, num_classes: int, background: int = 0) -> float:
    """mIoU of predicting class `background` at every labelled pixel of a val dataset (its
    `samples`' labels are read, no image): IoU(background) = its pixel share, every other class
    present in the labels scores 0, absent ones do not count (as `mean_iou` treats them)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for sample in val.samples:
        label = np.asarray(load_label(sample)).reshape(-1)
        label = label[label != IGNORE_INDEX]
        counts += np.bincount(label, minlength=num_classes)[:num_classes]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    confusion[:, background] = counts  # rows: truth, columns: prediction
    return float(mean_iou(confusion)["miou"])


def separating_command(cfg) -> tuple[str, str]:
    """(command, note): what REPORT.md tells a user to run for results whose rows can be told
    apart (more iterations and seeds than the first-run budget), and where it runs."""
    base = "python experiments/tune_loss_weights.py"
    if cfg.dataset == "synthetic":
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in gpu_budget("synthetic").items())
        return (f"{base} --output-dir results/synthetic-gpu",
                f" on a machine with a GPU (it then uses the preset's GPU budget: {flags}; on a CPU "
                f"those flags take hours)")
    return (f"{base} --dataset {cfg.dataset} --data-root {cfg.data_root} --protocols {' '.join(cfg.protocols)} "
            f"--gpus-per-trial 1 --seeds 3", " (the paper's schedule, three seeds per row)")
