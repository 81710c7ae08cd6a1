"""What a finished study keeps: the best student of each protocol as a plain state dict with its
config and scores beside it, and no weights of finished trials unless asked.

RESULTS_DIR/models/<protocol_slug>/
    best_student.pt     build_model(arch, num_classes) + load_state_dict
    best_student.json   arch, num_classes, trial, config, mIoU, teachers
    <variant>.pt        each ablation row's best seed, when asked

Order makes --resume safe at every point: a Tune run's trials are pruned only after that run has
finished (Tune never restarts a finished trial, so nothing reads their Train folders again) and
after the protocol's best has been exported from them; exporting again finds either the weights or
an export at least as good.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from .. import storage
from ..schema import (
    FINISHED,
    TrialRecord,
    atomic_write,
    protocol_slug,
    ranked_trials,
    read_json_object,
    read_records,
    write_json_atomic,
)
from .records import now_iso


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        return read_json_object(path)
    except (OSError, ValueError):
        return None


def _copy_weights(checkpoint_path: str | None, destination: str) -> bool:
    """Copy a Train checkpoint's model.pt to `destination` (atomically); False when it is gone."""
    if not checkpoint_path:
        return False
    source = storage.join(checkpoint_path, "model.pt")
    if not storage.exists(source):
        return False
    local = storage.download(source)
    with open(local, "rb") as source_file:
        atomic_write(destination, lambda f: shutil.copyfileobj(source_file, f))
    if local != source.removeprefix("file://"):
        shutil.rmtree(os.path.dirname(local), ignore_errors=True)  # a downloaded temporary copy
    return True


def export_best(
    results_dir: str,
    protocol: str,
    study: dict[str, Any],
    name: str = "best_student",
    variant: str | None = None,
    teachers: dict[str, Any] | None = None,
    records: list[TrialRecord] | None = None,
) -> str | None:
    """Write models/<slug>/<name>.pt + .json from the protocol's best trial (schema.ranked_trials;
    of `variant` when given) whose weights still exist, unless the file already there scores at
    least as much. Returns the .pt path, or None when there is nothing to export. `records`: the
    protocol's records when the caller has read them already."""
    folder = os.path.join(results_dir, "models", protocol_slug(protocol))
    target = os.path.join(folder, f"{name}.pt")
    current = _read_json(target[:-3] + ".json") if os.path.exists(target) else None
    records = read_records(results_dir, protocol) if records is None else records
    for record in ranked_trials(records, variant=variant):
        if current is not None and current.get("miou", -1.0) >= record.miou:
            return target  # what is there is already the best (its Train folder may be pruned)
        os.makedirs(folder, exist_ok=True)
        if not _copy_weights(record.checkpoint_path, target):
            # pruned earlier, after an export at least as good, or --keep-trial-weights off
            continue
        info = {
            "arch": study.get("student"),
            "num_classes": study.get("num_classes"),
            "dataset": study.get("dataset"),
            "protocol": protocol,
            "trial_id": record.trial_id,
            "kind": record.kind,
            "variant": record.variant,
            "seed": record.seed,
            "config": record.config,
            "miou": record.miou,
            "iteration": record.iteration,
            "history": record.history,
            "teachers": teachers or {},
            "source_checkpoint": record.checkpoint_path,
            "exported_at": now_iso(),
            "load": "m = build_model(arch, num_classes); m.load_state_dict(torch.load(path))",
        }
        write_json_atomic(target[:-3] + ".json", info)
        return target
    return target if current is not None else None


def prune_trial_weights(results_dir: str, protocol: str, kind: str, run_root: str) -> list[str]:
    """Delete the Train run folders (weights, optimizer state) of the protocol's finished trials
    of `kind`; returns the trial ids pruned. Call only once that Tune run has finished and the
    protocol's best has been exported."""
    pruned = []
    for record in read_records(results_dir, protocol):
        if record.kind == kind and record.status in FINISHED:
            storage.remove_tree(storage.join(run_root, f"train-{record.trial_id}"))
            pruned.append(record.trial_id)
    return pruned


def folder_size(path: str, exclude: tuple[str, ...] = ()) -> int:
    """Bytes of the files under `path`, leaving out those under any of the `exclude` folders."""
    exclude = tuple(os.path.abspath(e) + os.sep for e in exclude)
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.abspath(os.path.join(folder, name))
            if not full.startswith(exclude) and not os.path.islink(full):
                total += os.path.getsize(full)
    return total
