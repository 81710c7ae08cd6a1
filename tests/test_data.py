"""Data layer: loaders on small trees in the real layouts, splits, synthetic set, augmentation,
CutMix masks and every kind of bad input."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mgd_ray.config import DataConfig
from mgd_ray.data import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_CLASSES,
    DatasetError,
    Sample,
    SegmentationDataset,
    augment,
    build_datasets,
    cityscapes_label_to_train_id,
    cutmix_boxes,
    cutmix_mask,
    ensure_synthetic,
    generate_split,
    generate_synthetic,
    labeled_count,
    to_tensor,
)
from mgd_ray.data.build import HOLDOUT_IMAGES, holdout_samples
from mgd_ray.data.io import read_label
from mgd_ray.data.splits import write_split
from mgd_ray.data.synthetic import CLASS_HUES, HUE_JITTER
from mgd_ray.data.transforms import PAD_COLOUR
from tests.data_trees import (
    cityscapes_raw_label,
    write_cityscapes_tree,
    write_jpeg,
    write_png_label,
    write_voc_tree,
)

VOC_TRAIN = [f"2007_{i:06d}" for i in range(17)]
VOC_VAL = [f"2008_{i:06d}" for i in range(3)]


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    """Keep generated splits and validation markers out of the user's cache."""
    monkeypatch.setenv("MGD_RAY_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    labels = write_voc_tree(root, VOC_TRAIN, VOC_VAL)
    return root, labels


def voc_cfg(root, tmp_path, **kw):
    # A small tree: a seeded split, not the paper's lists (which name all 10,582 images).
    kw.setdefault("paper_split", False)
    return DataConfig(
        dataset="voc", root=str(root), split_out_dir=str(tmp_path / "results" / "splits"), **kw
    )


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize(
    "n, expected", [(10582, [662, 1323, 2646, 5291]), (2975, [186, 372, 744, 1488])]
)
def test_labeled_counts_of_the_paper_protocols(n, expected):
    assert [labeled_count(n, p) for p in ("1/16", "1/8", "1/4", "1/2")] == expected
    assert labeled_count(n, "full") == n


def test_generated_split_is_disjoint_complete_and_seeded():
    ids = [f"img{i}" for i in range(10582)]
    labeled, unlabeled = generate_split(ids, "1/8", seed=3)
    assert len(labeled) == 1323 and len(unlabeled) == 10582 - 1323
    assert not set(labeled) & set(unlabeled) and set(labeled) | set(unlabeled) == set(ids)
    assert generate_split(ids, "1/8", seed=3) == (labeled, unlabeled)
    assert generate_split(ids, "1/8", seed=4)[0] != labeled
    # Cityscapes-style pair rows split the same way.
    pairs = [
        f"leftImg8bit/train/c/{i}_leftImg8bit.png\tgtFine/train/c/{i}_gtFine_labelIds.png"
        for i in range(2975)
    ]
    assert len(generate_split(pairs, "1/16", seed=0)[0]) == 186


def test_existing_different_split_is_not_overwritten(tmp_path):
    write_split(tmp_path, ["a", "b"], ["c"])
    write_split(tmp_path, ["a", "b"], ["c"])  # same content: fine (racing workers)
    with pytest.raises(DatasetError, match="labeled.txt exists with different content"):
        write_split(tmp_path, ["a"], ["b", "c"])
    assert (tmp_path / "labeled.txt").read_text() == "a\nb\n"


def test_unknown_protocol_is_rejected():
    with pytest.raises(DatasetError, match=r"protocol '1/3': expected one of 1/16, 1/8"):
        labeled_count(100, "1/3")
    with pytest.raises(ValueError, match="protocol '1/3'"):
        DataConfig(protocol="1/3")


# ---------------------------------------------------------------- VOC


def test_voc_loads_with_generated_split(voc_root, tmp_path):
    root, labels = voc_root
    data = build_datasets(voc_cfg(root, tmp_path, protocol="1/4", crop_size=32))
    assert data.num_classes == NUM_CLASSES["voc"] == 21
    assert len(data.labeled_ids) == math.ceil(17 / 4) and len(data.unlabeled_ids) == 17 - 5
    assert not set(data.labeled_ids) & set(data.unlabeled_ids)
    assert set(data.labeled_ids) | set(data.unlabeled_ids) == set(VOC_TRAIN)
    split = Path(data.split_dir)
    assert split == tmp_path / "results" / "splits" / "1_4-seed0"
    assert (split / "labeled.txt").read_text().split() == data.labeled_ids
    image, label = data.labeled[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.shape == (32, 32) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(21)) | {IGNORE_INDEX}
    assert data.unlabeled[0].shape == (3, 32, 32)
    image, label, image_id = data.val[1]
    assert image_id == VOC_VAL[1] and np.array_equal(label.numpy(), labels[image_id])
    assert image.shape[1:] == label.shape
    # Same config again: the same split is read back, not a new one.
    assert (
        build_datasets(voc_cfg(root, tmp_path, protocol="1/4", crop_size=32)).labeled_ids
        == data.labeled_ids
    )


def test_holdout_is_a_seeded_part_of_the_unlabeled_split_with_its_labels(voc_root, tmp_path):
    root, labels = voc_root
    cfg = voc_cfg(root, tmp_path, protocol="1/4", crop_size=32)
    data = build_datasets(cfg)
    held = [data.holdout[i][2] for i in range(len(data.holdout))]
    # 12 unlabeled images, fewer than HOLDOUT_IMAGES["voc"]: every one is held out, in list order
    assert held == data.unlabeled_ids and not set(held) & set(data.labeled_ids)
    image, label, image_id = data.holdout[0]
    assert np.array_equal(label.numpy(), labels[image_id]) and image.shape[1:] == label.shape
    assert len(data.unlabeled) == 12  # the held-out images stay in the unlabeled stream

    samples = [Sample(f"u{i}", f"/none/u{i}.jpg", str(tmp_path / f"u{i}.png")) for i in range(200)]
    for sample in samples[:150]:  # the last 50 have no label file: never held out
        Path(sample.label).write_bytes(b"")
    pick = {seed: holdout_samples(samples, DataConfig(seed=seed)) for seed in (0, 1)}
    assert len(pick[0]) == HOLDOUT_IMAGES["synthetic"] == 64
    assert {s.id for s in pick[0]} <= {f"u{i}" for i in range(150)}
    assert pick[0] == holdout_samples(samples, DataConfig(seed=0))  # seeded
    assert pick[0] != pick[1]
    full = build_datasets(voc_cfg(root, tmp_path, protocol="full", crop_size=32))
    assert len(full.holdout) == 0  # every image is labeled: nothing to hold out


def test_voc_palette_labels_in_segmentation_class_are_read_as_indices(tmp_path):
    root = tmp_path / "VOC"
    labels = write_voc_tree(
        root,
        VOC_TRAIN[:4],
        VOC_VAL[:2],
        label_folder="SegmentationClass",
        palette=True,
        train_list="train.txt",
    )
    data = build_datasets(voc_cfg(root, tmp_path, protocol="1/2"))
    assert len(data.labeled_ids) == 2
    _, label, image_id = data.val[0]
    assert np.array_equal(label.numpy(), labels[image_id])


def test_voc_user_split_lists(voc_root, tmp_path):
    root, _ = voc_root
    split = tmp_path / "splits" / "pascal" / "1_8"
    split.mkdir(parents=True)
    (split / "labeled.txt").write_text(f"{VOC_TRAIN[0]}\n{VOC_TRAIN[1]}\n")
    # UniMatch-style pair lines are accepted too.
    (split / "unlabeled.txt").write_text(
        "".join(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in VOC_TRAIN[2:])
    )
    data = build_datasets(DataConfig(dataset="voc", root=str(root), split_dir=str(split.parent)))
    assert data.labeled_ids == VOC_TRAIN[:2] and data.unlabeled_ids == VOC_TRAIN[2:]
    assert data.split_dir == str(split)
    (split / "unlabeled.txt").write_text(f"{VOC_TRAIN[1]}\n{VOC_TRAIN[5]}\n")
    with pytest.raises(DatasetError, match=r"share 1 entries \(e.g. '2007_000001'\)"):
        build_datasets(DataConfig(dataset="voc", root=str(root), split_dir=str(split)))


def test_full_protocol_labels_everything_and_distils_on_all_images(voc_root, tmp_path):
    root, _ = voc_root
    data = build_datasets(voc_cfg(root, tmp_path, protocol="full"))
    assert sorted(data.labeled_ids) == sorted(VOC_TRAIN) and sorted(data.unlabeled_ids) == sorted(
        VOC_TRAIN
    )
    assert (Path(data.split_dir) / "unlabeled.txt").read_text() == ""


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_official_mapping_subset():
    raw = np.array([[7, 8, 11, 26], [33, 0, 1, 9], [23, 24, 31, 34]], dtype=np.uint8)
    expected = np.array([[0, 1, 2, 13], [18, 255, 255, 255], [10, 11, 16, 255]], dtype=np.uint8)
    assert np.array_equal(cityscapes_label_to_train_id(raw), expected)
    assert cityscapes_label_to_train_id(np.array([-1, 7], dtype=np.int32)).tolist() == [255, 0]


def test_cityscapes_maps_raw_label_ids(tmp_path):
    root = tmp_path / "cityscapes"
    raw = write_cityscapes_tree(
        root, {"train": {"aachen": 5, "bremen": 4}, "val": {"frankfurt": 2}}
    )
    data = build_datasets(
        DataConfig(
            dataset="cityscapes",
            root=str(root),
            protocol="1/4",
            paper_split=False,
            split_out_dir=str(tmp_path / "out"),
            crop_size=24,
        )
    )
    assert data.num_classes == 19 and len(data.labeled_ids) == 3 and len(data.unlabeled_ids) == 6
    lines = (Path(data.split_dir) / "labeled.txt").read_text().splitlines()
    image_rel, label_rel = lines[0].split("\t")
    assert image_rel.startswith("leftImg8bit/train/") and label_rel.endswith(
        "_gtFine_labelIds.png"
    )
    _, label, image_id = data.val[0]
    lookup = {7: 0, 26: 13, 23: 10, 1: 255, 9: 255, 33: 18}  # hand-copied from labels.py
    expected = np.vectorize(lookup.get)(raw[image_id])
    assert image_id == "frankfurt/frankfurt_000000_000019" and np.array_equal(
        label.numpy(), expected
    )
    _, crop = data.labeled[0]
    assert crop.shape == (24, 24) and set(crop.unique().tolist()) <= {0, 13, 10, 18, 255}


def test_cityscapes_prefers_label_train_ids_and_reads_cps_lists(tmp_path):
    root = tmp_path / "cityscapes"
    write_cityscapes_tree(root, {"train": {"aachen": 4}, "val": {"lindau": 1}}, train_ids=True)
    split = tmp_path / "cps"
    split.mkdir()
    pair = (
        "train/aachen/aachen_{:06d}_000019_leftImg8bit.png\t"
        "train/aachen/aachen_{:06d}_000019_gtFine_labelTrainIds.png\n"
    )
    (split / "labeled.txt").write_text(pair.format(0, 0))
    (split / "unlabeled.txt").write_text("".join(pair.format(i, i) for i in (1, 2, 3)))
    data = build_datasets(
        DataConfig(dataset="cityscapes", root=str(root), split_dir=str(split), crop_size=16)
    )
    assert data.labeled_ids == ["aachen/aachen_000000_000019"] and len(data.unlabeled_ids) == 3
    _, label, _ = data.val[0]
    assert label.unique().tolist() == [5]  # the labelTrainIds file, not the mapped raw ids


# ---------------------------------------------------------------- synthetic set


def test_synthetic_set_is_deterministic_and_in_voc_layout(tmp_path):
    a, b = generate_synthetic(tmp_path / "a", seed=0), generate_synthetic(tmp_path / "b", seed=0)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    train = (a / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert (
        len(train) == 320 and len((a / "ImageSets/Segmentation/val.txt").read_text().split()) == 64
    )
    assert (a / "JPEGImages" / f"{train[0]}.jpg").read_bytes()[
        :3
    ] == b"\xff\xd8\xff"  # a real JPEG
    labels = np.stack([read_label(a / "SegmentationClassAug" / f"{i}.png") for i in train[:40]])
    values = set(np.unique(labels).tolist())
    assert values == set(range(6)) | {IGNORE_INDEX}
    assert 0.005 < (labels == IGNORE_INDEX).mean() < 0.2 and (labels == 0).mean() < 0.95
    assert (
        0.35 < (labels == 0).mean() < 0.65
    )  # objects are large: background is about half the pixels
    # Every object class keeps its hue family; a distractor (background) wears one too, so
    # saturated pixels labelled background exist and colour alone cannot give the class.
    images = np.stack(
        [
            cv2.cvtColor(cv2.imread(str(a / "JPEGImages" / f"{i}.jpg")), cv2.COLOR_BGR2HSV)
            for i in train[:40]
        ]
    )
    saturated = images[..., 1] > 120
    for cls, hue in CLASS_HUES.items():
        hues = images[..., 0][(labels == cls) & saturated].astype(float)
        distance = np.abs((hues - hue + 90) % 180 - 90)  # hue is circular (0..180)
        assert np.median(distance) < HUE_JITTER + 3, cls
    assert ((labels == 0) & saturated).mean() > 0.02  # distractors
    other = generate_synthetic(tmp_path / "c", seed=1)
    assert (other / "JPEGImages" / f"{train[0]}.jpg").read_bytes() != (
        a / "JPEGImages" / f"{train[0]}.jpg"
    ).read_bytes()


def test_default_config_builds_the_cached_synthetic_set(data_cache, tmp_path):
    data = build_datasets(DataConfig(split_out_dir=str(tmp_path / "splits")))
    assert (data_cache / "synthetic-v3-seed0" / "meta.json").is_file()
    assert data.num_classes == 6 and len(data.labeled_ids) == 40 and len(data.unlabeled_ids) == 280
    assert len(data.val) == 64 and data.val[0][0].shape == (3, 80, 80)
    assert ensure_synthetic(0) == data_cache / "synthetic-v3-seed0"


def test_synthetic_creation_race_keeps_the_first_complete_copy(tmp_path, monkeypatch):
    from mgd_ray.data import synthetic

    final = tmp_path / "shared" / "synthetic"
    real = synthetic.generate_synthetic

    def other_worker_finishes_first(out_dir, seed=0):
        real(final, seed)
        return real(out_dir, seed)

    monkeypatch.setattr(synthetic, "generate_synthetic", other_worker_finishes_first)
    assert ensure_synthetic(0, final) == final
    assert list(final.parent.iterdir()) == [final]  # the loser's staging folder is gone
    assert len(list((final / "JPEGImages").iterdir())) == 320 + 64


# ---------------------------------------------------------------- augmentation

COLOURS = {0: (200, 10, 10), 3: (10, 200, 10), IGNORE_INDEX: (10, 10, 200)}


def test_augmentation_keeps_labels_aligned_in_range_and_ignore_at_255():
    # Big blocks whose colour names the class: wherever an augmented pixel has exactly a class
    # colour, its label must be that class; padding is the mean colour (0 once normalised) with
    # label 255, centred as the official pad_image_to_shape.
    label = np.zeros((48, 60), np.uint8)
    label[:, 20:40] = 3
    label[24:, 40:] = IGNORE_INDEX
    image = np.zeros((48, 60, 3), np.uint8)
    for cls, colour in COLOURS.items():
        image[label == cls] = colour
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        crop_image, crop_label = augment(image, label, 56, generator)
        assert crop_image.shape == (56, 56, 3) and crop_label.shape == (56, 56)
        assert set(np.unique(crop_label).tolist()) <= {0, 3, IGNORE_INDEX}
        for cls, colour in COLOURS.items():
            exact = (crop_image == colour).all(axis=2)
            assert (crop_label[exact] == cls).all()
        padded = (crop_image == PAD_COLOUR).all(axis=2)
        assert (crop_label[padded] == IGNORE_INDEX).all()
        if (
            padded.any()
        ):  # centred: the padding on both sides of an axis differs by at most one pixel
            rows, cols = ~padded.all(axis=1), ~padded.all(axis=0)
            for kept in (rows, cols):
                before, after = int(np.argmax(kept)), int(np.argmax(kept[::-1]))
                assert abs(before - after) <= 1
    assert np.array_equal(
        (to_tensor(np.full((1, 1, 3), PAD_COLOUR, np.uint8)).abs() < 0.01).numpy().ravel(),
        [True] * 3,
    )


def test_augment_is_reproducible_from_a_generator():
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    first = augment(image, None, 32, torch.Generator().manual_seed(7))[0]
    assert np.array_equal(first, augment(image, None, 32, torch.Generator().manual_seed(7))[0])


def test_to_tensor_normalises_with_imagenet_statistics():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 128
    tensor = to_tensor(image)
    expected = [
        (255 - 0.485 * 255) / (0.229 * 255),
        (0 - 0.456 * 255) / (0.224 * 255),
        (128 - 0.406 * 255) / (0.225 * 255),
    ]
    assert tensor.shape == (3, 2, 3)
    assert torch.allclose(tensor[:, 0, 0], torch.tensor(expected), atol=1e-5)
    assert np.allclose(IMAGENET_MEAN / 255, [0.485, 0.456, 0.406]) and np.allclose(
        IMAGENET_STD / 255, [0.229, 0.224, 0.225]
    )


def test_loader_workers_draw_different_crops(tmp_path):
    path = tmp_path / "x.jpg"
    write_jpeg(path, np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    dataset = SegmentationDataset([Sample("x", str(path), None)] * 2, "unlabeled", 32)
    torch.manual_seed(0)
    first, second = list(DataLoader(dataset, batch_size=1, num_workers=2))
    assert not torch.equal(first, second)


# ---------------------------------------------------------------- CutMix


def test_cutmix_boxes_follow_the_official_generator():
    """mask_gen.BoxMaskGenerator with the configs' settings: 3 boxes, each p/3 of the image with
    p ~ U(0.25, 0.5) and a random aspect ratio, inside the image."""
    boxes = cutmix_boxes(500, 64, 80, torch.Generator().manual_seed(0))
    assert boxes.shape == (500, 3, 4)
    top, left, bottom, right = boxes.unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (bottom <= 64).all() and (right <= 80).all()
    assert (bottom > top).all() and (right > left).all()
    area = ((bottom - top) * (right - left)).double() / (64 * 80)
    # Each side is rounded to whole pixels: allow one pixel of slack on each side.
    slack = (64 + 80 + 1) / (64 * 80)
    assert area.min() > 0.25 / 3 - slack and area.max() < 0.5 / 3 + slack
    assert area.mean().item() == pytest.approx(0.375 / 3, abs=0.005)
    aspect = ((bottom - top).double() / 64) / ((right - left).double() / 80)
    assert aspect.min() < 0.5 and aspect.max() > 2  # random aspect ratios, tall and wide


def test_cutmix_mask_is_the_xor_of_its_boxes_and_deterministic():
    mask = cutmix_mask(6, 32, 48, torch.Generator().manual_seed(1))
    assert mask.shape == (6, 32, 48) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(mask, cutmix_mask(6, 32, 48, torch.Generator().manual_seed(1)))
    boxes = cutmix_boxes(6, 32, 48, torch.Generator().manual_seed(1))
    for index in range(6):
        count = np.zeros((32, 48), int)
        for top, left, bottom, right in boxes[index].tolist():
            count[top:bottom, left:right] += 1
        assert np.array_equal(
            mask[index].numpy(), (count % 2).astype(np.float32)
        )  # overlaps flip back


def test_cutmix_mean_mixed_area_is_a_quarter_at_512():
    generator = torch.Generator().manual_seed(0)
    areas = torch.cat([cutmix_mask(250, 512, 512, generator).mean(dim=(1, 2)) for _ in range(8)])
    assert areas.numel() == 2000
    assert areas.mean().item() == pytest.approx(0.25, abs=0.02)


# ---------------------------------------------------------------- bad input


def test_missing_root_is_named(tmp_path):
    with pytest.raises(
        DatasetError, match=r"data root .*nowhere \(dataset 'voc'\): folder not found"
    ):
        build_datasets(DataConfig(dataset="voc", root=str(tmp_path / "nowhere")))


def test_missing_image_named_by_the_list(voc_root, tmp_path):
    root, _ = voc_root
    (root / "JPEGImages" / f"{VOC_TRAIN[3]}.jpg").unlink()
    with pytest.raises(
        DatasetError,
        match=rf"image .*{VOC_TRAIN[3]}\.jpg: file not found \(named by the split list",
    ):
        build_datasets(voc_cfg(root, tmp_path))


def test_unreadable_image(voc_root, tmp_path):
    root, _ = voc_root
    (root / "JPEGImages" / f"{VOC_VAL[0]}.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(
        DatasetError, match=rf"image .*{VOC_VAL[0]}\.jpg: unreadable, expected a JPEG or PNG"
    ):
        build_datasets(voc_cfg(root, tmp_path))


def test_label_values_out_of_range(voc_root, tmp_path):
    root, labels = voc_root
    bad = labels[VOC_VAL[1]].copy()
    bad[0, 0] = 21
    write_png_label(root / "SegmentationClassAug" / f"{VOC_VAL[1]}.png", bad)
    with pytest.raises(
        DatasetError,
        match=rf"label .*{VOC_VAL[1]}\.png: values \[21\] out of range, "
        r"expected class ids 0..20 or 255",
    ):
        build_datasets(voc_cfg(root, tmp_path))


def test_image_label_size_mismatch(voc_root, tmp_path):
    root, labels = voc_root
    write_png_label(root / "SegmentationClassAug" / f"{VOC_VAL[0]}.png", labels[VOC_VAL[0]][:-2])
    with pytest.raises(
        DatasetError, match=rf"label .*{VOC_VAL[0]}\.png: size .* expected the size of image"
    ):
        build_datasets(voc_cfg(root, tmp_path))


def test_cityscapes_raw_ids_out_of_table(tmp_path):
    root = tmp_path / "cityscapes"
    write_cityscapes_tree(root, {"train": {"aachen": 2}, "val": {"lindau": 1}})
    path = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    write_png_label(path, np.full((32, 64), 40, np.uint8))
    with pytest.raises(
        DatasetError,
        match=r"lindau_000000_000019_gtFine_labelIds.png: values \[40\] .*labelIds 0..33",
    ):
        build_datasets(
            DataConfig(
                dataset="cityscapes",
                root=str(root),
                split_out_dir=str(tmp_path / "s"),
                paper_split=False,
            )
        )


def test_validation_marker_is_invalidated_by_a_changed_file(voc_root, tmp_path):
    root, labels = voc_root
    cfg = voc_cfg(root, tmp_path)
    build_datasets(cfg)
    bad = np.full_like(labels[VOC_VAL[2]], 99)
    write_png_label(root / "SegmentationClassAug" / f"{VOC_VAL[2]}.png", bad)
    with pytest.raises(DatasetError, match="values \\[99\\]"):
        build_datasets(cfg)


def test_cityscapes_raw_label_helper_uses_only_table_ids():
    raw = cityscapes_raw_label(np.random.default_rng(0), 16, 16)
    assert set(np.unique(raw).tolist()) <= {7, 26, 23, 1, 9, 33}
