"""Writers of small dataset trees in the exact on-disk layouts of PASCAL VOC (train_aug) and
Cityscapes, for tests. Labels are returned so tests can compare what the loaders read."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_jpeg(path: Path, image_rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(
        str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )


def write_png_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    """Grayscale PNG (SegmentationClassAug, gtFine) or a palette PNG (VOC's SegmentationClass)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.ascontiguousarray(label, dtype=np.uint8)
    img = Image.frombytes(
        "P" if palette else "L", (label.shape[1], label.shape[0]), label.tobytes()
    )
    if palette:
        # A VOC-like colour palette: the stored pixel values stay the class indices.
        colours = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
        img.putpalette(colours.ravel().tolist())
    img.save(path)


def voc_label(
    rng: np.random.Generator, height: int, width: int, num_classes: int = 21
) -> np.ndarray:
    """Blocks of random classes with a 255 outline, as VOC labels look."""
    label = np.zeros((height, width), np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        label[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(1, num_classes)
    label[height // 2, :] = 255
    return label


def write_voc_tree(
    root: Path,
    train_ids: list[str],
    val_ids: list[str],
    seed: int = 0,
    label_folder: str = "SegmentationClassAug",
    palette: bool = False,
    train_list: str = "train_aug.txt",
) -> dict[str, np.ndarray]:
    """ROOT/JPEGImages/<id>.jpg, ROOT/<label_folder>/<id>.png, ROOT/ImageSets/Segmentation/*.txt;
    returns {id: label}. Image sizes vary (as VOC's do)."""
    rng = np.random.default_rng(seed)
    labels = {}
    for index, image_id in enumerate(train_ids + val_ids):
        height, width = 40 + 4 * (index % 3), 52 - 2 * (index % 4)
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", random_image(rng, height, width))
        labels[image_id] = voc_label(rng, height, width)
        write_png_label(root / label_folder / f"{image_id}.png", labels[image_id], palette)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / train_list).write_text("".join(i + "\n" for i in train_ids))
    (lists / "val.txt").write_text("".join(i + "\n" for i in val_ids))
    return labels


def cityscapes_raw_label(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Raw labelIds: road (7), car (26), sky (23), ego vehicle (1), parking (9), bicycle (33)."""
    ids = np.array([7, 26, 23, 1, 9, 33], np.uint8)
    return ids[rng.integers(0, len(ids), (height // 8, width // 8))].repeat(8, 0).repeat(8, 1)


def write_cityscapes_tree(
    root: Path, cities: dict[str, dict[str, int]], seed: int = 0, train_ids: bool = False
) -> dict[str, np.ndarray]:
    """ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and
    ROOT/gtFine/<split>/<city>/..._gtFine_labelIds.png (+ _labelTrainIds.png when `train_ids`,
    holding train id 5 everywhere, so a test can tell which file was read); returns {id: raw
    labelIds} with id "<city>/<city>_<seq>_<frame>"."""
    rng = np.random.default_rng(seed)
    raw = {}
    for split, counts in cities.items():
        for city, count in counts.items():
            for frame in range(count):
                name = f"{city}_{frame:06d}_000019"
                height, width = 32, 64
                image = random_image(rng, height, width)
                path = root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                label = cityscapes_raw_label(rng, height, width)
                gt = root / "gtFine" / split / city
                write_png_label(gt / f"{name}_gtFine_labelIds.png", label)
                if train_ids:
                    write_png_label(
                        gt / f"{name}_gtFine_labelTrainIds.png", np.full_like(label, 5)
                    )
                raw[f"{city}/{name}"] = label
    return raw
