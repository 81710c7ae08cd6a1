"""`mgd-ray prepare voc`: PASCAL VOC 2012 plus SBD's extra labels into the layout the loader reads
(mgd_ray/data/voc.py): JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png (class indices 0..20,
255 = ignore), ImageSets/Segmentation/{train_aug,val}.txt.

Sources, in any order: VOCtrainval_11-May-2012.tar or its folder (required: the images, the 2,913
official labels, the train / val lists), and for the augmented training set SBD (benchmark.tgz or
its folder: dataset/cls/<id>.mat and dataset/{train,val}.txt) and/or a SegmentationClassAug folder
or zip. train_aug is VOC train, SBD train and SBD val (or every id of the Aug folder) less VOC val:
10,582 images on the real archives, as in DeepLab, CPS, UniMatch and the official MGD code. An id
with a VOC label keeps it (255 on object borders, as VOC evaluates); the others take SBD's, then
the Aug folder's. Without SBD or an Aug folder the training list is VOC's train.txt (1,464)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import scipy.io

from ..schema import IGNORE_INDEX
from .sources import PrepareError, Source, decode_index_png, encode_png, write_once

NUM_CLASSES = 21
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
IMAGE = re.compile(r"(?:^|/)JPEGImages/([^/]+)\.jpg$")
VOC_LABEL = re.compile(r"(?:^|/)SegmentationClass/([^/]+)\.png$")
VOC_LIST = re.compile(r"(?:^|/)ImageSets/Segmentation/(train|val)\.txt$")
SBD_LABEL = re.compile(r"(?:^|/)cls/([^/]+)\.mat$")
SBD_LIST = re.compile(r"(?:^|/)dataset/(train|val)\.txt$")
AUG_LABEL = re.compile(r"(?:^|/)SegmentationClassAug/([^/]+)\.png$")
KINDS = {  # what identifies a source, and what it gives
    "voc": (VOC_LABEL, "VOCdevkit/VOC2012 (JPEGImages/, SegmentationClass/, ImageSets/)"),
    "sbd": (SBD_LABEL, "SBD's benchmark_RELEASE/dataset (cls/<id>.mat)"),
    "aug": (AUG_LABEL, "a SegmentationClassAug folder of <id>.png"),
}


def voc_colormap() -> np.ndarray:
    """VOC's palette, 256 x 3: the colour of each class index (VOCdevkit's VOClabelcolormap)."""
    cmap = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        cmap[index] = (r, g, b)
    return cmap


def to_indices(label: np.ndarray, name: str) -> np.ndarray:
    """A decoded label (decode_index_png) as class indices: an RGB image through VOC's palette;
    PrepareError naming `name` for a colour or value that is no class (0..20) and not 255."""
    if label.ndim == 3:
        cmap = voc_colormap()
        keys = {tuple(cmap[i]): i for i in (*range(NUM_CLASSES), IGNORE_INDEX)}
        colours, inverse = np.unique(label.reshape(-1, 3), axis=0, return_inverse=True)
        unknown = [tuple(int(v) for v in c) for c in colours if tuple(c) not in keys]
        if unknown:
            raise PrepareError(
                f"label {name}: colours {unknown[:4]} are not in VOC's palette, expected the "
                "colours of classes 0..20 or the border colour (224, 224, 192)"
            )
        lookup = np.array([keys[tuple(c)] for c in colours], dtype=np.uint8)
        label = lookup[inverse.reshape(-1)].reshape(label.shape[:2])
    bad = np.setdiff1d(np.unique(label), [*range(NUM_CLASSES), IGNORE_INDEX])
    if bad.size:
        raise PrepareError(
            f"label {name}: values {bad[:8].tolist()}, expected class ids 0..20 or 255 (ignore)"
        )
    return label


def sbd_label(data: bytes, name: str) -> np.ndarray:
    """SBD's dataset/cls/<id>.mat (MATLAB v5, struct GTcls with field Segmentation) as indices."""
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
        segmentation = np.asarray(mat["GTcls"].Segmentation)
    except (ValueError, KeyError, AttributeError, TypeError, OSError) as exc:
        raise PrepareError(
            f"label {name}: not SBD's format ({exc}), expected a .mat holding GTcls.Segmentation"
        ) from exc
    if segmentation.ndim != 2:
        raise PrepareError(f"label {name}: GTcls.Segmentation is {segmentation.shape}, not H x W")
    return to_indices(segmentation.astype(np.uint8), name)


