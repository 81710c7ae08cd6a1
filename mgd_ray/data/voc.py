"""PASCAL VOC 2012 + SBD ("train_aug") in the UniMatch / CPS layout, also used by the synthetic
set: ROOT/JPEGImages/<id>.jpg, ROOT/SegmentationClassAug/<id>.png (index PNG, 0..20, 255 = ignore;
ROOT/SegmentationClass/ when the Aug folder is absent),
ROOT/ImageSets/Segmentation/{train_aug,val}.txt.
"""

from __future__ import annotations

from pathlib import Path

from .dataset import Sample
from .io import DatasetError, read_list

LIST_DIR = Path("ImageSets") / "Segmentation"
LABEL_DIRS = ("SegmentationClassAug", "SegmentationClass")
TRAIN_LISTS = ("train_aug.txt", "train.txt")


def label_dir(root: str | Path) -> Path:
    root = Path(root)
    for name in LABEL_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(
        f"VOC root {root}: neither {' nor '.join(LABEL_DIRS)} found, expected <id>.png label maps"
    )


def _row_id(fields: list[str]) -> str:
    # UniMatch-style lists give "JPEGImages/<id>.jpg SegmentationClass/<id>.png"; plain lists the
    # id.
    return Path(fields[0]).stem if len(fields) > 1 or fields[0].endswith(".jpg") else fields[0]


def read_ids(path: str | Path) -> list[str]:
    """Ids of a VOC list file (one id, or one image/label pair, per line)."""
    ids = [_row_id(fields) for fields in read_list(path)]
    if not ids:
        raise DatasetError(f"split list {path}: empty, expected one image id per line")
    return ids


def train_ids(root: str | Path) -> list[str]:
    """Ids of the training list: train_aug.txt (VOC + SBD) or, failing that, train.txt."""
    root = Path(root)
    for name in TRAIN_LISTS:
        if (root / LIST_DIR / name).is_file():
            return read_ids(root / LIST_DIR / name)
    raise DatasetError(f"VOC root {root}: no {' or '.join(TRAIN_LISTS)} in {root / LIST_DIR}")


def val_ids(root: str | Path, split_dir: str | Path | None = None) -> list[str]:
    """Ids of the validation list: split_dir/val.txt when given there, else
    ImageSets/Segmentation/val.txt."""
    if split_dir is not None and (Path(split_dir) / "val.txt").is_file():
        return read_ids(Path(split_dir) / "val.txt")
    path = Path(root) / LIST_DIR / "val.txt"
    if not path.is_file():
        raise DatasetError(f"VOC root {root}: validation list {path} not found")
    return read_ids(path)


def ids_to_samples(root: str | Path, rows: list[str]) -> list[Sample]:
    """Split rows (ids or pairs) -> Samples with the image and label paths of the VOC layout."""
    root = Path(root)
    labels = label_dir(root)
    samples = []
    for row in rows:
        sample_id = _row_id(row.split())
        samples.append(
            Sample(
                sample_id,
                str(root / "JPEGImages" / f"{sample_id}.jpg"),
                str(labels / f"{sample_id}.png"),
            )
        )
    return samples
