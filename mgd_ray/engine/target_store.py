"""A store of teacher targets (engine/targets.py): written once per protocol by `write_targets`,
read back by every trial of it (DistillConfig.targets), so that no trial loads or runs a teacher.

Layout, on a local folder or an s3:// URI (through mgd_ray.storage):

    <store>/manifest.json              what the store holds (written before any target)
    <store>/rank{r}of{W}/{t:07d}.npz.zst   rank r's targets of iteration t (zstd-compressed .npz)

Each .npz holds the targets of every stream the manifest lists as the named arrays of
engine/targets.py (`to_arrays`): per teacher and named batch (u0, u1, x_l) a label and a code
(uint8 B x S x S), per stream the deep teacher's pooled logits (float32 B x C) and the wide
teacher's similarity (float32 B x 49 x 49); a code array is stored as its 2-D difference mod 256
(`difference`), which halves its compressed bytes (docs/benchmarks.md, section 9), and read back
exactly. The file is compressed with zstd at level 3: at VOC size about 100x faster than deflate at
level 9 for 10% more bytes (a writer must keep pace with a GPU step of ~0.15 s; deflate-9 took
several seconds per file). A file is written under a temporary name and renamed (or uploaded in
one PUT), so a file that exists is complete: a writer that dies resumes by skipping the iterations
whose files exist, and chunks of iterations can be written by separate runs with nothing shared
but the files.

A store serves a run only when every field of the manifest describing the teachers and the data
stream equals the run's own, this run's mask stream is listed (when it needs x_m targets) and the
store is long enough; otherwise the run is refused with a ValueError naming each field and both
values. A target is a pure function of the teacher files, the data stream (batches.py) and the mask
stream's seed: nothing else can pair a stored target with other images.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import numpy as np
import torch
import zstandard

from .. import storage
from ..config import DistillConfig
from . import seeds
from .batches import STREAM_VERSION, IterationData, cutmix_mask_at, iteration_loader, unpack
from .builders import REAL, Builders
from .context import RunContext, all_reduce_sum, is_distributed, rank, world_size
from .device import autocast, step_begin
from .mgd_step import active_terms
from .targets import (
    TEACHERS,
    Targets,
    array_names,
    compute_targets,
    config_teacher,
    from_arrays,
    needed,
    to_arrays,
)

# what a file holds and how (keys, uint8, differenced codes, zstd)
FORMAT = "mgd_ray.teacher_targets/2"
ZSTD_LEVEL = 3  # zstd's default
MANIFEST = "manifest.json"
MASK_STREAM = "student_cutmix"  # seeds.student_cutmix: a trial's CutMix masks


def rank_folder(store: str, rank: int, world: int) -> str:
    return storage.join(store, f"rank{rank}of{world}")


def file_name(iteration: int) -> str:
    return f"{iteration:07d}.npz.zst"


def split_sha256(labeled_ids: list[str], unlabeled_ids: list[str]) -> str:
    """The split's identity: its two id lists, in order (the stream indexes them)."""
    text = "\n".join(labeled_ids) + "\n\0\n" + "\n".join(unlabeled_ids)
    return hashlib.sha256(text.encode()).hexdigest()


def teacher_precision(device: torch.device, amp: bool) -> str:
    """The dtype the teachers' forward runs in (engine/device.autocast)."""
    return "bfloat16" if amp and device.type == "cuda" else "float32"


def describe(
    cfg: DistillConfig,
    data,
    world: int,
    device: torch.device,
    teachers: tuple[str, ...] = TEACHERS,
) -> dict[str, Any]:
    """The manifest fields a store must share with a run of `cfg` on `world` ranks: the teachers
    named in `teachers` (arch and file SHA-256), their BN mode and precision, the data stream."""
    fields: dict[str, Any] = {
        "format": FORMAT,
        "stream_version": STREAM_VERSION,
        "mask_stream": MASK_STREAM,
    }
    for teacher in teachers:
        option = f"teacher_{teacher}_checkpoint"
        path = getattr(cfg, option)
        if path is None:
            raise ValueError(
                f"DistillConfig.{option} is required: the loss weights use this "
                "teacher, and a targets store is checked against its file"
            )
        fields[f"teacher_{teacher}"] = getattr(cfg, f"teacher_{teacher}")
        fields[f"teacher_{teacher}_sha256"] = storage.sha256(path)
    fields.update(
        {
            "teacher_train_mode": cfg.teacher_train_mode,
            "teacher_precision": teacher_precision(device, cfg.amp),
            "num_classes": data.num_classes,
            "dataset": cfg.data.dataset,
            "protocol": cfg.data.protocol,
            "split_sha256": split_sha256(list(data.labeled_ids), list(data.unlabeled_ids)),
            "data_seed": cfg.data.seed,
            "crop_size": cfg.data.crop_size,
            "batch_size": cfg.data.batch_size,
            "world_size": world,
        }
    )
    return fields


