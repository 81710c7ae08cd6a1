"""`mgd-ray prepare cityscapes`: Cityscapes' train and val splits into the layout the loader reads
(mgd_ray/data/cityscapes.py): leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png copied, and
gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png made from the _gtFine_labelIds.png files
with the official table (cityscapesScripts' labels.py; csCreateTrainIdLabelImgs writes the same
files). Sources: leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, or their folders. The
test split has no labels and is left out."""

from __future__ import annotations

import re
from pathlib import Path

from ..data.cityscapes_labels import MAX_LABEL_ID, cityscapes_label_to_train_id
from .sources import PrepareError, Source, decode_index_png, encode_png, write_once

NUM_CLASSES = 19
CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
SPLITS = ("train", "val")
IMAGE = re.compile(r"(?:^|/)leftImg8bit/(train|val)/([^/]+)/([^/]+)_leftImg8bit\.png$")
LABEL_IDS = re.compile(r"(?:^|/)gtFine/(train|val)/([^/]+)/([^/]+)_gtFine_labelIds\.png$")
KINDS = {
    "images": (IMAGE, "leftImg8bit_trainvaltest.zip or its leftImg8bit/ folder"),
    "labels": (LABEL_IDS, "gtFine_trainvaltest.zip or its gtFine/ folder"),
}


def classify(source: Source) -> str:
    """ "images" or "labels": what `source` holds; PrepareError naming it otherwise."""
    for kind, (pattern, _) in KINDS.items():
        if any(pattern.search(name) for name in source.names):
            return kind
    wanted = "; ".join(text for _, text in KINDS.values())
    raise PrepareError(
        f"source {source.path}: no Cityscapes train/val files, expected one of: {wanted}"
    )


def key(match: re.Match) -> str:
    """ "<split>/<city>/<name>" of an image or label path's match."""
    return "/".join(match.groups())


def train_ids(data: bytes, name: str):
    """A _gtFine_labelIds.png as train ids 0..18, 255 elsewhere; PrepareError for a value above
    the official table's largest id."""
    label = decode_index_png(data, name)
    if label.ndim != 2:
        raise PrepareError(f"label {name}: an RGB image, expected the 8-bit labelIds PNG")
    if int(label.max(initial=0)) > MAX_LABEL_ID:
        raise PrepareError(
            f"label {name}: value {int(label.max())}, expected Cityscapes labelIds "
            f"0..{MAX_LABEL_ID}"
        )
    return cityscapes_label_to_train_id(label)


def plan(sources: dict[str, list[Source]]) -> tuple[list[str], list[str]]:
    """The "<split>/<city>/<name>" keys of the images and of the labels the sources hold."""
    for kind, (_, text) in KINDS.items():
        if not sources.get(kind):
            raise PrepareError(f"prepare cityscapes: no {kind} source given, expected {text}")
    found = {}
    for kind, (pattern, _) in KINDS.items():
        found[kind] = sorted(
            key(m) for s in sources[kind] for n in s.names if (m := pattern.search(n))
        )
    return found["images"], found["labels"]


def write_tree(sources: dict[str, list[Source]], output: Path, needed: set[str]) -> dict:
    """Copy the images and convert the labels of the `needed` keys into `output`, keeping files
    already there (a resumed run); counts of written and kept files."""
    counts = {"images written": 0, "images kept": 0, "labels written": 0, "labels kept": 0}

    def put(kind: str, path: Path, make) -> None:
        counts[f"{kind} {'written' if write_once(path, make) else 'kept'}"] += 1

    for kind, (pattern, _) in KINDS.items():

        def wanted(name: str, pattern=pattern) -> bool:
            m = pattern.search(name)
            return bool(m) and key(m) in needed

        for source in sources[kind]:
            for name, data in source.members(wanted):
                found, where = key(pattern.search(name)), f"{source.path}:{name}"
                if kind == "images":
                    put(kind, image_path(output, found), data)
                else:
                    put(
                        kind,
                        label_path(output, found),
                        lambda data=data, where=where: encode_png(train_ids(data, where), where),
                    )
    return counts


def image_path(output: Path, key: str) -> Path:
    split, city, stem = key.split("/")
    return output / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"


def label_path(output: Path, key: str) -> Path:
    split, city, stem = key.split("/")
    return output / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png"