def classify(source: Source) -> str:
    """ "voc", "sbd" or "aug": what `source` holds; PrepareError naming it otherwise."""
    for kind, (pattern, _) in KINDS.items():
        if any(pattern.search(name) for name in source.names):
            if kind == "voc" and not any(IMAGE.search(n) for n in source.names):
                raise PrepareError(f"source {source.path}: VOC labels but no JPEGImages/*.jpg")
            return kind
    wanted = "; ".join(text for _, text in KINDS.values())
    raise PrepareError(f"source {source.path}: none of the VOC sources, expected one of: {wanted}")


def _ids(source: Source, pattern: re.Pattern, which: str) -> list[str]:
    names = [n for n in source.names if (m := pattern.search(n)) and m.group(1) == which]
    if not names:
        return []
    lines = source.read(names[0]).decode().splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def plan(sources: dict[str, list[Source]]) -> tuple[list[str], list[str], str]:
    """(training ids, validation ids, the training list's file name) from the sources' lists."""
    if not sources.get("voc"):
        raise PrepareError(
            "prepare voc: no VOC source among the sources given, expected "
            "VOCtrainval_11-May-2012.tar or its VOCdevkit/VOC2012 folder"
        )
    voc = sources["voc"][0]
    val = _ids(voc, VOC_LIST, "val")
    train = _ids(voc, VOC_LIST, "train")
    if not val or not train:
        raise PrepareError(
            f"source {voc.path}: no ImageSets/Segmentation/train.txt and val.txt, expected VOC "
            "2012's segmentation lists"
        )
    extra = set(train)
    for source in sources.get("sbd", []):
        extra |= set(_ids(source, SBD_LIST, "train")) | set(_ids(source, SBD_LIST, "val"))
    for source in sources.get("aug", []):
        extra |= {m.group(1) for n in source.names if (m := AUG_LABEL.search(n))}
    if not sources.get("sbd") and not sources.get("aug"):
        return sorted(train), sorted(val), "train.txt"
    return sorted(extra - set(val)), sorted(val), "train_aug.txt"


def write_tree(sources: dict[str, list[Source]], output: Path, needed: set[str]) -> dict:
    """Copy the images and convert the labels of the `needed` ids into `output`; files already
    there are kept (a resumed run). Returns counts of written and kept files, and the ids whose
    label came from each kind of source."""
    counts = {"images written": 0, "images kept": 0, "labels written": 0, "labels kept": 0}
    labelled: set[str] = set()

    def put(kind: str, path: Path, make) -> None:
        counts[f"{kind} {'written' if write_once(path, make) else 'kept'}"] += 1

    voc = sources["voc"][0]

    def wanted_image(name: str) -> bool:
        m = IMAGE.search(name)
        return bool(m) and m.group(1) in needed

    for name, data in voc.members(wanted_image):
        put("images", image_path(output, IMAGE.search(name).group(1)), data)
    converters = [
        ("voc", VOC_LABEL, lambda data, name: to_indices(decode_index_png(data, name), name)),
        ("sbd", SBD_LABEL, sbd_label),
        ("aug", AUG_LABEL, lambda data, name: to_indices(decode_index_png(data, name), name)),
    ]
    for kind, pattern, convert in converters:
        for source in sources.get(kind, []):

            def wanted(name: str, pattern=pattern) -> bool:
                m = pattern.search(name)
                return bool(m) and m.group(1) in needed and m.group(1) not in labelled

            for name, data in source.members(wanted):
                sample_id = pattern.search(name).group(1)
                where = f"{source.path}:{name}"
                put(
                    "labels",
                    label_path(output, sample_id),
                    lambda data=data, where=where, convert=convert: encode_png(
                        convert(data, where), where
                    ),
                )
                labelled.add(sample_id)
    return counts


def image_path(output: Path, sample_id: str) -> Path:
    return output / "JPEGImages" / f"{sample_id}.jpg"


def label_path(output: Path, sample_id: str) -> Path:
    return output / "SegmentationClassAug" / f"{sample_id}.png"
