"""The built-in synthetic dataset: procedural scenes written once in the VOC layout and cached.

Six classes: 0 = background and five objects, each defined by a shape, a texture AND a hue family
(disc + stripes + red, square + checker + yellow, triangle + dots + green, cross + grid + cyan,
ring + speckle + purple). Colour alone does not give the class: in half of the scenes a
"distractor" wears one class's hue with another class's shape and texture, and it is background.
So a network that reads the hue gets most pixels right after a few hundred iterations from scratch,
and only one that has learned the conjunction of hue, shape and texture gets the distractors right:
that part needs examples (a labeled set of 40 images holds about 20 distractors) and capacity,
which is what the teachers (trained longer, with the unlabeled images through CPS) have over a
student trained briefly on the labeled images alone. Also:
- objects are large (background is roughly half of the pixels); the five textures are coarse
  enough (period >= 7 px) to survive the 0.5x scale augmentation;
- the background is a smooth grey field with its own faint, low-contrast texture;
- objects are cut by the image border and occlude each other;
- as in VOC, a thin (1 px) band of 255 (ignore) runs along object boundaries.

Every image is drawn from its own generator seeded by (seed, split, index), so the set is
byte-identical for a seed. It is written to a temporary folder renamed into place, so Ray workers
racing to create it each see either nothing or the complete set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..schema import IGNORE_INDEX
from .io import cache_root, write_label
from .voc import LIST_DIR

VERSION = "synthetic-v3"
CLASS_NAMES = (
    "background",
    "striped_disc",
    "checkered_square",
    "dotted_triangle",
    "grid_cross",
    "speckled_ring",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 80
SPLITS = {"train": 320, "val": 64}
JPEG_QUALITY = 95
_SPLIT_CODES = {"train": 1, "val": 2}
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
OBJECTS_PER_SCENE = (2, 4)  # inclusive range of true objects
OBJECT_RADIUS = (16.0, 23.0)  # pixels, at IMAGE_SIZE 80
DISTRACTOR_PROBABILITY = 0.5  # one object of a class's hue in another's shape and texture
# Each class's hue (OpenCV's 0..180 scale), 36 apart, each object's drawn within +-HUE_JITTER.
CLASS_HUES = {1: 0.0, 2: 36.0, 3: 72.0, 4: 108.0, 5: 144.0}
HUE_JITTER = 10.0


def _rotated(points: np.ndarray, angle: float, center: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rotated = points @ np.array([[c, s], [-s, c]], dtype=np.float64)
    return np.round(rotated + np.asarray(center)).astype(np.int32)


def _shape_mask(
    shape: int, center: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    """uint8 H x W, 1 inside shape `shape` (1..5) centred at (x, y) with the given size and
    rotation."""
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    cx, cy = int(round(center[0])), int(round(center[1]))
    r = radius
    if shape == 1:
        cv2.circle(mask, (cx, cy), int(round(r)), 1, -1)
    elif shape == 2:
        square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.85 * r
        cv2.fillPoly(mask, [_rotated(square, angle, center)], 1)
    elif shape == 3:
        angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [_rotated(corners * 1.3 * r, angle, center)], 1)
    elif shape == 4:
        bar = np.array([[-1, -0.36], [1, -0.36], [1, 0.36], [-1, 0.36]], dtype=np.float64) * r
        cv2.fillPoly(mask, [_rotated(bar, angle, center)], 1)
        cv2.fillPoly(mask, [_rotated(bar[:, ::-1].copy(), angle, center)], 1)
    else:
        cv2.circle(mask, (cx, cy), int(round(r)), 1, -1)
        cv2.circle(mask, (cx, cy), int(round(0.45 * r)), 0, -1)
    return mask


def _texture(kind: int, rng: np.random.Generator) -> np.ndarray:
    """float32 H x W in [0, 1]: pattern `kind` (1..5) with random period, orientation and phase.

    1 stripes, 2 checkerboard, 3 dots on a plain ground, 4 thin grid lines, 5 fine random speckle:
    periods of 7-11 px keep each pattern recognisable at every training scale (0.5x-2x)."""
    period = rng.uniform(7.0, 11.0)
    angle = rng.uniform(0, np.pi)
    u = _XX * np.cos(angle) + _YY * np.sin(angle) + rng.uniform(0, period)
    v = -_XX * np.sin(angle) + _YY * np.cos(angle) + rng.uniform(0, period)
    if kind == 1:
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    if kind == 2:
        cell = period * 0.6
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    if kind == 3:
        du, dv = u % period - period / 2, v % period - period / 2
        return (du * du + dv * dv < (period / 3.2) ** 2).astype(np.float32)
    if kind == 4:
        return ((u % period < 2.0) | (v % period < 2.0)).astype(np.float32)
    noise = rng.random((IMAGE_SIZE // 2, IMAGE_SIZE // 2)).astype(np.float32)
    return (
        cv2.resize(noise, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_NEAREST) > 0.5
    ).astype(np.float32)


def _colour_pair(rng: np.random.Generator, hue_of: int) -> tuple[np.ndarray, np.ndarray]:
    """The two RGB colours of an object's texture phases: both of class `hue_of`'s hue family,
    one bright and one dark (high contrast), saturation drawn per colour, in random order."""
    hue = (CLASS_HUES[hue_of] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 180
    hsv = np.array(
        [
            [[hue, rng.uniform(150, 255), rng.uniform(170, 255)]],
            [[hue, rng.uniform(150, 255), rng.uniform(40, 110)]],
        ],
        dtype=np.float32,
    )
    bright, dark = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[:, 0].astype(np.float32)
    return (bright, dark) if rng.random() < 0.5 else (dark, bright)


def _paint(
    canvas: np.ndarray, mask: np.ndarray, texture: np.ndarray, a: np.ndarray, b: np.ndarray
) -> None:
    inside = mask.astype(bool)
    canvas[inside] = a + (b - a) * texture[inside].astype(np.float32)[:, None]


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth random grey field with its own faint texture: blurred blobs of +-8..14 levels
    (grey, so that hue belongs to the objects)."""
    grid = rng.uniform(30, 225, (3, 3, 1)).astype(np.float32).repeat(3, axis=2)
    canvas = cv2.resize(grid, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
    blobs = rng.random((IMAGE_SIZE // 4, IMAGE_SIZE // 4)).astype(np.float32)
    blobs = cv2.GaussianBlur(
        cv2.resize(blobs, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR), (5, 5), 0
    )
    blobs = (blobs - blobs.mean()) / max(float(blobs.std()), 1e-6)
    return canvas + rng.uniform(8, 14) * blobs[..., None]


def render_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: RGB uint8 H x W x 3 and its label uint8 H x W (0..5, 255 on boundaries)."""
    canvas = _background(rng)
    label = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    count = int(rng.integers(OBJECTS_PER_SCENE[0], OBJECTS_PER_SCENE[1] + 1))
    # (shape, texture, hue, class); a distractor: one class's hue, another's shape and texture
    objects = [(k, k, k, k) for k in rng.integers(1, NUM_CLASSES, count)]
    if rng.random() < DISTRACTOR_PROBABILITY:
        hue = int(rng.integers(1, NUM_CLASSES))
        other = int((hue - 1 + rng.integers(1, NUM_CLASSES - 1)) % (NUM_CLASSES - 1) + 1)
        objects.append((other, other, hue, 0))
    margin = 0.1 * IMAGE_SIZE
    for index in rng.permutation(len(objects)):
        shape, texture, hue, cls = objects[index]
        center = (
            rng.uniform(margin, IMAGE_SIZE - margin),
            rng.uniform(margin, IMAGE_SIZE - margin),
        )
        mask = _shape_mask(
            int(shape), center, rng.uniform(*OBJECT_RADIUS), rng.uniform(0, 2 * np.pi)
        )
        _paint(canvas, mask, _texture(int(texture), rng), *_colour_pair(rng, int(hue)))
        label[mask.astype(bool)] = cls

    # Ignore band, 1 px wide as VOC's outlines: pixels whose right or lower neighbour has another
    # class.
    boundary = np.zeros(label.shape, dtype=bool)
    boundary[:, :-1] |= label[:, :-1] != label[:, 1:]
    boundary[:-1, :] |= label[:-1, :] != label[1:, :]
    label[boundary] = IGNORE_INDEX
    canvas = canvas * rng.uniform(0.9, 1.1) + rng.uniform(-15, 15) + rng.normal(0, 3, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8), label


def generate_synthetic(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the synthetic set (VOC layout, real JPEGs, grayscale index PNGs) into `out_dir`."""
    out_dir = Path(out_dir)
    for folder in ("JPEGImages", "SegmentationClassAug", LIST_DIR):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    lists = {}
    for split, count in SPLITS.items():
        ids = [f"{split}_{index:04d}" for index in range(count)]
        for index, image_id in enumerate(ids):
            image, label = render_scene(np.random.default_rng([seed, _SPLIT_CODES[split], index]))
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise OSError(f"could not encode synthetic image {image_id}")
            (out_dir / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg.tobytes())
            write_label(out_dir / "SegmentationClassAug" / f"{image_id}.png", label)
        lists["train_aug" if split == "train" else split] = ids
    for name, ids in lists.items():
        (out_dir / LIST_DIR / f"{name}.txt").write_text(
            "".join(i + "\n" for i in ids), encoding="utf-8"
        )
    meta = {
        "version": VERSION,
        "seed": seed,
        "classes": list(CLASS_NAMES),
        "image_size": IMAGE_SIZE,
        "splits": SPLITS,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out_dir


def synthetic_root(seed: int = 0) -> Path:
    """The cache folder of the synthetic set for a seed: $MGD_RAY_DATA/synthetic-v2-seed<seed>."""
    return cache_root() / f"{VERSION}-seed{seed}"


def ensure_synthetic(seed: int = 0, root: str | Path | None = None) -> Path:
    """The synthetic set's root, generating it first when absent (safe when processes race)."""
    final = Path(root) if root is not None else synthetic_root(seed)
    if (final / "meta.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        generate_synthetic(staging, seed)
        os.rename(staging, final)
    except OSError:
        # Another process renamed its copy into place first; theirs is identical.
        if not (final / "meta.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