def read_manifest(store: str) -> dict[str, Any] | None:
    uri = storage.join(store, MANIFEST)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def mismatches(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """'field: store has X, this run has Y' for each field of `expected` `found` differs in."""
    return [
        f"{key}: store has {found.get(key)!r}, this run has {value!r}"
        for key, value in expected.items()
        if found.get(key) != value
    ]


def refuse(store: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(
            f"teacher targets store {store} does not match this run: " + "; ".join(problems)
        )


def difference(code: np.ndarray) -> np.ndarray:
    """The 2-D mixed difference x[i, j] - x[i, j-1] - x[i-1, j] + x[i-1, j-1] of uint8 codes
    (... x H x W, zeros outside), mod 256. Codes come from bilinearly upsampled logits, so they
    are close to planar over a few pixels and the difference is mostly near 0: zstd then takes
    about half the bytes of the codes themselves. `undifference` inverts it exactly."""
    step = np.diff(code, axis=-1, prepend=np.zeros_like(code[..., :1]))
    return np.diff(step, axis=-2, prepend=np.zeros_like(step[..., :1, :]))


def undifference(diff: np.ndarray) -> np.ndarray:
    """The codes whose `difference` is `diff`: two running sums, mod 256."""
    return np.cumsum(np.cumsum(diff, axis=-2, dtype=np.uint8), axis=-1, dtype=np.uint8)


def encode(targets: dict[str, torch.Tensor]) -> bytes:
    """One iteration's targets as the bytes of a file: an .npz (codes differenced), in zstd."""
    buffer = io.BytesIO()
    arrays = {key: value.detach().cpu().numpy() for key, value in targets.items()}
    np.savez(buffer, **{k: difference(a) if k.endswith(".code") else a for k, a in arrays.items()})
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(buffer.getvalue())


def load_arrays(raw: bytes, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """{name: array} of the stored arrays `names` (every stored array when None) of an `encode`d
    file, codes undifferenced."""
    with np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(raw))) as stored:
        arrays = {name: stored[name] for name in (stored.files if names is None else names)}
    return {name: undifference(a) if name.endswith(".code") else a for name, a in arrays.items()}


def decode(raw: bytes, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """{name: tensor} of the stored arrays `names` (every one when None) of an `encode`d file."""
    return {name: torch.from_numpy(a) for name, a in load_arrays(raw, names).items()}


class TargetReader:
    """Reads one rank's targets of one mask stream, for the step: called with an iteration, returns
    the Targets the `active` terms read. Picklable, so DataLoader workers read the files while the
    main process computes."""

    def __init__(self, store: str, rank: int, world: int, stream: int, active: set[str]) -> None:
        self.folder, self.stream = rank_folder(store, rank, world), stream
        self.names = array_names(active, stream)
        self.store, self.rank = store, rank

    def __call__(self, iteration: int) -> Targets:
        uri = storage.join(self.folder, file_name(iteration))
        try:
            raw = storage.read_bytes(uri)
        except (FileNotFoundError, OSError) as err:
            raise FileNotFoundError(
                f"teacher targets store {self.store}: no targets of "
                f"iteration {iteration} for rank {self.rank} ({uri}): was the "
                f"store written in full? ({err})"
            ) from err
        return from_arrays(decode(raw, self.names), self.stream)


def open_store(cfg: DistillConfig, data, device: torch.device) -> TargetReader:
    """This rank's reader of cfg.targets for the run `cfg`, after checking that the store matches
    it (describe: only the teachers its weights use; this run's stream when it needs x_m targets;
    at least cfg.iterations iterations). Raises ValueError naming every mismatching field."""
    active = active_terms(cfg.weights.as_dict())
    need = needed(active)
    used = tuple(t for t in TEACHERS if any(need[t].values()))
    manifest = read_manifest(cfg.targets)
    if manifest is None:
        raise ValueError(
            f"teacher targets store {cfg.targets}: no {MANIFEST} (not a store, or "
            f"its writer has not started)"
        )
    problems = mismatches(manifest, describe(cfg, data, world_size(), device, used))
    if any(need[t]["mixed"] for t in TEACHERS) and cfg.seed not in manifest.get("streams", []):
        problems.append(
            f"streams: store has {manifest.get('streams')!r}, this run's mask stream "
            f"(seed {cfg.seed}) is not among them"
        )
    if manifest.get("iterations", 0) < cfg.iterations:
        problems.append(
            f"iterations: store has {manifest.get('iterations')!r}, this run needs "
            f"{cfg.iterations}"
        )
    refuse(cfg.targets, problems)
    return TargetReader(cfg.targets, rank(), world_size(), cfg.seed, active)


def _ensure_manifest(store: str, manifest: dict[str, Any]) -> None:
    """Write the manifest of a new store (rank 0), or check an existing one is this store's: a
    resumed writer or another chunk's writer must add files of the same targets, never others."""
    if rank() == 0 and read_manifest(store) is None:
        storage.write_bytes(storage.join(store, MANIFEST), json.dumps(manifest, indent=1).encode())
    if is_distributed():
        torch.distributed.barrier()
    found = read_manifest(store)
    refuse(store, mismatches(found or {}, manifest))


@torch.no_grad()
def write_targets(
    cfg: DistillConfig,
    streams: list[int],
    iterations: range,
    ctx: RunContext,
    store: str,
    builders: Builders = REAL,
) -> dict[str, Any]:
    """Compute and write both teachers' targets of `iterations` on this rank for every mask stream
    (student seed) in `streams`, into `store`; every rank of the run calls it and writes its own
    files, from the data stream a student run of `cfg` on as many ranks reads. Iterations whose
    file every rank already has are skipped (a resumed or repeated writer writes only what is
    missing). The store's length is cfg.iterations; `iterations` may be any chunk of it.

    Returns {"iterations": iterations computed, "files_written", "bytes_written" (both summed
    over ranks), "seconds"}. The teachers' BN mode, precision (cfg.amp on CUDA) and data are
    cfg's, as in a live run; the teachers and data come from `builders` (engine/builders.py)."""
    started = time.perf_counter()
    streams = sorted({int(s) for s in streams})
    if not streams:
        raise ValueError("write_targets: no mask stream (student seed) to write")
    if iterations.step != 1 or iterations.start < 0 or iterations.stop > cfg.iterations:
        raise ValueError(
            f"write_targets: iterations {iterations} outside range(0, "
            f"{cfg.iterations}), the store's length (DistillConfig.iterations)"
        )
    device, world, this_rank = ctx.device, world_size(), rank()
    data = builders.datasets(cfg.data)
    manifest = {
        **describe(cfg, data, world, device),
        "streams": streams,
        "iterations": cfg.iterations,
    }
    _ensure_manifest(store, manifest)
    teachers = {t: config_teacher(cfg, t, data.num_classes, device, builders) for t in TEACHERS}
    folder = rank_folder(store, this_rank, world)
    present = set(storage.list_files(folder))
    # Collective: a teacher forward in train mode combines BN statistics over the ranks, so every
    # rank computes every iteration some rank lacks (and writes only what it lacks itself).
    missing = torch.tensor(
        [file_name(t) not in present for t in iterations], dtype=torch.int32, device=device
    )
    todo = [t for t, m in zip(iterations, all_reduce_sum(missing).tolist()) if m]
    items = IterationData(data.labeled, data.unlabeled, cfg.data, world, this_rank)
    files = written = 0
    for item in iteration_loader(items, todo, cfg.data.num_workers, device):
        step_begin(device)
        t, x_l, _, u0, u1 = unpack(item, device)
        masks = {
            s: cutmix_mask_at(
                seeds.student_cutmix(s, this_rank, t), u0.shape[0], u0.shape[-2], u0.shape[-1]
            ).to(device)
            for s in streams
        }
        with autocast(device, cfg.amp):
            targets = to_arrays(compute_targets(teachers, x_l, u0, u1, masks))
        if file_name(t) not in present:
            raw = encode(targets)
            storage.write_bytes(storage.join(folder, file_name(t)), raw)
            files, written = files + 1, written + len(raw)
    totals = all_reduce_sum(torch.tensor([files, written], dtype=torch.float64, device=device))
    return {
        "iterations": len(todo),
        "files_written": int(totals[0]),
        "bytes_written": int(totals[1]),
        "seconds": time.perf_counter() - started,
    }


__all__ = [
    "FORMAT",
    "load_arrays",
    "MANIFEST",
    "TargetReader",
    "decode",
    "describe",
    "encode",
    "open_store",
    "write_targets",
]
