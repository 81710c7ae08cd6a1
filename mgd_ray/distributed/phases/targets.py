"""The targets phase of a protocol: its teachers' outputs, what MGD's losses read, computed once
into a store on the study's storage by Ray Train runs of the trials' shape, before its search; the
store is deleted after its last phase (unless --keep-targets)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

from ... import storage
from ...config import protocol_slug
from ..plan import ablation_seeds, concurrency
from ..ray_private import trainer_without_ray_cleaner
from ..records import error_summary
from ..results import TARGETS_JSON, targets_json, write_listing
from ..spec import TrialSpec
from ..study_config import StudyConfig
from ..trial import JOB_KEY, TargetsJob, scaling_config, targets_loop, train_run_config


def target_streams(cfg: StudyConfig) -> list[int]:
    """The mask streams (student seeds) a protocol's trials draw: the search's (cfg.seed) and each
    ablation seed's."""
    return sorted({cfg.seed, *(ablation_seeds(cfg) if cfg.budget.ablation else ())})


def targets_store(cfg: StudyConfig, spec: TrialSpec) -> str:
    """Where a protocol's store of teacher targets lives: on the study's storage, named by
    everything its targets depend on (the teacher files' contents, the data stream, the trials'
    worker count, device and precision, the schedule and the streams), so that another study, a
    resumed one or a changed option never picks up targets of something else (the engine checks
    the store's manifest again in every trial)."""
    distill = spec.distill
    data = {
        k: v
        for k, v in dataclasses.asdict(distill.data).items()
        if k not in ("num_workers", "split_out_dir")
    }
    identity = {
        "teachers": [
            storage.sha256(distill.teacher_deep_checkpoint),
            storage.sha256(distill.teacher_wide_checkpoint),
        ],
        "teacher_train_mode": distill.teacher_train_mode,
        "data": data,
        "workers": spec.run.workers,
        "device": cfg.cluster.device,
        "amp": distill.amp,
        "iterations": distill.iterations,
        "streams": target_streams(cfg),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return storage.join(
        cfg.storage.resolved_storage(), "targets", f"{protocol_slug(spec.protocol)}-{digest}"
    )


def prepare_targets(cfg: StudyConfig, spec: TrialSpec) -> TrialSpec:
    """Compute (or finish computing) the protocol's store of teacher targets and return the spec
    whose trials read it and load no teacher (--teacher-targets live: the spec unchanged).

    The store is written by Ray Train runs with the trials' worker count, each a chunk of the
    iterations, as many side by side as the cluster holds trials, so every slot works and no trial
    waits: the trials start once the store is whole. A chunk whose files exist is skipped, so a
    study killed while writing goes on where it stopped. What it cost (wall and device seconds)
    and its size go to RESULTS_DIR/targets.json."""
    if cfg.teachers.targets == "live":
        return spec
    store = targets_store(cfg, spec)
    streams, iterations = target_streams(cfg), spec.distill.iterations
    distill = dataclasses.replace(spec.distill, targets=store)
    chunks = max(1, min(concurrency(cfg, spec.run), iterations))
    bounds = [round(i * iterations / chunks) for i in range(chunks + 1)]
    name = store.rstrip("/").rsplit("/", 1)[-1]

    def write(chunk: int) -> float:
        run_name = f"targets-{name}-{chunk}"
        trainer = trainer_without_ray_cleaner(
            targets_loop,
            scaling_config=scaling_config(spec.run),
            train_loop_config={
                JOB_KEY: TargetsJob(distill, tuple(streams), bounds[chunk], bounds[chunk + 1])
            },
            run_config=train_run_config(spec.run, run_name),
        )
        started = time.time()
        trainer.fit()
        # nothing in it resumes anything
        storage.remove_tree(storage.join(spec.run.storage_path, run_name))
        return time.time() - started

    print(
        f"[{spec.protocol}] teacher targets: {iterations} iterations x {len(streams)} mask "
        f"stream(s) into {store}, {chunks} writer(s) side by side",
        flush=True,
    )
    started = time.time()
    try:
        with ThreadPoolExecutor(max_workers=chunks) as pool:
            seconds = list(pool.map(write, range(chunks)))
    except Exception as error:  # noqa: BLE001 -- a writer that cannot start or fails
        # The trials can still run their teachers themselves: each then succeeds or fails on its
        # own, recorded, and the study goes on, as without shared targets. The half-written store
        # is deleted (on VOC it is 100-230 GB), and targets.json and REPORT.md say what happened.
        why = error_summary(str(error))
        storage.remove_tree(store)
        listing = targets_json(cfg)
        listing[spec.protocol] = {"store": store, "fallback": why, "deleted": True}
        write_listing(cfg, TARGETS_JSON, listing)
        print(
            f"[{spec.protocol}] WARNING: teacher targets could not be computed ({why}); the "
            f"partial store was deleted and this protocol's trials run their teachers themselves",
            flush=True,
        )
        return spec
    listing = targets_json(cfg)
    spent = listing.get(spec.protocol, {})
    listing[spec.protocol] = {
        "store": store,
        "iterations": iterations,
        "streams": streams,
        "writers": chunks,
        "wall_s": spent.get("wall_s", 0.0) + time.time() - started,
        "device_seconds": spent.get("device_seconds", 0.0)
        + sum(seconds) * cfg.cluster.devices_per_trial,
        "bytes": storage.tree_bytes(store),
        "deleted": False,
    }
    write_listing(cfg, TARGETS_JSON, listing)
    print(
        f"[{spec.protocol}] teacher targets ready: {listing[spec.protocol]['bytes'] / 1e6:.1f} "
        f"MB, {listing[spec.protocol]['wall_s']:.0f} s",
        flush=True,
    )
    return dataclasses.replace(spec, distill=distill)


def release_targets(cfg: StudyConfig, spec: TrialSpec) -> None:
    """Delete a protocol's store once its last phase has ended (unless --keep-targets)."""
    if spec.distill.targets is None or cfg.storage.keep_targets:
        return
    storage.remove_tree(spec.distill.targets)
    listing = targets_json(cfg)
    if spec.protocol in listing:
        listing[spec.protocol]["deleted"] = True
        write_listing(cfg, TARGETS_JSON, listing)
