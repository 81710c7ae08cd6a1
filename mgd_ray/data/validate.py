"""Check a dataset before any training starts, once: every file named by the lists exists, every
image decodes, every label is a single-channel map of the image's size with values in 0..C-1 or
255.

Decoding 10k VOC files takes a while, so a passing check leaves a marker file keyed by the exact
list of files with their sizes and modification times; a later run with the same files skips the
decode, and any change to a list or a file changes the key.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..schema import IGNORE_INDEX
from .cityscapes_labels import MAX_LABEL_ID
from .dataset import Sample
from .io import DatasetError, cache_root, read_image, read_label

_MARKER_VERSION = "validated-v1"


def _stat(path: str) -> str:
    info = os.stat(path)
    return f"{path}:{info.st_size}:{info.st_mtime_ns}"


def _check_label_values(label: np.ndarray, sample: Sample, num_classes: int) -> str | None:
    values = np.unique(label)
    if sample.label_kind == "cityscapes_label_ids":
        bad = values[values > MAX_LABEL_ID]
        expected = f"Cityscapes labelIds 0..{MAX_LABEL_ID}"
    else:
        bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
        expected = f"class ids 0..{num_classes - 1} or {IGNORE_INDEX} (ignore)"
    if bad.size:
        return f"label {sample.label}: values {bad[:8].tolist()} out of range, expected {expected}"
    return None


def _check(sample: Sample, num_classes: int, with_label: bool) -> str | None:
    """The problem with one sample, or None."""
    try:
        image = read_image(sample.image)
        if not with_label:
            return None
        label = read_label(sample.label)
    except DatasetError as exc:
        return str(exc)
    if label.shape != image.shape[:2]:
        return (
            f"label {sample.label}: size {label.shape[1]} x {label.shape[0]} (W x H), expected "
            f"the size of image {sample.image}, {image.shape[1]} x {image.shape[0]}"
        )
    return _check_label_values(label, sample, num_classes)


def _raise(problems: list[str]) -> None:
    more = (
        f" (and {len(problems) - 1} more problem(s) in this dataset)" if len(problems) > 1 else ""
    )
    raise DatasetError(problems[0] + more)


def validate_samples(
    labeled: list[Sample],
    image_only: list[Sample],
    num_classes: int,
    marker_dir: str | Path | None = None,
    threads: int | None = None,
) -> None:
    """Raise DatasetError naming the first bad file; `labeled` samples get their labels checked,
    `image_only` samples (the unlabeled list) only their images."""
    jobs = [(s, True) for s in labeled] + [(s, False) for s in image_only]
    missing = []
    for sample, with_label in jobs:
        paths = [("image", sample.image)] + ([("label", sample.label)] if with_label else [])
        missing += [
            f"{kind} {path}: file not found (named by the split list, id {sample.id!r})"
            for kind, path in paths
            if not os.path.isfile(path)
        ]
    if missing:
        _raise(missing)

    digest = hashlib.sha256(f"{_MARKER_VERSION}:{num_classes}".encode())
    for sample, with_label in jobs:
        digest.update(_stat(sample.image).encode())
        if with_label:
            digest.update(f"|{_stat(sample.label)}|{sample.label_kind}".encode())
        digest.update(b"\n")
    marker = Path(marker_dir or cache_root() / "validated") / f"{digest.hexdigest()}.ok"
    if marker.is_file():
        return

    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda job: _check(job[0], num_classes, job[1]), jobs))
    problems = [problem for problem in results if problem is not None]
    if problems:
        _raise(problems)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{len(jobs)} files checked\n", encoding="utf-8")
