"""Cityscapes in its official layout: leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png with
gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png (used when present) or
<name>_gtFine_labelIds.png (mapped to the 19 train ids with the official table)."""

from __future__ import annotations

from pathlib import Path

from .cityscapes_labels import cityscapes_label_to_train_id  # noqa: F401  (re-exported)
from .dataset import Sample
from .io import DatasetError

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"


def label_kind(label_path: str) -> str:
    """ "cityscapes_label_ids" for raw labelIds files (mapped when loaded), else "index"."""
    return "cityscapes_label_ids" if label_path.endswith(LABEL_IDS_SUFFIX) else "index"


def _label_for(root: Path, image_rel: str) -> str:
    """The gtFine file for a leftImg8bit path relative to root, preferring labelTrainIds."""
    rel = Path(image_rel)
    parts = list(rel.parts)
    if parts and parts[0] == "leftImg8bit":
        parts[0] = "gtFine"
    stem = rel.name[: -len(IMAGE_SUFFIX)] if rel.name.endswith(IMAGE_SUFFIX) else rel.stem
    folder = Path(*parts[:-1])
    train_ids = folder / (stem + TRAIN_IDS_SUFFIX)
    if (root / train_ids).is_file():
        return train_ids.as_posix()
    return (folder / (stem + LABEL_IDS_SUFFIX)).as_posix()


def scan_pairs(root: str | Path, split: str) -> list[str]:
    """Every `image<TAB>label` pair (paths relative to root) of a split ("train" / "val"),
    sorted."""
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DatasetError(
            f"cityscapes root {root}: folder {image_dir} not found, expected "
            f"leftImg8bit/{split}/<city>/<name>{IMAGE_SUFFIX}"
        )
    images = sorted(p.relative_to(root).as_posix() for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise DatasetError(
            f"cityscapes root {root}: no *{IMAGE_SUFFIX} files under {image_dir}/<city>/"
        )
    return [f"{image}\t{_label_for(root, image)}" for image in images]


def pair_id(pair: str) -> str:
    """A pair's id, "<city>/<name>":
    "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png<TAB>..."
    -> "aachen/aachen_000000_000019"."""
    image = Path(pair.split()[0])
    name = image.name[: -len(IMAGE_SUFFIX)] if image.name.endswith(IMAGE_SUFFIX) else image.stem
    return f"{image.parent.name}/{name}"


def _resolve(root: Path, rel: str, top: str) -> Path:
    # CPS lists sometimes drop the leftImg8bit/ or gtFine/ prefix; accept both spellings.
    direct = root / rel
    return direct if direct.exists() or rel.startswith(top + "/") else root / top / rel


def pairs_to_samples(root: str | Path, pairs: list[str], list_name: str) -> list[Sample]:
    """`image<TAB>label` lines -> Samples with absolute paths (labels keep their id convention)."""
    root = Path(root)
    samples = []
    for number, pair in enumerate(pairs, start=1):
        fields = pair.split()
        if len(fields) != 2:
            raise DatasetError(
                f"split list {list_name}, line {number}: {pair!r}, expected `image<TAB>label` "
                "relative paths (Cross Pseudo Supervision format)"
            )
        image = _resolve(root, fields[0], "leftImg8bit")
        label = _resolve(root, fields[1], "gtFine")
        if label.name.endswith(TRAIN_IDS_SUFFIX) and not label.is_file():
            # The list names trainIds files that were never generated: use the raw labelIds.
            raw = label.with_name(label.name[: -len(TRAIN_IDS_SUFFIX)] + LABEL_IDS_SUFFIX)
            label = raw if raw.is_file() else label
        elif label.name.endswith(LABEL_IDS_SUFFIX) and not label.is_file():
            # The list names raw labelIds (the shipped paper lists do) and only trainIds are there.
            train_ids = label.with_name(label.name[: -len(LABEL_IDS_SUFFIX)] + TRAIN_IDS_SUFFIX)
            label = train_ids if train_ids.is_file() else label
        samples.append(Sample(pair_id(pair), str(image), str(label), label_kind(str(label))))
    return samples
