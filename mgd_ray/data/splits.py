"""Partition protocols: which training images are labeled and which are unlabeled.

A split directory holds `labeled.txt` and `unlabeled.txt`, one row per line (an id for VOC and the
synthetic set, an `image<TAB>label` pair for Cityscapes). User lists are read as given; the paper's
own lists (VOC and Cityscapes, 1/16 to 1/2) ship in mgd_ray/splits/ and are the default there;
otherwise a split is drawn with a seeded permutation (labeled count ceil(N / k) for protocol 1/k)
and written, once the data has been validated, so that the study can be reproduced. For "full"
every image is labeled and `unlabeled.txt` is empty.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import PROTOCOLS, protocol_slug
from .io import DatasetError, read_list, write_list

LABELED, UNLABELED = "labeled.txt", "unlabeled.txt"
PAPER_SPLIT_DIR = Path(__file__).resolve().parent.parent / "splits"
PAPER_SPLIT_DATASETS = ("voc", "cityscapes")
PAPER_SPLIT_PROTOCOLS = ("1/16", "1/8", "1/4", "1/2")


def paper_split_dir(dataset: str, protocol: str) -> Path | None:
    """The shipped folder of the paper's lists for a dataset and protocol (holding labeled.txt and
    unlabeled.txt), or None where the paper has none."""
    if dataset not in PAPER_SPLIT_DATASETS or protocol not in PAPER_SPLIT_PROTOCOLS:
        return None
    return PAPER_SPLIT_DIR / dataset / protocol_slug(protocol)


def labeled_count(num_images: int, protocol: str) -> int:
    """ceil(N / k) for protocol "1/k"; N for "full"."""
    if protocol not in PROTOCOLS:
        raise DatasetError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if protocol == "full":
        return num_images
    return math.ceil(num_images / int(protocol.split("/")[1]))


def generate_split(rows: list[str], protocol: str, seed: int) -> tuple[list[str], list[str]]:
    """Seeded, reproducible (labeled, unlabeled) partition of `rows`, each kept in list order."""
    if len(set(rows)) != len(rows):
        raise DatasetError("training list has duplicate entries; cannot draw a disjoint split")
    count = labeled_count(len(rows), protocol)
    chosen = set(np.random.default_rng(seed).permutation(len(rows))[:count].tolist())
    labeled = [row for index, row in enumerate(rows) if index in chosen]
    unlabeled = [row for index, row in enumerate(rows) if index not in chosen]
    return labeled, unlabeled


def _key(row: str) -> str:
    # A pair row is identified by its image path, an id row by itself.
    return row.split()[0]


def read_split(split_dir: str | Path, protocol: str) -> tuple[list[str], list[str], Path]:
    """User lists from `split_dir` (or `split_dir/<protocol slug>/`): (labeled, unlabeled,
    folder)."""
    base = Path(split_dir)
    folder = base if (base / LABELED).is_file() else base / protocol_slug(protocol)
    if not (folder / LABELED).is_file():
        raise DatasetError(
            f"split_dir {base}: no {LABELED} in it or in {base / protocol_slug(protocol)}, "
            f"expected {LABELED} and {UNLABELED} with one entry per line"
        )
    labeled = ["\t".join(row) for row in read_list(folder / LABELED)]
    if protocol == "full" and not (folder / UNLABELED).is_file():
        unlabeled = []
    else:
        unlabeled = ["\t".join(row) for row in read_list(folder / UNLABELED)]
    if not labeled:
        raise DatasetError(f"split list {folder / LABELED}: empty, expected at least one entry")
    shared = sorted({_key(r) for r in labeled} & {_key(r) for r in unlabeled})
    if shared:
        raise DatasetError(
            f"split lists {folder / LABELED} and {folder / UNLABELED} share {len(shared)} "
            f"entries (e.g. {shared[0]!r}); labeled and unlabeled sets must be disjoint"
        )
    return labeled, unlabeled, folder


def write_split(folder: str | Path, labeled: list[str], unlabeled: list[str]) -> Path:
    """Write a generated split; an existing different split there is an error, not overwritten."""
    folder = Path(folder)
    for name, rows in ((LABELED, labeled), (UNLABELED, unlabeled)):
        path = folder / name
        wanted = "".join(row + "\n" for row in rows)
        if path.is_file():
            if path.read_text(encoding="utf-8") != wanted:
                raise DatasetError(
                    f"split list {path} exists with different content than the split generated "
                    "now (another dataset or list?); remove it or pass it as split_dir"
                )
            continue
        write_list(path, rows)
    return folder


def resolve_split(
    rows: list[str], protocol: str, seed: int, split_dir: str | Path | None, out_dir: str | Path
) -> tuple[list[str], list[str], Path, bool]:
    """The (labeled, unlabeled, folder, generated) split: lists from `split_dir` (user or shipped),
    else a seeded split of `rows` for `out_dir/<protocol slug>-seed<seed>/`. A generated split is
    NOT written here: the caller writes it (write_split) once the data has been validated."""
    if split_dir is not None:
        return (*read_split(split_dir, protocol), False)
    labeled, unlabeled = generate_split(rows, protocol, seed)
    return labeled, unlabeled, Path(out_dir) / f"{protocol_slug(protocol)}-seed{seed}", True
