"""Named seed streams: every seed a run draws from, in one place.

Every stream is `derive(name, *numbers)`: a stable hash (BLAKE2b) of the stream's name and its
integers, so two streams never replay one sequence (with offsets such as seed * 1000 + rank, two
names could, and did), and a seed is the same on every machine, Python and process (Python's own
`hash` of a str is salted per process). Each function below names what its stream decides and of
what it is a pure function; a new stream gets a new name here.
"""

from __future__ import annotations

import hashlib
import struct

SEED_BITS = 63  # torch.Generator.manual_seed takes any int; 63 bits also fit a signed int64


def derive(stream: str, *numbers: int) -> int:
    """A seed in [0, 2^63) from a stream name and integers (any sign, up to 64 bits each)."""
    digest = hashlib.blake2b(stream.encode(), digest_size=8, person=b"mgd_ray.seeds")
    for number in numbers:
        digest.update(struct.pack("<q", int(number)))
    return int.from_bytes(digest.digest(), "little") >> (64 - SEED_BITS)


def teacher_branch_init(seed: int, branch: int) -> int:
    """Initial weights of CPS branch 0 or 1: CPS needs two differently initialised branches."""
    return derive("teacher_branch_init", seed, branch)


def teacher_cutmix(seed: int, rank: int, iteration: int) -> int:
    """A teacher run's CutMix boxes of `iteration` on `rank`: each rank mixes its shard
    differently, and a resumed run draws the masks an uninterrupted one would, with no generator
    state kept."""
    return derive("teacher_cutmix", seed, rank, iteration)


def teacher_global(seed: int, rank: int) -> int:
    """Torch's global generator in a teacher run on `rank` (what a model may draw: dropout)."""
    return derive("teacher_global", seed, rank)


def student_init(seed: int) -> int:
    """A student's initial weights: the same for every loss variant of one seed, so variants differ
    only in what they were trained with."""
    return derive("student_init", seed)


def student_cutmix(seed: int, rank: int, iteration: int) -> int:
    """A student run's CutMix boxes of `iteration` on `rank`: a mask stream of stored teacher
    targets is this stream for one student seed (engine/target_store.py)."""
    return derive("student_cutmix", seed, rank, iteration)


def student_global(seed: int, rank: int) -> int:
    """Torch's global generator in a student run on `rank` (what a model may draw: dropout)."""
    return derive("student_global", seed, rank)


def data_order(data_seed: int, role: str, epoch: int) -> int:
    """The permutation of a training set in `epoch` of the data stream; role "labeled" or
    "unlabeled" (each its own stream, as each set has its own length)."""
    return derive(f"data_order/{role}", data_seed, epoch)


def augmentation(data_seed: int, role: str, iteration: int, rank: int, slot: int) -> int:
    """The random scale, flip and crop of image `slot` of `rank`'s `role` batch in `iteration`: a
    function of the data alone, whatever the loader workers, the trial seed or a resume."""
    return derive(f"augmentation/{role}", data_seed, iteration, rank, slot)
