"""`mgd-ray prepare voc|cityscapes` on small archives built here in the real formats (a tar with
VOCdevkit's tree and palette PNGs, a tgz with SBD's .mat files, zips with Cityscapes' names): the
trees it writes hold what the test put in (images byte for byte, labels as the class ids written
here by hand), the study's loader accepts them, bad sources are refused naming them before
anything is written, and a killed or repeated run resumes without redoing finished files."""

import dataclasses
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

from mgd_ray.cli import cli
from mgd_ray.config import DataConfig
from mgd_ray.data import build_datasets
from mgd_ray.data.io import read_label
from mgd_ray.prepare import PrepareError, prepare, sources
from mgd_ray.prepare.voc import voc_colormap

H, W = 12, 16
VOC_TRAIN, VOC_VAL = ["2007_000032", "2007_000039"], ["2007_000033", "2007_000042"]
SBD_TRAIN, SBD_VAL = ["2008_000002", "2007_000032"], ["2008_000003", "2007_000033"]
# train_aug = VOC train + SBD train + SBD val - VOC val, written out by hand
TRAIN_AUG = ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]
IDS = VOC_TRAIN + VOC_VAL + ["2008_000002", "2008_000003", "2008_000004"]  # 2008_000004: no list


def jpeg(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def label_of(seed: int, border: bool) -> np.ndarray:
    label = np.random.default_rng(100 + seed).integers(0, 21, (H, W), dtype=np.uint8)
    if border:
        label[0] = 255  # VOC's object borders
    return label


def palette_png(label: np.ndarray) -> bytes:
    image = Image.fromarray(label, mode="P")
    image.putpalette(voc_colormap().ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sbd_mat(label: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    gt = {"Segmentation": label, "Boundaries": np.zeros(1), "CategoriesPresent": np.unique(label)}
    scipy.io.savemat(buffer, {"GTcls": gt})
    return buffer.getvalue()


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path
    with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def lines(ids):
    return ("\n".join(ids) + "\n").encode()


@pytest.fixture
def voc_sources(tmp_path):
    """(VOC tar, SBD tgz, the labels each holds): VOC labels the VOC lists' ids, SBD the SBD
    lists' (with other values for the ids VOC labels too)."""
    root = "VOCdevkit/VOC2012/"
    voc_labels = {i: label_of(n, border=True) for n, i in enumerate(VOC_TRAIN + VOC_VAL)}
    files = {f"{root}JPEGImages/{i}.jpg": jpeg(n) for n, i in enumerate(IDS)}
    files |= {
        f"{root}SegmentationClass/{i}.png": palette_png(lab) for i, lab in voc_labels.items()
    }
    files[f"{root}ImageSets/Segmentation/train.txt"] = lines(VOC_TRAIN)
    files[f"{root}ImageSets/Segmentation/val.txt"] = lines(VOC_VAL)
    voc_tar = write_archive(tmp_path / "voc-small.tar", files)
    sbd_labels = {i: label_of(50 + n, border=False) for n, i in enumerate(SBD_TRAIN + SBD_VAL)}
    sbd = {f"benchmark_RELEASE/dataset/cls/{i}.mat": sbd_mat(lab) for i, lab in sbd_labels.items()}
    sbd["benchmark_RELEASE/dataset/train.txt"] = lines(SBD_TRAIN)
    sbd["benchmark_RELEASE/dataset/val.txt"] = lines(SBD_VAL)
    sbd_tgz = write_archive(tmp_path / "sbd-small.tgz", sbd)
    return voc_tar, sbd_tgz, voc_labels, sbd_labels


def study_datasets(dataset, root, split_folder):
    """The datasets the study's own loader builds from a prepared `root` (1/2, a seeded split)."""
    cfg = DataConfig(dataset, str(root), "1/2", paper_split=False)
    return build_datasets(dataclasses.replace(cfg, split_out_dir=str(split_folder)))


def test_voc_and_sbd_become_the_train_aug_layout_the_study_reads(voc_sources, tmp_path):
    voc_tar, sbd_tgz, voc_labels, sbd_labels = voc_sources
    out = tmp_path / "voc"
    record = prepare("voc", [str(sbd_tgz), str(voc_tar)], out, echo=lambda _: None)

    lists = out / "ImageSets" / "Segmentation"
    assert (lists / "train_aug.txt").read_text().split() == TRAIN_AUG
    assert (lists / "val.txt").read_text().split() == sorted(VOC_VAL)
    for n, sample_id in enumerate(IDS[:6]):
        assert (out / "JPEGImages" / f"{sample_id}.jpg").read_bytes() == jpeg(n)
        # an id VOC labels keeps VOC's label (255 borders), the others take SBD's
        expected = voc_labels.get(sample_id, sbd_labels.get(sample_id))
        assert np.array_equal(
            read_label(out / "SegmentationClassAug" / f"{sample_id}.png"), expected
        )
    assert not (out / "JPEGImages" / "2008_000004.jpg").exists()  # in no list
    assert record["counts"]["labels written"] == 6 and record["missing"] == [[], []]
    expected_pixels = sum(np.bincount(lab.ravel(), minlength=256) for lab in voc_labels.values())
    expected_pixels += sum(
        np.bincount(sbd_labels[i].ravel(), minlength=256) for i in ("2008_000002", "2008_000003")
    )
    assert record["class_pixels"]["aeroplane"] == expected_pixels[1]
    assert record["class_pixels"]["ignore (255)"] == expected_pixels[255] == 4 * W

    data = study_datasets("voc", out, tmp_path / "split")
    assert sorted(data.labeled_ids + data.unlabeled_ids) == TRAIN_AUG and len(data.val) == 2


def test_voc_alone_gives_the_train_list(voc_sources, tmp_path):
    record = prepare("voc", [str(voc_sources[0])], tmp_path / "voc", echo=lambda _: None)
    lists = tmp_path / "voc" / "ImageSets" / "Segmentation"
    assert (lists / "train.txt").read_text().split() == sorted(VOC_TRAIN)
    assert not (lists / "train_aug.txt").exists() and record["counts"]["labels written"] == 4


def test_an_aug_folder_of_colour_pngs_is_converted_through_the_palette(voc_sources, tmp_path):
    label = label_of(7, border=True)
    aug = tmp_path / "aug" / "SegmentationClassAug"
    aug.mkdir(parents=True)
    Image.fromarray(voc_colormap()[label]).save(aug / "2008_000004.png")  # an RGB PNG
    prepare("voc", [str(voc_sources[0]), str(aug.parent)], tmp_path / "voc", echo=lambda _: None)
    out = tmp_path / "voc"
    assert "2008_000004" in (out / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert np.array_equal(read_label(out / "SegmentationClassAug/2008_000004.png"), label)


def test_a_wrong_checksum_or_a_truncated_archive_is_named_before_anything_is_written(
    voc_sources, tmp_path
):
    voc_tar = voc_sources[0]
    named = voc_tar.rename(tmp_path / "VOCtrainval_11-May-2012.tar")  # not the published bytes
    out = tmp_path / "voc"
    with pytest.raises(
        PrepareError,
        match=r"VOCtrainval_11-May-2012.tar: MD5 [0-9a-f]{32}, "
        r"expected 6cd6e144f989b92b3379bac3b3de84fd",
    ):
        prepare("voc", [str(named)], out, echo=lambda _: None)
    truncated = tmp_path / "voc-cut.tar"
    truncated.write_bytes(named.read_bytes()[:3000])
    with pytest.raises(PrepareError, match="voc-cut.tar: .*truncated"):
        prepare("voc", [str(truncated)], out, echo=lambda _: None)
    digest = hashlib.md5(named.read_bytes()).hexdigest()
    with pytest.raises(PrepareError, match="missing.tgz: not found"):
        prepare(
            "voc", [str(voc_sources[1]), str(tmp_path / "missing.tgz")], out, echo=lambda _: None
        )
    with pytest.raises(PrepareError, match="no VOC source"):
        prepare("voc", [str(voc_sources[1])], out, echo=lambda _: None)
    assert not out.exists()
    # the right digest beside the archive (<archive>.md5, md5sum's format) passes
    renamed = named.rename(tmp_path / "voc-renamed.tar")
    Path(f"{renamed}.md5").write_text(f"{digest}  voc-renamed.tar\n")
    prepare("voc", [str(renamed)], out, echo=lambda _: None)
    Path(f"{renamed}.md5").write_text("0" * 32 + "\n")
    with pytest.raises(PrepareError, match=r"voc-renamed.tar: MD5 .*voc-renamed.tar.md5"):
        prepare("voc", [str(renamed)], out, echo=lambda _: None)


def test_a_killed_run_leaves_no_half_written_png_and_the_next_one_finishes_it(
    voc_sources, tmp_path, monkeypatch
):
    voc_tar, sbd_tgz = voc_sources[:2]
    out = tmp_path / "voc"
    real, calls = sources.atomic_write, []

    def dies_mid_file(path, write, binary=True):
        calls.append(path)
        if len(calls) == 9:  # killed while writing the 9th file: a temporary file half-written
            tmp = Path(path).with_name(f".{Path(path).name}.1.dead.tmp")
            tmp.write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt
        real(path, write, binary)

    monkeypatch.setattr(sources, "atomic_write", dies_mid_file)
    with pytest.raises(KeyboardInterrupt):
        prepare("voc", [str(voc_tar), str(sbd_tgz)], out, echo=lambda _: None)
    monkeypatch.setattr(sources, "atomic_write", real)
    done = sorted(out.rglob("*.png")) + sorted(out.rglob("*.jpg"))
    assert len(done) == 8 and all(read_label(p) is not None for p in out.rglob("*.png"))

    said = []
    record = prepare("voc", [str(voc_tar), str(sbd_tgz)], out, echo=said.append)
    assert "removed 1 partial file(s)" in said[-2] and not list(out.rglob("*.tmp"))
    kept = record["counts"]["images kept"] + record["counts"]["labels kept"]
    written = record["counts"]["images written"] + record["counts"]["labels written"]
    assert (kept, written) == (8, 4)
    again = prepare("voc", [str(voc_tar), str(sbd_tgz)], out, echo=lambda _: None)
    assert again["counts"]["labels written"] == 0 and again["counts"]["labels kept"] == 6
    with pytest.raises(PrepareError, match="prepared before from other sources"):
        prepare("voc", [str(voc_tar)], out, echo=lambda _: None)


def test_a_label_value_outside_the_classes_is_named(tmp_path):
    root = "VOC2012/"
    bad = np.full((H, W), 30, dtype=np.uint8)
    files = {
        f"{root}JPEGImages/a.jpg": jpeg(0),
        f"{root}SegmentationClass/a.png": palette_png(bad),
    }
    files |= {f"{root}ImageSets/Segmentation/{s}.txt": b"a\n" for s in ("train", "val")}
    source = write_archive(tmp_path / "bad.zip", files)
    with pytest.raises(
        PrepareError, match=r"bad.zip:VOC2012/SegmentationClass/a.png: values \[30\]"
    ):
        prepare("voc", [str(source)], tmp_path / "out", echo=lambda _: None)


# labelId -> trainId for the ids used below, written out from cityscapesScripts' labels.py table
# (road 7 -> 0, car 26 -> 13, bicycle 33 -> 18, sky 23 -> 10; unlabeled 0 and parking 9 -> 255)
CITYSCAPES_IDS = {7: 0, 26: 13, 33: 18, 23: 10, 0: 255, 9: 255}


def cityscapes_zips(tmp_path):
    rng = np.random.default_rng(3)
    images, gt, expected = {}, {}, {}
    for split, city, n in (("train", "aachen", 19), ("train", "bochum", 21), ("val", "lindau", 4)):
        stem = f"{city}_000000_{n:06d}"
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        images[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = cv2.imencode(".png", image)[
            1
        ].tobytes()
        ids = rng.choice(list(CITYSCAPES_IDS), (H, W)).astype(np.uint8)
        gt[f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"] = cv2.imencode(".png", ids)[
            1
        ].tobytes()
        gt[f"gtFine/{split}/{city}/{stem}_gtFine_color.png"] = b"not used"
        gt[f"gtFine/{split}/{city}/{stem}_gtFine_polygons.json"] = b"{}"
        expected[f"{split}/{city}/{stem}"] = (
            images[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"],
            np.vectorize(CITYSCAPES_IDS.get)(ids).astype(np.uint8),
        )
    images["leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png"] = b"no label"
    return (
        write_archive(tmp_path / "leftImg8bit_trainvaltest.zip", images),
        write_archive(tmp_path / "gtFine_trainvaltest.zip", gt),
        expected,
    )


def test_cityscapes_label_ids_become_train_ids_and_the_study_reads_them(tmp_path):
    left, gt, expected = cityscapes_zips(tmp_path)
    out = tmp_path / "cityscapes"
    record = prepare("cityscapes", [str(left), str(gt)], out, echo=lambda _: None)
    for key, (image, train_ids) in expected.items():
        split, city, stem = key.split("/")
        assert (
            out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        ).read_bytes() == image
        label = read_label(out / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
        assert np.array_equal(label, train_ids)
    assert not (out / "leftImg8bit" / "test").exists()
    assert record["counts"] == {
        "images written": 3,
        "images kept": 0,
        "labels written": 3,
        "labels kept": 0,
        "train pairs": 2,
        "val pairs": 1,
    }
    assert record["class_pixels"]["car"] == sum(int((t == 13).sum()) for _, t in expected.values())
    data = study_datasets("cityscapes", out, tmp_path / "split")
    assert len(data.labeled_ids) + len(data.unlabeled_ids) == 2 and len(data.val) == 1


def test_cityscapes_needs_both_archives_and_checks_a_published_md5(tmp_path):
    left, gt, _ = cityscapes_zips(tmp_path)
    with pytest.raises(PrepareError, match="no labels source given, expected gtFine_trainvaltest"):
        prepare("cityscapes", [str(left)], tmp_path / "out", echo=lambda _: None)
    Path(f"{gt}.md5").write_text("f" * 32 + "  gtFine_trainvaltest.zip\n")
    with pytest.raises(PrepareError, match="gtFine_trainvaltest.zip: MD5"):
        prepare("cityscapes", [str(left), str(gt)], tmp_path / "out", echo=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_the_prepare_command_prints_the_counts_or_names_the_bad_source(
    voc_sources, tmp_path, capsys
):
    out = tmp_path / "voc"
    assert cli(["prepare", "voc", str(voc_sources[0]), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "labels written: 4" in printed and "class histogram" in printed and "background" in printed
    )
    assert cli(["prepare", "voc", str(tmp_path / "nothing.tar"), "--output", str(out)]) == 2
    assert "nothing.tar: not found" in capsys.readouterr().err
