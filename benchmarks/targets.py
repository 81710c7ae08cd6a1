"""Shared teacher targets (issue 21): the confidence rounding's own effect and a store's bytes.

1. Rounding. Over the pixels L_P reads in `--iterations` iterations of the synthetic preset's data
   stream (crop 48, batch 2: the mixed image's labels, from u0 / u1 by one mask stream, and x_l's,
   of both teachers), for each tau: the share of pixels whose kept decision differs between the
   fp32 `confidence > tau` and the stored `code / 255 > tau` (code = round(255 * confidence)), and
   the kept fractions of both. Teachers: trained synthetic CPS teachers (`--teacher-arch`,
   `--teacher-iterations`; trained once by train_teacher in this process and cached under
   ~/.cache/mgd_ray/benchmarks), or random-weight ones (`--random-teachers`).
2. Bytes per iteration per rank. Exact raw bytes (what a file holds before compression) at the
   synthetic preset and at VOC size (crop 512, 21 classes, batch 2 and 8 per device); compressed
   bytes of a store written by write_targets at the synthetic preset (those teachers, 5 streams);
   compressed bytes of synthesized VOC-size targets (module docstring of `voc_targets`); the read +
   decompress time of one file (TargetReader, file in the page cache); the projection for a VOC 1/8
   protocol (39,372 iterations at total batch 8).

    python benchmarks/targets.py                      # trained ResNet-18 teachers, 40 iterations
    python benchmarks/targets.py --random-teachers --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import cv2
import numpy as np
import torch
from common import CACHE, arg_parser, machine, random_teachers, synthetic_distill_config, table

from mgd_ray.config import TEACHER_DEEP, DataConfig, DistillConfig
from mgd_ray.data import build_datasets
from mgd_ray.data.io import read_image
from mgd_ray.data.transforms import to_tensor
from mgd_ray.engine import LocalContext, seeds, train_teacher
from mgd_ray.engine.batches import IterationData, cutmix_mask_at, iteration_loader
from mgd_ray.engine.checkpoint import atomic_save, load_model_state
from mgd_ray.engine.mgd_step import active_terms
from mgd_ray.engine.presets import preset_configs
from mgd_ray.engine.target_store import TargetReader, encode, file_name, load_arrays, write_targets
from mgd_ray.engine.targets import (
    compute_targets,
    freeze,
    load_teacher,
    per_pixel_arrays,
    teacher_forward,
    to_arrays,
)
from mgd_ray.losses import REGION_GRID, confidence_code, label_and_code, lowest_kept_code
from mgd_ray.models import build_model

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
VOC_ITERATIONS = 39_372  # VOC 1/8 at total batch 8 (the figure)
VOC_BUDGET_GB = 200.0
BATCHES = 3  # named batches with per-pixel targets: u0, u1, x_l


def raw_bytes(batch: int, crop: int, classes: int, streams: int) -> dict[str, int]:
    """Bytes of one rank's targets of one iteration, uncompressed: uint8 label + code per pixel of
    each named batch of both teachers; per stream float32 B x C pooled logits and B x 49 x 49
    similarities."""
    pixels = 2 * BATCHES * 2 * batch * crop * crop
    per_stream = batch * (classes + REGION_GRID**4) * 4
    return {"pixel": pixels, "per_stream": per_stream, "total": pixels + streams * per_stream}


def trained_teacher(arch: str, iterations: int, seed: int) -> str:
    """A CPS teacher of `arch` trained `iterations` iterations on the synthetic 1/8 split (preset
    crop, batch, lr, warm-up and CPS weight; branch init seed `seed`), cached."""
    path = CACHE / f"cps-{arch}-synthetic-1_8-{iterations}it-seed{seed}.pt"
    if path.exists():
        return str(path)
    _, teachers = preset_configs(
        "synthetic",
        "1/8",
        data={"num_workers": 0, "split_out_dir": str(CACHE / "splits")},
        teacher_iterations=iterations,
        teacher_eval_every=iterations,
    )
    # the study's teacher recipe
    cfg = dataclasses.replace(teachers[TEACHER_DEEP], arch=arch, seed=seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-teacher-") as folder:
        ctx = LocalContext(folder, verbose=False)
        metrics = train_teacher(cfg, ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(load_model_state(os.path.join(ctx.latest_checkpoint(), "model.pt")), str(path))
    with open(str(path)[:-3] + ".json", "w") as f:
        json.dump(
            {
                "arch": arch,
                "iterations": iterations,
                "seed": seed,
                "miou": metrics["miou"],
                "seconds": time.perf_counter() - started,
            },
            f,
        )
    return str(path)


def teachers_of(args) -> tuple[dict[str, str], str]:
    """(DistillConfig teacher fields, a line saying what they are)."""
    if args.random_teachers:
        arch = args.teacher_arch
        cfg = dataclasses.replace(synthetic_distill_config(), teacher_deep=arch, teacher_wide=arch)
        return (
            {
                **random_teachers(cfg),
                "teacher_deep": args.teacher_arch,
                "teacher_wide": args.teacher_arch,
            },
            f"random-weight {args.teacher_arch}",
        )
    paths = {}
    for seed, role in enumerate(("deep", "wide")):
        paths[f"teacher_{role}_checkpoint"] = trained_teacher(
            args.teacher_arch, args.teacher_iterations, seed
        )
        paths[f"teacher_{role}"] = args.teacher_arch
    scores = [
        json.load(open(paths[f"teacher_{r}_checkpoint"][:-3] + ".json")) for r in ("deep", "wide")
    ]
    described = ", ".join(
        f"val mIoU {s['miou']:.3f} (trained in {s['seconds'] / 60:.1f} min)" for s in scores
    )
    return paths, (
        f"CPS-trained {args.teacher_arch}, {args.teacher_iterations} iterations each: {described}"
    )


@torch.no_grad()
def confidences(cfg: DistillConfig, iterations: int) -> torch.Tensor:
    """fp32 max-softmax confidences of every pixel L_P reads (both teachers; x_m from u0 / u1 by
    the masks of stream cfg.seed, and x_l) over `iterations` iterations of the data stream."""
    data = build_datasets(cfg.data)
    teachers = [
        load_teacher(
            getattr(cfg, f"teacher_{r}"),
            data.num_classes,
            getattr(cfg, f"teacher_{r}_checkpoint"),
            f"teacher_{r}_checkpoint",
            torch.device("cpu"),
            cfg.teacher_train_mode,
        )
        for r in ("deep", "wide")
    ]
    items = IterationData(data.labeled, data.unlabeled, cfg.data, 1, 0)
    found = []
    for item in iteration_loader(items, range(iterations), 0, torch.device("cpu")):
        u0, u1 = item["u"].chunk(2)
        mask = cutmix_mask_at(
            seeds.student_cutmix(cfg.seed, 0, item["iteration"]),
            u0.shape[0],
            u0.shape[-2],
            u0.shape[-1],
        ).bool()
        for teacher in teachers:
            out = teacher_forward(teacher, {"u0": u0, "u1": u1, "x_l": item["x_l"]})
            conf = {name: label_and_code(o["logits"])[2] for name, o in out.items()}
            found += [torch.where(mask, conf["u1"], conf["u0"]).flatten(), conf["x_l"].flatten()]
    return torch.cat(found)


def rounding_rows(conf: torch.Tensor) -> list[list]:
    code = confidence_code(conf)
    rows = []
    for tau in THRESHOLDS:
        fp32 = conf > tau
        rounded = code >= lowest_kept_code(tau)
        differ = int((fp32 != rounded).sum())
        rows.append(
            [
                tau,
                f"{differ / conf.numel():.2e}",
                differ,
                f"{fp32.float().mean():.4f}",
                f"{rounded.float().mean():.4f}",
            ]
        )
    return rows


def file_sizes(folder: str) -> list[int]:
    return [os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]


def read_seconds(reader: TargetReader, iterations: list[int], rounds: int) -> float:
    """Median seconds of one reader call (read the file, decompress the step's arrays)."""
    times = []
    for _ in range(rounds):
        for t in iterations:
            start = time.perf_counter()
            reader(t)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_store(cfg: DistillConfig, iterations: int, streams: int) -> dict:
    """Compressed bytes and read time of a store written by write_targets at cfg's preset."""
    # the store's length
    cfg = dataclasses.replace(cfg, iterations=max(cfg.iterations, iterations))
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        store = os.path.join(folder, "store")
        stats = write_targets(
            cfg,
            list(range(streams)),
            range(iterations),
            LocalContext(folder, verbose=False),
            store,
        )
        sizes = file_sizes(os.path.join(store, "rank0of1"))
        with open(os.path.join(store, "rank0of1", file_name(0)), "rb") as f:
            one = load_arrays(f.read())
        reader = TargetReader(store, 0, 1, 0, active_terms(cfg.weights.as_dict()))
        seconds = read_seconds(reader, list(range(iterations)), 3)
    pixel = len(encode(per_pixel_arrays({k: torch.from_numpy(v) for k, v in one.items()})))
    return {
        "mean": statistics.mean(sizes),
        "max": max(sizes),
        "pixel_part": pixel,
        "write_s": stats["seconds"] / iterations,
        "read_s": seconds,
    }


def mosaic(images: list[np.ndarray], size: int) -> torch.Tensor:
    """A size x size image tiled with synthetic images upsampled 2x (160 px: inside the training
    augmentation's scales), row by row, the rest cut off: a VOC-size input on which a teacher
    trained on the synthetic set sees what it learnt."""
    tile = 160
    canvas = np.zeros((size + tile, size + tile, 3), dtype=np.uint8)
    per_row = size // tile + 1
    for i, image in enumerate(images[: per_row * per_row]):
        r, c = divmod(i, per_row)
        canvas[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = cv2.resize(
            image, (tile, tile), interpolation=cv2.INTER_LINEAR
        )
    return to_tensor(canvas[:size, :size])


@torch.no_grad()
def voc_targets(
    kind: str, chunks: int, streams: int, teacher_fields: dict
) -> dict[str, torch.Tensor]:
    """VOC-size targets (crop 512) for 2 * chunks images per named batch, synthesized, each chunk
    of 2 images per batch its own forward (a B = 8 file is 4 chunks side by side); train-mode BN:
    - "random": synthetic images upsampled bilinearly from 80 to 512 px, two random-weight
      ResNet-18 DeepLabv3+ teachers with 21 classes; a random network's softmax is flat, so its
      codes sit near 255 / 21 (few distinct values: easy to compress);
    - "spread": the same with each classifier's weights and bias x 8, which spreads confidences
      over (0, 1): a pessimistic case for compression (trained teachers are confident on most
      pixels);
    - "trained": the benchmark's (trained) teachers, 6 classes, on mosaics of synthetic images at
      2x (more object boundaries per pixel than VOC's images have: pessimistic too)."""
    data = build_datasets(DataConfig(crop_size=48, split_out_dir=str(CACHE / "splits")))
    size, per_image = 512, 16 if kind == "trained" else 1
    if kind == "trained":
        teachers = {
            r: load_teacher(
                teacher_fields[f"teacher_{r}"],
                6,
                teacher_fields[f"teacher_{r}_checkpoint"],
                f"teacher_{r}_checkpoint",
                torch.device("cpu"),
                True,
            )
            for r in ("deep", "wide")
        }
    else:
        teachers = {}
        for seed, role in enumerate(("deep", "wide")):
            torch.manual_seed(seed)
            model = build_model("deeplabv3plus_resnet18", 21)
            model.head.classifier.weight.mul_(8.0 if kind == "spread" else 1.0)
            model.head.classifier.bias.mul_(8.0 if kind == "spread" else 1.0)
            teachers[role] = freeze(model, train_mode=True)
    sources = [read_image(s.image) for s in data.unlabeled.samples]
    parts = []
    for chunk in range(chunks):
        images = []
        for i in range(6 * chunk, 6 * chunk + 6):
            picked = [sources[(i * per_image + j) % len(sources)] for j in range(per_image)]
            upsampled = cv2.resize(picked[0], (size, size), interpolation=cv2.INTER_LINEAR)
            images.append(mosaic(picked, size) if kind == "trained" else to_tensor(upsampled))
        x_l, u0, u1 = torch.stack(images).chunk(3)
        masks = {
            s: cutmix_mask_at(seeds.student_cutmix(s, 0, chunk), 2, size, size)
            for s in range(streams)
        }
        parts.append(to_arrays(compute_targets(teachers, x_l, u0, u1, masks)))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def voc_file(targets: dict[str, torch.Tensor], folder: str) -> dict:
    """Compressed bytes of one file of `targets` and its read + decompress time."""
    store = os.path.join(folder, f"voc-{time.time_ns()}")
    os.makedirs(os.path.join(store, "rank0of1"))
    raw = encode(targets)
    with open(os.path.join(store, "rank0of1", file_name(0)), "wb") as f:
        f.write(raw)
    weights = {"sup": 1.0, "pixel": 1.0, "semantic": 1.0, "region": 1.0}
    seconds = read_seconds(TargetReader(store, 0, 1, 0, active_terms(weights)), [0], 5)
    pixel = len(encode(per_pixel_arrays(targets)))
    return {
        "bytes": len(raw),
        "pixel_part": pixel,
        "per_stream": len(raw) - pixel,
        "read_s": seconds,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__)
    add = p.add_argument
    add(
        "--teacher-arch",
        default="deeplabv3plus_resnet18",
        help="teacher architecture for both roles (default ResNet-18: minutes to train on a CPU)",
    )
    add(
        "--teacher-iterations",
        type=int,
        default=300,
        help="CPS iterations of each trained teacher",
    )
    add("--random-teachers", action="store_true", help="random-weight teachers, no training")
    add(
        "--iterations",
        type=int,
        default=40,
        help="data-stream iterations measured (rounding, store)",
    )
    add("--voc-chunks", type=int, default=4, help="2-image chunks of the VOC-size file (4: B = 8)")
    add("--quick", action="store_true", help="5 iterations, VOC size at B = 2 only")
    return p


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.iterations, args.voc_chunks = 5, 1
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    teacher_fields, described = teachers_of(args)
    cfg = dataclasses.replace(synthetic_distill_config(data={"num_workers": 0}), **teacher_fields)
    b, s = cfg.data.batch_size, cfg.data.crop_size
    print(
        f"teachers: {described}; stream: synthetic 1/8, crop {s}, batch {b}, "
        f"{args.iterations} iterations"
    )

    conf = confidences(cfg, args.iterations)
    quantiles = torch.quantile(conf, torch.tensor([0.1, 0.5, 0.9]))
    print(
        f"\n1. Rounding: {conf.numel()} L_P pixels, confidence deciles 10/50/90%: "
        + " / ".join(f"{q:.3f}" for q in quantiles.tolist())
    )
    print(
        table(
            [
                "tau",
                "share decided otherwise",
                "pixels",
                "kept (fp32 conf > tau)",
                "kept (code / 255 > tau)",
            ],
            rounding_rows(conf),
        )
    )

    print("\n2. Bytes per iteration per rank")
    rows = [[f"synthetic, crop {s}, B {b}, 6 classes", *raw_bytes(b, s, 6, 5).values()]]
    rows += [
        [f"VOC, crop 512, B {vb}, 21 classes", *raw_bytes(vb, 512, 21, 5).values()]
        for vb in (2, 8)
    ]
    print("raw (uint8 labels and codes; float32 per stream), 5 streams:")
    print(table(["preset", "labels + codes", "per stream", "total (5 streams)"], rows))
    store = synthetic_store(cfg, args.iterations, 5)
    print(
        f"\nsynthetic store written by write_targets ({args.iterations} iterations, 5 streams): "
        f"compressed {store['mean']:.0f} B per file (max {store['max']}), labels + codes alone "
        f"{store['pixel_part']} B; raw {raw_bytes(b, s, 6, 5)['total']} B; write "
        f"{store['write_s'] * 1e3:.0f} ms per iteration (both teachers' forwards included), "
        f"read + decompress {store['read_s'] * 1e3:.2f} ms"
    )
    with tempfile.TemporaryDirectory(prefix="bench-voc-") as folder:
        voc_rows = []
        kinds = ("random", "spread") if args.random_teachers else ("trained", "random", "spread")
        for kind in kinds:
            started = time.perf_counter()
            full = voc_targets(kind, args.voc_chunks, 1, teacher_fields)
            synthesized = time.perf_counter() - started
            for chunks in sorted({1, args.voc_chunks}):
                part = {k: v[: 2 * chunks] for k, v in full.items()}
                measured = voc_file(part, folder)
                per_stream = measured["per_stream"]
                for streams in (1, 5):
                    ranks = 8 // (2 * chunks)
                    per_iteration = ranks * (measured["pixel_part"] + streams * per_stream)
                    projected = VOC_ITERATIONS * per_iteration / 1e9
                    voc_rows.append(
                        [
                            kind,
                            2 * chunks,
                            streams,
                            measured["pixel_part"],
                            per_stream,
                            f"{measured['read_s'] * 1e3:.0f}",
                            per_iteration,
                            f"{projected:.0f}",
                            "yes" if projected <= VOC_BUDGET_GB else "NO",
                        ]
                    )
            print(f"({kind}: targets synthesized in {synthesized:.0f} s)")
    print(
        "\nVOC size, synthesized (see voc_targets): one rank's file, and the VOC 1/8 projection "
        "at total batch 8 (8 / B ranks)"
    )
    print(
        table(
            [
                "targets",
                "B per rank",
                "streams",
                "labels + codes (B)",
                "per stream (B)",
                "read ms",
                "bytes per iteration (all ranks)",
                "VOC 1/8 GB",
                f"<= {VOC_BUDGET_GB:.0f} GB",
            ],
            voc_rows,
        )
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
