"""Data layer: the synthetic, PASCAL VOC and Cityscapes datasets, partition splits, augmentation
and CutMix masks. Plain NumPy / OpenCV / PyTorch; no Ray."""

from ..schema import IGNORE_INDEX
from .build import NUM_CLASSES, SYNTHETIC_SEED, SemiSupervisedData, build_datasets
from .cityscapes_labels import LABEL_ID_TO_TRAIN_ID, cityscapes_label_to_train_id
from .cutmix import cutmix_boxes, cutmix_mask, mix
from .dataset import Sample, SegmentationDataset, background_miou
from .io import DatasetError
from .splits import generate_split, labeled_count
from .synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from .synthetic import ensure_synthetic, generate_synthetic
from .transforms import IMAGENET_MEAN, IMAGENET_STD, SCALES, augment, to_tensor

__all__ = [
    "NUM_CLASSES",
    "SYNTHETIC_SEED",
    "SemiSupervisedData",
    "build_datasets",
    "LABEL_ID_TO_TRAIN_ID",
    "cityscapes_label_to_train_id",
    "cutmix_boxes",
    "cutmix_mask",
    "mix",
    "Sample",
    "SegmentationDataset",
    "background_miou",
    "IGNORE_INDEX",
    "DatasetError",
    "generate_split",
    "labeled_count",
    "SYNTHETIC_CLASS_NAMES",
    "ensure_synthetic",
    "generate_synthetic",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCALES",
    "augment",
    "to_tensor",
]
