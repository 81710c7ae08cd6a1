"""One dataset class for every source, with a mode of labeled / unlabeled / val (as in
UniMatch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..metrics import mean_iou
from ..schema import IGNORE_INDEX
from . import transforms
from .cityscapes_labels import cityscapes_label_to_train_id
from .io import read_image, read_label

MODES = ("labeled", "unlabeled", "val")


@dataclass(frozen=True)
class Sample:
    """One image on disk; `label_kind` says how to turn the stored label into class ids:
    "index" (stored values are the ids) or "cityscapes_label_ids" (raw ids, mapped on load)."""

    id: str
    image: str
    label: str | None
    label_kind: str = "index"


def load_label(sample: Sample) -> np.ndarray:
    """Class ids (uint8 H x W, 255 = ignore) of a sample, mapped when the file holds raw ids."""
    label = read_label(sample.label)
    if sample.label_kind == "cityscapes_label_ids":
        label = cityscapes_label_to_train_id(label)
    return label


class SegmentationDataset(Dataset):
    """labeled: (image 3 x S x S float32, label S x S int64) after scale / flip / crop;
    unlabeled: image 3 x S x S with the same geometric augmentation;
    val: (image 3 x H x W, label H x W int64, id) at full resolution.

    Indexing draws the augmentation from torch's global generator, which DataLoader seeds
    differently in each worker, so workers never repeat each other's crops; `load(index,
    generator)` draws it from `generator` instead (the engine's data stream, which must not depend
    on the workers)."""

    def __init__(self, samples: list[Sample], mode: str, crop_size: int) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if mode != "unlabeled" and any(s.label is None for s in samples):
            raise ValueError(f"mode {mode!r} needs a label for every sample")
        self.samples = list(samples)
        self.mode = mode
        self.crop_size = int(crop_size)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __getitem__(self, index: int):
        return self.load(index)

    def load(self, index: int, generator: torch.Generator | None = None):
        """Item `index` (as indexing gives it), its augmentation drawn from `generator` (None:
        torch's global generator)."""
        sample = self.samples[index]
        image = read_image(sample.image)
        if self.mode == "val":
            label = load_label(sample)
            return transforms.to_tensor(image), torch.from_numpy(label.astype(np.int64)), sample.id
        if self.mode == "unlabeled":
            image, _ = transforms.augment(image, None, self.crop_size, generator)
            return transforms.to_tensor(image)
        image, label = transforms.augment(image, load_label(sample), self.crop_size, generator)
        return transforms.to_tensor(image), torch.from_numpy(label.astype(np.int64))


def background_miou(val: SegmentationDataset, num_classes: int, background: int = 0) -> float:
    """mIoU of predicting class `background` at every labelled pixel of a val dataset (its samples'
    labels are read, no image): IoU(background) = its pixel share, every other class present in the
    labels scores 0, absent ones do not count (as `mean_iou` treats them). A row of a study at this
    level learned nothing beyond the class prior."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for sample in val.samples:
        label = np.asarray(load_label(sample)).reshape(-1)
        label = label[label != IGNORE_INDEX]
        counts += np.bincount(label, minlength=num_classes)[:num_classes]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    confusion[:, background] = counts  # rows: truth, columns: prediction
    return float(mean_iou(confusion)["miou"])
