"""torchvision's published ImageNet checkpoints: which file each architecture starts from, and
where to find it on this machine.

Every official MGD network (students and both CPS branches of each teacher) starts from ImageNet
weights; on VOC and Cityscapes that is the paper's regime ("imagenet"), training from scratch
("none") is for the synthetic set. A file is looked for, in order, in a folder the user gives
(`--pretrained-dir`, for machines without internet), then in torch hub's cache
(`torch.hub.get_dir()/checkpoints`, where torchvision itself keeps them), and is otherwise
downloaded into that cache. The sha256 prefix in each file name (resnet18-f37072fd.pth) is checked
on every file found or fetched, so a truncated or foreign file fails here, not in training.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse

import torch

REGIMES = ("imagenet", "none")
# torchvision's IMAGENET1K_V1 files; the hex digits before ".pth" are the first digits of the
# sha256.
TORCHVISION_MODELS = "https://download.pytorch.org/models/"
IMAGENET_URLS = {
    "deeplabv3plus_resnet18": TORCHVISION_MODELS + "resnet18-f37072fd.pth",
    "deeplabv3plus_resnet50": TORCHVISION_MODELS + "resnet50-0676ba61.pth",
    "deeplabv3plus_resnet101": TORCHVISION_MODELS + "resnet101-63fe2227.pth",
    "deeplabv3plus_wide_resnet50_2": TORCHVISION_MODELS + "wide_resnet50_2-95faca4d.pth",
    "deeplabv3plus_mobilenetv2": TORCHVISION_MODELS + "mobilenet_v2-b0353104.pth",
}


class PretrainedWeightsError(FileNotFoundError):
    """An ImageNet checkpoint that cannot be found, fetched, or is not the published file."""


def default_regime(dataset: str) -> str:
    """ "imagenet" for VOC and Cityscapes (the paper's regime), "none" for the synthetic set."""
    return "none" if dataset == "synthetic" else "imagenet"


def check_regime(regime: str) -> str:
    if regime not in REGIMES:
        raise ValueError(f"--pretrained {regime!r}: expected one of {', '.join(REGIMES)}")
    return regime


def imagenet_url(arch: str) -> str:
    if arch not in IMAGENET_URLS:
        raise ValueError(
            f"--pretrained imagenet: no published ImageNet checkpoint for {arch!r} "
            f"(known: {', '.join(IMAGENET_URLS)})"
        )
    return IMAGENET_URLS[arch]


def checkpoint_file_name(arch: str) -> str:
    """e.g. resnet18-f37072fd.pth: the name torchvision's URL gives the file."""
    return os.path.basename(urllib.parse.urlparse(imagenet_url(arch)).path)


def hash_prefix(file_name: str) -> str:
    """The sha256 prefix torchvision puts in a checkpoint's name: resnet18-f37072fd.pth ->
    f37072fd."""
    return os.path.splitext(file_name)[0].rsplit("-", 1)[-1]


def hub_checkpoint_dir() -> str:
    """torch hub's checkpoint cache (where torchvision.models keeps its downloads)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_hash(path: str, url: str) -> str:
    expected = hash_prefix(os.path.basename(path))
    actual = _sha256(path)
    if not actual.startswith(expected):
        raise PretrainedWeightsError(
            f"ImageNet checkpoint {path}: sha256 {actual[: len(expected)]}... does not match the "
            f"{expected} in its name (a truncated or different file); delete it and fetch {url} "
            "again"
        )
    return path


def resolve_imagenet_weights(arch: str, pretrained_dir: str | None = None) -> str:
    """The local path of `arch`'s torchvision ImageNet checkpoint, its hash checked: from
    `pretrained_dir` if it holds the file, else torch hub's cache, else downloaded into that cache.

    With no file and no network: one PretrainedWeightsError naming the file, its URL and the folder
    to put it in."""
    url, name = imagenet_url(arch), checkpoint_file_name(arch)
    if pretrained_dir is not None and not os.path.isdir(pretrained_dir):
        raise PretrainedWeightsError(f"--pretrained-dir {pretrained_dir}: no such folder")
    cache = hub_checkpoint_dir()
    for folder in (pretrained_dir, cache):
        if folder is not None and os.path.isfile(os.path.join(folder, name)):
            return _check_hash(os.path.join(folder, name), url)
    target = os.path.join(cache, name)
    try:
        os.makedirs(cache, exist_ok=True)
        print(f"downloading {url} to {target}", flush=True)
        # writes to a temporary file next to the target and renames it only once the hash matches
        torch.hub.download_url_to_file(url, target, hash_prefix=hash_prefix(name), progress=False)
    except RuntimeError as error:  # torch.hub's "invalid hash value"
        raise PretrainedWeightsError(
            f"ImageNet checkpoint {name} downloaded from {url} is not the published file "
            f"({error}); nothing was kept in {cache}"
        ) from error
    except (
        Exception
    ) as error:  # no network, proxy, HTTP error, read-only cache: one message for all
        folder = pretrained_dir or cache
        raise PretrainedWeightsError(
            f"ImageNet checkpoint {name} for {arch} is not on this machine and could not be "
            f"downloaded from {url} ({type(error).__name__}: {error}). Download it where there "
            f"is internet and put it in {folder}"
            + ("" if pretrained_dir else " (or in a folder given with --pretrained-dir)")
            + ", or train from scratch with --pretrained none."
        ) from error
    return target


def resolve_pretrained(
    archs: list[str] | tuple[str, ...], regime: str, pretrained_dir: str | None = None
) -> dict[str, str | None]:
    """{arch: local checkpoint path} for the regime "imagenet", {arch: None} for "none"."""
    check_regime(regime)
    return {
        arch: resolve_imagenet_weights(arch, pretrained_dir) if regime == "imagenet" else None
        for arch in dict.fromkeys(archs)
    }
