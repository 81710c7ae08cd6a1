"""Checkpoints: atomic writes (`schema.atomic_write`: temp file in the same folder, fsync, rename)
and safe loads.

A reader, or a run killed mid-write, sees either the previous file or the complete new one, never a
truncated one: os.replace within one file system is atomic. Loads use weights_only=True, so a
checkpoint can hold tensors, numbers, strings and containers of them, never arbitrary pickled code.
"""

from __future__ import annotations

import os
import random
from typing import Any

import torch

from ..schema import atomic_write


def atomic_save(obj: Any, path: str) -> None:
    """torch.save `obj` to `path` atomically; on any failure no partial file is left behind."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str) -> Any:
    """torch.load(path, weights_only=True) onto the CPU, with a clear error for a missing file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path}: file not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model_state(path: str) -> dict[str, torch.Tensor]:
    """A plain model state dict from `path`: a model.pt, or a state.pt whose "model" entry is
    one."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path}: expected a model state dict (name -> tensor)")
    return state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under a DistributedDataParallel wrapper (itself otherwise)."""
    return model.module if hasattr(model, "module") else model


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict of `model` (under any DDP wrapper), detached, on the CPU."""
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA) and Python RNG states: cheap, and what CutMix and dropout draw from."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    internal = tuple(int(v) for v in state["python"])
    random.setstate((3, internal, None))
    if (
        "cuda" in state
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
