"""`build_datasets`: from a DataConfig to validated labeled / unlabeled / val datasets."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from ..config import DataConfig
from . import cityscapes, voc
from .dataset import Sample, SegmentationDataset
from .io import DatasetError, cache_root, read_list
from .splits import labeled_count, paper_split_dir, resolve_split, write_split
from .synthetic import ensure_synthetic
from .validate import validate_samples

NUM_CLASSES: dict[str, int] = {"synthetic": 6, "voc": 21, "cityscapes": 19}
# The held-out selection set: this many images of the unlabeled part of the training split (their
# labels are never used in training), drawn with the split's seed. A search ranks its trials on it,
# so that the val score of the configuration it picks is not the score that picked it.
HOLDOUT_IMAGES: dict[str, int] = {"synthetic": 64, "voc": 500, "cityscapes": 200}
# The synthetic images are fixed across a study: DataConfig.seed varies the split, not the images.
SYNTHETIC_SEED = 0

_LAYOUT = {
    "synthetic": "the VOC layout (JPEGImages/, SegmentationClassAug/, ImageSets/Segmentation/)",
    "voc": "JPEGImages/, SegmentationClassAug/ (or SegmentationClass/), ImageSets/Segmentation/",
    "cityscapes": "leftImg8bit/{train,val}/<city>/ and gtFine/{train,val}/<city>/",
}


@dataclass
class SemiSupervisedData:
    """The three datasets of one partition. For protocol "full" every training image is labeled
    and `unlabeled` iterates the same images without labels: MGD's distillation terms are computed
    on unlabeled batches, so they still need a stream of images."""

    labeled: Dataset
    unlabeled: Dataset
    val: Dataset
    num_classes: int
    labeled_ids: list[str]
    unlabeled_ids: list[str]
    split_dir: str
    # full-resolution labeled items of the held-out selection set (`holdout_samples`); empty for
    # protocol "full", which has no unlabeled part
    holdout: Dataset | None = None


def _default_split_dir(dataset: str, root: Path) -> Path:
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    return cache_root() / "splits" / f"{dataset}-{tag}"


def _user_val_list(split_dir: str | None) -> Path | None:
    path = Path(split_dir) / "val.txt" if split_dir else None
    return path if path is not None and path.is_file() else None


def _to_samples(dataset: str, root: Path, rows: list[str], list_name: str) -> list[Sample]:
    if dataset == "cityscapes":
        return cityscapes.pairs_to_samples(root, rows, list_name)
    return voc.ids_to_samples(root, rows)


def _split_source(cfg: DataConfig) -> str | None:
    """The folder of the split lists to read, or None to draw a seeded split."""
    if cfg.split_dir:
        return cfg.split_dir
    shipped = paper_split_dir(cfg.dataset, cfg.protocol) if cfg.paper_split else None
    return str(shipped) if shipped is not None else None


def _samples(cfg: DataConfig, root: Path, split_out: Path):
    """(labeled, unlabeled, val) Samples, the split folder, and for a split drawn here the function
    that writes it (None for read lists)."""
    source = _split_source(cfg)
    # The training list is only needed to draw a split; lists name their own images.
    if source:
        rows = []
    else:
        rows = (
            cityscapes.scan_pairs(root, "train")
            if cfg.dataset == "cityscapes"
            else voc.train_ids(root)
        )
    labeled, unlabeled, folder, generated = resolve_split(
        rows, cfg.protocol, cfg.seed, source, split_out
    )
    val_list = _user_val_list(cfg.split_dir)
    if cfg.dataset != "cityscapes":
        val_rows = voc.val_ids(root, cfg.split_dir)
    elif val_list is not None:
        val_rows = ["\t".join(row) for row in read_list(val_list)]
    else:
        val_rows = cityscapes.scan_pairs(root, "val")
    labeled_samples = _to_samples(cfg.dataset, root, labeled, str(folder / "labeled.txt"))
    unlabeled_samples = _to_samples(cfg.dataset, root, unlabeled, str(folder / "unlabeled.txt"))
    if not generated:
        for samples, name in (
            (labeled_samples, "labeled.txt"),
            (unlabeled_samples, "unlabeled.txt"),
        ):
            _check_listed_images(samples, folder / name, root, cfg.dataset)
    val_samples = _to_samples(cfg.dataset, root, val_rows, str(val_list or "the validation list"))
    write = (lambda: write_split(folder, labeled, unlabeled)) if generated else None
    return labeled_samples, unlabeled_samples, val_samples, folder, write


def _check_listed_images(samples: list[Sample], list_path: Path, root: Path, dataset: str) -> None:
    """One error for all the images a split list names that the data root lacks."""
    missing = [s.id for s in samples if not os.path.isfile(s.image)]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"split list {list_path}: {len(missing)} of its {len(samples)} images are missing "
            f"from data root {root} ({shown}); expected {_LAYOUT[dataset]} holding every image "
            "the list names (the paper's lists need the whole training set; pass --split-dir "
            "with lists of your images)"
        )


def build_datasets(cfg: DataConfig, save_split: bool = True) -> SemiSupervisedData:
    """Resolve the data root and split, validate every file once, and return the datasets:
    labeled items (image 3 x S x S, label S x S), unlabeled items (image 3 x S x S), val items
    (image 3 x H x W, label H x W, id) with S = cfg.crop_size. Raises DatasetError on bad data,
    before a generated split is written (save_split=False: a generated split is not written, for
    checks that must leave no file behind)."""
    num_classes = NUM_CLASSES[cfg.dataset]
    labeled_count(0, cfg.protocol)  # an unknown protocol fails before any file is touched
    if cfg.dataset == "synthetic":
        # Generated on first use, in the cache or in the folder the user named.
        root = ensure_synthetic(SYNTHETIC_SEED, cfg.root)
    else:
        root = Path(cfg.root)
    if not root.is_dir():
        raise DatasetError(
            f"data root {root} (dataset {cfg.dataset!r}): folder not found, expected "
            f"{_LAYOUT[cfg.dataset]}"
        )
    split_out = (
        Path(cfg.split_out_dir) if cfg.split_out_dir else _default_split_dir(cfg.dataset, root)
    )
    labeled, unlabeled, val, folder, write_generated_split = _samples(cfg, root, split_out)
    if cfg.protocol == "full":
        unlabeled = list(labeled)
    labeled_keys = {s.image for s in labeled}
    holdout = holdout_samples(unlabeled if cfg.protocol != "full" else [], cfg)
    held = {s.image for s in holdout}
    validate_samples(
        labeled + val + holdout,
        [s for s in unlabeled if s.image not in labeled_keys | held],
        num_classes,
    )
    # only now: a failed validation leaves no split behind
    if save_split and write_generated_split is not None:
        write_generated_split()
    return SemiSupervisedData(
        labeled=SegmentationDataset(labeled, "labeled", cfg.crop_size),
        unlabeled=SegmentationDataset(unlabeled, "unlabeled", cfg.crop_size),
        val=SegmentationDataset(val, "val", cfg.crop_size),
        num_classes=num_classes,
        labeled_ids=[s.id for s in labeled],
        unlabeled_ids=[s.id for s in unlabeled],
        split_dir=str(folder),
        holdout=SegmentationDataset(holdout, "val", cfg.crop_size),
    )


def holdout_samples(unlabeled: list[Sample], cfg: DataConfig) -> list[Sample]:
    """The held-out selection set: HOLDOUT_IMAGES[dataset] (or every) unlabeled sample whose
    label file exists, drawn with the split's seed, in list order. They stay in the unlabeled
    stream: training sees the images, never their labels."""
    with_labels = [s for s in unlabeled if s.label is not None and os.path.isfile(s.label)]
    count = min(HOLDOUT_IMAGES[cfg.dataset], len(with_labels))
    keys = sorted(
        with_labels,
        key=lambda s: hashlib.sha256(f"{cfg.seed}:{s.id}".encode()).hexdigest(),
    )[:count]
    chosen = {s.id for s in keys}
    return [s for s in with_labels if s.id in chosen]


__all__ = [
    "HOLDOUT_IMAGES",
    "NUM_CLASSES",
    "SYNTHETIC_SEED",
    "Sample",
    "SemiSupervisedData",
    "build_datasets",
    "holdout_samples",
]
