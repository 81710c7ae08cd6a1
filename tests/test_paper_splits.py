"""The paper's partition lists shipped in mgd_ray/splits/: their content (SOURCE.md's counts,
disjoint, covering the training list), their use by default, and the errors on a data root that
lacks their images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import mgd_ray.data.splits as splits
from mgd_ray.config import DataConfig
from mgd_ray.data import DatasetError, build_datasets
from mgd_ray.data.io import read_list
from tests.data_trees import cityscapes_raw_label, random_image, write_png_label, write_voc_tree

# SOURCE.md: labeled / unlabeled per protocol.
COUNTS = {
    "voc": {"1/16": (662, 9920), "1/8": (1323, 9259), "1/4": (2646, 7936), "1/2": (5291, 5291)},
    "cityscapes": {
        "1/16": (186, 2789),
        "1/8": (372, 2603),
        "1/4": (744, 2231),
        "1/2": (1488, 1487),
    },
}
TRAIN_SIZE = {"voc": 10582, "cityscapes": 2975}


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MGD_RAY_DATA", str(tmp_path / "cache"))


def rows(path: Path) -> list[str]:
    return ["\t".join(row) for row in read_list(path)]


@pytest.mark.parametrize("dataset", sorted(COUNTS))
def test_shipped_lists_match_source_counts_are_disjoint_and_cover_the_train_set(dataset):
    train = rows(splits.PAPER_SPLIT_DIR / dataset / "train.txt")
    assert len(train) == len(set(train)) == TRAIN_SIZE[dataset]
    for protocol, (n_labeled, n_unlabeled) in COUNTS[dataset].items():
        folder = splits.paper_split_dir(dataset, protocol)
        labeled, unlabeled = rows(folder / "labeled.txt"), rows(folder / "unlabeled.txt")
        assert (len(labeled), len(unlabeled)) == (n_labeled, n_unlabeled), protocol
        assert not set(labeled) & set(unlabeled), protocol
        assert set(labeled) | set(unlabeled) == set(train), protocol
    assert (splits.PAPER_SPLIT_DIR / "LICENSE").read_text().startswith("MIT License")
    assert "9309105" in (splits.PAPER_SPLIT_DIR / "SOURCE.md").read_text()


def test_shipped_cityscapes_rows_are_in_the_official_layout():
    for row in rows(splits.PAPER_SPLIT_DIR / "cityscapes" / "train.txt"):
        image, label = row.split("\t")
        city, name = image.split("/")[2:4]
        stem = name[: -len("_leftImg8bit.png")]
        assert image == f"leftImg8bit/train/{city}/{stem}_leftImg8bit.png" and stem.startswith(
            city + "_"
        )
        assert label == f"gtFine/train/{city}/{stem}_gtFine_labelIds.png"


def test_no_paper_lists_for_other_protocols_or_data():
    assert splits.paper_split_dir("voc", "full") is None
    assert splits.paper_split_dir("synthetic", "1/8") is None
    assert (
        splits.paper_split_dir("cityscapes", "1/4")
        == splits.PAPER_SPLIT_DIR / "cityscapes" / "1_4"
    )


def test_a_shipped_list_naming_missing_images_is_one_error_before_training(tmp_path):
    root = tmp_path / "VOC2012"
    write_voc_tree(root, ["2007_000032", "2007_000039"], ["2008_000001"])
    with pytest.raises(DatasetError) as error:
        build_datasets(DataConfig(dataset="voc", root=str(root), protocol="1/8"))
    message = str(error.value)
    labeled = splits.PAPER_SPLIT_DIR / "voc" / "1_8" / "labeled.txt"
    # 2007_000032 is in the 1/8 labeled list and on disk: 1,322 of 1,323 are missing.
    assert (
        f"split list {labeled}: 1322 of its 1323 images are missing from data root {root}"
        in message
    )
    assert "2007_000250" in message and "2007_000032 " not in message and "--split-dir" in message


def _write_cityscapes_images(root: Path, pairs: list[str]) -> None:
    rng = np.random.default_rng(0)
    for pair in pairs:
        image_rel, label_rel = pair.split("\t")
        image = root / image_rel
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), cv2.cvtColor(random_image(rng, 32, 64), cv2.COLOR_RGB2BGR))
        (root / label_rel).parent.mkdir(parents=True, exist_ok=True)
        write_png_label(root / label_rel, cityscapes_raw_label(rng, 32, 64))


def test_paper_lists_are_the_default_and_split_dir_still_wins(tmp_path, monkeypatch):
    """A shipped folder holding the first rows of the real Cityscapes 1/8 lists (the images are
    written for those rows): used without --split-dir; --split-dir still wins."""
    real = splits.PAPER_SPLIT_DIR / "cityscapes" / "1_8"
    labeled, unlabeled = rows(real / "labeled.txt")[:2], rows(real / "unlabeled.txt")[:4]
    shipped = tmp_path / "shipped"
    (shipped / "cityscapes" / "1_8").mkdir(parents=True)
    (shipped / "cityscapes" / "1_8" / "labeled.txt").write_text("".join(r + "\n" for r in labeled))
    (shipped / "cityscapes" / "1_8" / "unlabeled.txt").write_text(
        "".join(r + "\n" for r in unlabeled)
    )
    monkeypatch.setattr(splits, "PAPER_SPLIT_DIR", shipped)
    root = tmp_path / "cityscapes"
    val = [
        "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png\t"
        "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    ]
    _write_cityscapes_images(root, labeled + unlabeled + val)
    out = tmp_path / "results" / "splits"
    data = build_datasets(
        DataConfig(
            dataset="cityscapes",
            root=str(root),
            protocol="1/8",
            crop_size=16,
            split_out_dir=str(out),
        )
    )
    city = lambda pair: "/".join(pair.split("\t")[0].split("/")[2:4])[: -len("_leftImg8bit.png")]  # noqa: E731
    assert data.labeled_ids == [city(r) for r in labeled] and data.unlabeled_ids == [
        city(r) for r in unlabeled
    ]
    assert data.split_dir == str(shipped / "cityscapes" / "1_8") and not out.exists()
    # --split-dir wins over the shipped lists.
    user = tmp_path / "mine"
    user.mkdir()
    (user / "labeled.txt").write_text(unlabeled[0] + "\n")
    (user / "unlabeled.txt").write_text("".join(r + "\n" for r in labeled))
    data = build_datasets(
        DataConfig(
            dataset="cityscapes", root=str(root), protocol="1/8", split_dir=str(user), crop_size=16
        )
    )
    assert data.labeled_ids == [city(unlabeled[0])] and data.split_dir == str(user)


def test_failed_validation_writes_no_generated_split(tmp_path):
    """Issue 14 item 6: validate before writing OUTPUT_DIR/splits/."""
    root = tmp_path / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(8)]
    labels = write_voc_tree(root, ids, ["2008_000000"])
    write_png_label(
        root / "SegmentationClassAug" / "2008_000000.png", np.full_like(labels["2008_000000"], 77)
    )
    out = tmp_path / "results" / "splits"
    cfg = DataConfig(
        dataset="voc", root=str(root), protocol="1/4", paper_split=False, split_out_dir=str(out)
    )
    with pytest.raises(DatasetError, match=r"values \[77\]"):
        build_datasets(cfg)
    assert not out.exists()
    write_png_label(root / "SegmentationClassAug" / "2008_000000.png", labels["2008_000000"])
    data = build_datasets(cfg)
    assert (Path(data.split_dir) / "labeled.txt").read_text().count("\n") == 2 and Path(
        data.split_dir
    ).parent == out
