"""Load a torchvision-format ImageNet checkpoint file into a backbone, every tensor accounted for.

The reference MGD code left part of the ResNet-18 stem randomly initialised because of a key
mismatch that `strict=False` hid; here a missing, unexpected or mis-shaped key is an error that
names the file and lists the keys. Only what the backbone declares unused in a torchvision file
(`unused_checkpoint_prefixes`: "fc." for ResNets; "classifier." and "features.18." -- the
1280-channel conv the official student drops -- for MobileNetV2) is dropped, and BatchNorm's
`num_batches_tracked` counters may be absent (older torchvision files do not store them; they hold
no learned value).
"""

from __future__ import annotations

import os

import torch
from torch import nn

# for a backbone that declares no unused_checkpoint_prefixes
CLASSIFIER_PREFIXES = (
    "fc.",
    "classifier.",
)
_WRAPPERS = ("state_dict", "model")  # common containers around a state dict
_MAX_LISTED = 20


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a plain state dict, or one under "state_dict" /
    "model"."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone_weights={path!r}: no such file (expected a torchvision "
            "ImageNet checkpoint, e.g. resnet18-f37072fd.pth)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; say which file and why
        raise ValueError(
            f"backbone_weights={path!r}: cannot be read as a PyTorch checkpoint ({exc})"
        ) from exc
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"backbone_weights={path!r}: expected a state dict (parameter name -> tensor)"
        )
    # DDP-saved files prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_backbone_weights(backbone: nn.Module, path: str) -> list[str]:
    """Copy the checkpoint at `path` into `backbone` strictly (the backbone's
    unused_checkpoint_prefixes ignored).

    Returns the names of the loaded tensors; raises ValueError listing every missing, unexpected
    or mis-shaped key."""
    unused = tuple(getattr(backbone, "unused_checkpoint_prefixes", CLASSIFIER_PREFIXES))
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(unused)}
    expected = backbone.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    mis_shaped = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys [{_listed(missing)}]")
    if unexpected:
        problems.append(f"unexpected keys [{_listed(unexpected)}]")
    if mis_shaped:
        problems.append(f"mis-shaped keys [{_listed(mis_shaped)}]")
    if problems:
        raise ValueError(
            f"backbone_weights={path!r} does not match the {type(backbone).__name__} backbone "
            f"(torchvision naming expected; ignored: {', '.join(p + '*' for p in unused)}): "
            + "; ".join(problems)
        )
    backbone.load_state_dict(state, strict=False)  # only optional BN counters can be absent here
    return sorted(state)
