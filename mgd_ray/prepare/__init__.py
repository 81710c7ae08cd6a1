"""`mgd-ray prepare voc|cityscapes SOURCE... --output DIR`: the downloaded archives (or their
folders) into the on-disk layout the study reads, then the study's own validation of every file.

Every source is checked first (found, a folder / tar / zip that reads to its end, its published
MD5); a check that fails names the source and nothing is written. Files are written atomically and
never overwritten: a second run keeps what the first finished (a killed run leaves no half-written
file), and an output folder holds one preparation, recorded in its prepare.json (the sources it
came from, the counts). The summary names the images, the labels, what the lists name that no
source had (missing), and the class histogram of the labels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..data import cityscapes as cityscapes_layout
from ..data import voc as voc_layout
from ..data.io import DatasetError, read_label, write_list
from ..data.validate import validate_samples
from ..schema import IGNORE_INDEX, write_json_atomic
from . import cityscapes, voc
from .sources import PrepareError, Source, open_source, remove_partial

DATASETS = {"voc": voc, "cityscapes": cityscapes}
RECORD = "prepare.json"


def _identity(sources: list[Source]) -> list[dict]:
    """What identifies the sources of a preparation in its record."""
    return [
        {"path": str(s.path.resolve()), "form": s.form, "files": len(s.names)} for s in sources
    ]


def check_output(output: Path, dataset: str, sources: list[Source]) -> None:
    """Refuse an `output` that is a file, holds another preparation (prepare.json naming another
    dataset or other sources), or holds files no preparation made; a folder of the same
    preparation is resumed."""
    if output.exists() and not output.is_dir():
        raise PrepareError(f"--output {output}: a file, expected a folder (new, or one to resume)")
    record = output / RECORD
    if record.is_file():
        earlier = json.loads(record.read_text(encoding="utf-8"))
        if earlier.get("dataset") != dataset or earlier.get("sources") != _identity(sources):
            raise PrepareError(
                f"--output {output}: prepared before from other sources ({record}: "
                f"{earlier.get('dataset')}, {[s['path'] for s in earlier.get('sources', [])]}); "
                "give a new folder, or the same sources to resume"
            )
    elif output.is_dir() and any(output.iterdir()):
        raise PrepareError(
            f"--output {output}: not empty and not made by mgd-ray prepare (no {RECORD}); give a "
            "new or empty folder"
        )


def _voc_run(grouped, output: Path) -> tuple[dict, list[list[str]], list]:
    train, val, train_list = voc.plan(grouped)
    counts = voc.write_tree(grouped, output, set(train) | set(val))
    listed = []
    for name, ids in ((train_list, train), ("val.txt", val)):
        present = [
            i
            for i in ids
            if voc.image_path(output, i).is_file() and voc.label_path(output, i).is_file()
        ]
        write_list(output / voc_layout.LIST_DIR / name, present)
        listed.append([i for i in ids if i not in set(present)])
        counts[f"{name} ids"] = len(present)
    samples = voc_layout.ids_to_samples(output, train + val)
    present = [s for s in samples if Path(s.image).is_file() and Path(s.label).is_file()]
    return counts, listed, present


def _cityscapes_run(grouped, output: Path) -> tuple[dict, list[list[str]], list]:
    images, labels = cityscapes.plan(grouped)
    pairs = sorted(set(images) & set(labels))
    counts = cityscapes.write_tree(grouped, output, set(pairs))
    missing = [sorted(set(images) - set(labels)), sorted(set(labels) - set(images))]
    samples = []
    for split in cityscapes.SPLITS:
        if (output / "leftImg8bit" / split).is_dir():
            rows = cityscapes_layout.scan_pairs(output, split)
            samples += cityscapes_layout.pairs_to_samples(output, rows, f"{split} (scanned)")
            counts[f"{split} pairs"] = len(rows)
    return counts, missing, samples


def prepare(dataset: str, paths: list[str], output: str | Path, echo=print) -> dict:
    """Prepare `dataset` ("voc" or "cityscapes") from the sources `paths` into `output`; return
    the summary prepare.json records (counts, missing ids, class histogram)."""
    if dataset not in DATASETS:
        raise PrepareError(f"prepare: unknown dataset {dataset!r}, expected voc or cityscapes")
    if not paths:
        raise PrepareError(f"prepare {dataset}: no SOURCE given")
    output = Path(output)
    module = DATASETS[dataset]
    sources = [open_source(path) for path in paths]
    grouped: dict[str, list[Source]] = {}
    for source in sources:
        kind = module.classify(source)
        grouped.setdefault(kind, []).append(source)
        echo(f"source {source.path}: {kind}, {len(source.names)} files, {source.checksum}")
    module.plan(grouped)  # a missing source or list fails here, before anything is written
    check_output(output, dataset, sources)
    record = {"dataset": dataset, "sources": _identity(sources), "status": "running"}
    write_json_atomic(output / RECORD, record)
    stale = remove_partial(output)
    if stale:
        echo(f"removed {stale} partial file(s) a killed run left")
    run = _voc_run if dataset == "voc" else _cityscapes_run
    counts, missing, samples = run(grouped, output)
    validate_samples(samples, [], module.NUM_CLASSES)
    histogram = np.zeros(256, dtype=np.int64)
    for sample in samples:
        histogram += np.bincount(read_label(sample.label).ravel(), minlength=256)
    names = list(module.CLASS_NAMES) + ["ignore (255)"]
    pixels = [*histogram[: module.NUM_CLASSES].tolist(), int(histogram[IGNORE_INDEX])]
    record.update(
        status="done",
        counts=counts,
        missing=missing,
        class_pixels=dict(zip(names, pixels)),
    )
    write_json_atomic(output / RECORD, record)
    echo(summary(record, output))
    return record


def summary(record: dict, output: Path) -> str:
    """The closing lines: counts, missing ids (a few named), the class histogram in shares."""
    lines = [f"prepared {record['dataset']} in {output} (validated as the study does):"]
    lines += [f"  {name}: {count}" for name, count in record["counts"].items()]
    for title, ids in zip(_MISSING[record["dataset"]], record["missing"]):
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        lines.append(f"  missing, {title}: {len(ids)}" + (f" ({shown})" if ids else ""))
    total = sum(record["class_pixels"].values()) or 1
    lines.append("  class histogram (share of labelled pixels):")
    lines += [
        f"    {name:14s} {count / total:7.2%}" for name, count in record["class_pixels"].items()
    ]
    return "\n".join(lines)


_MISSING = {
    "voc": ("training ids without an image or label", "val ids without an image or label"),
    "cityscapes": ("images without a labelIds file", "labelIds files without an image"),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgd-ray prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "voc: VOCtrainval_11-May-2012.tar (required) and SBD's benchmark.tgz and/or a "
            "SegmentationClassAug folder or zip, or their folders.\ncityscapes: "
            "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, or their folders."
        ),
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="archives or folders")
    parser.add_argument("--output", required=True, help="the data root to write (--data-root)")
    return parser


def main(argv: list[str]) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        prepare(args.dataset, args.sources, args.output)
    except DatasetError as exc:  # PrepareError, or the validation's verdict on a written file
        print(f"mgd-ray prepare: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["PrepareError", "prepare", "main"]
