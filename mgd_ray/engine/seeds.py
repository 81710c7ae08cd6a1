"""Named seed streams: every seed a run draws from, in one place, derived from the run's seed.

Each function names what its stream decides. The numbers are those the engine has always used
(run seed x 1000 plus a fixed offset plus the rank), so results do not change; keeping the offsets
apart keeps the streams apart, which is why a new stream belongs here with an offset of its own.
"""
from __future__ import annotations


def teacher_branch_init(seed: int, branch: int) -> int:
    """Initial weights of CPS branch 0 or 1: CPS needs two differently initialised branches."""
    return seed * 1000 + branch


def teacher_cutmix(seed: int, rank: int) -> int:
    """A teacher run's CutMix boxes on `rank`: each rank mixes its own shard differently."""
    return seed * 1000 + 500 + rank


def teacher_global(seed: int, rank: int) -> int:
    """Torch's global generator in a teacher run on `rank` (dropout, augmentation in the loader)."""
    return seed * 1000 + 100 + rank


def student_init(seed: int) -> int:
    """A student's initial weights: the same for every loss variant of one seed, so variants differ
    only in what they were trained with."""
    return seed


def student_cutmix(seed: int, rank: int) -> int:
    """A student run's CutMix boxes on `rank`."""
    return seed * 1000 + rank


def student_global(seed: int, rank: int) -> int:
    """Torch's global generator in a student run on `rank` (dropout, augmentation in the loader)."""
    return seed * 1000 + rank


def loader_shuffle(data_seed: int) -> int:
    """The order in which a single process's labeled and unlabeled loaders draw images: DataConfig.seed,
    the seed that also draws the split (a distributed sampler shuffles by its own seed and epoch)."""
    return data_seed
