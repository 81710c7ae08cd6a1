"""Whether --trials-per-gpu N trials fit one GPU's memory, from measured step figures.

A trial that shares a GPU has one Train worker, so it holds the whole total batch of an iteration
on that one device (8 VOC images, 16 on Cityscapes), not the official 2 per GPU. The figures are
the peak reserved memory of one training step on one H100 (docs/benchmarks.md section 7, run A:
crop 512, bf16, 21 classes), at 2 and 8 images per device; the student (MGD) step ran both frozen
teachers in it (live targets), so a trial reading shared targets needs less (not measured). Each
process also holds a CUDA context. Between and beyond the measured points the memory is taken as
linear in the images per device, with the per-image part scaled by the crop's pixel count against
512 x 512: an extrapolation, which the refusal says it is.
"""

from __future__ import annotations

import math

MEASURED_CROP = 512
CUDA_CONTEXT_GIB = 0.51
# arch -> (GiB at 2 images per device, GiB at 8): CPS for the teachers, MGD for the students.
STEP_GIB = {
    "deeplabv3plus_resnet101": (5.69, 16.9),
    "deeplabv3plus_wide_resnet50_2": (6.09, 16.7),
    "deeplabv3plus_resnet18": (2.55, 6.88),
    "deeplabv3plus_mobilenetv2": (2.83, 8.62),
}
# Memory nvidia-smi reports (GiB) per accelerator type, as Ray names them (the
# "accelerator_type:<name>" resource of a GPU node, ray.util.accelerators); the smaller size of
# a type sold in two (V100 16 / 32 GB, A100 40 / 80 GB).
ACCELERATOR_GIB = {
    "T4": 15.0,
    "P4": 7.4,
    "P100": 15.9,
    "V100": 15.8,
    "A10G": 22.5,
    "L4": 22.5,
    "L40S": 44.5,
    "A100": 39.4,
    "H100": 79.6,
}
# AWS instance families -> the accelerator type their GPUs are (for `ray up` node types, which
# name an InstanceType and not the GPU).
INSTANCE_ACCELERATOR = {
    "g4dn": "T4",
    "g5": "A10G",
    "g6": "L4",
    "g6e": "L40S",
    "p3": "V100",
    "p4d": "A100",
    "p4de": "A100",
    "p5": "H100",
}


def step_gib(arch: str, images: int, crop: int) -> float:
    """Peak GiB one process needs to train `arch` at `images` per device and crop `crop`
    (STEP_GIB, linear in images, per-image part scaled by (crop / 512)^2, plus the CUDA
    context)."""
    at_2, at_8 = STEP_GIB[arch]
    per_image = (at_8 - at_2) / 6
    fixed = at_2 - 2 * per_image
    return fixed + per_image * images * (crop / MEASURED_CROP) ** 2 + CUDA_CONTEXT_GIB


def accelerator_of_instance(instance_type: str) -> str | None:
    """The GPU of an AWS instance type ("g5.xlarge" -> "A10G"), or None when unknown."""
    return INSTANCE_ACCELERATOR.get(instance_type.split(".")[0])


def check_sharing(
    trials_per_gpu: int, runs: list[tuple[str, str, int, int]], gpu_gib: float, gpu: str
) -> None:
    """Raise ValueError naming the numbers when `trials_per_gpu` runs of the largest of `runs`
    (what, arch, images per device, crop) need more than `gpu_gib`, the memory of GPU `gpu`."""
    sized = [
        (step_gib(arch, images, crop), what, arch, images, crop)
        for what, arch, images, crop in runs
        if arch in STEP_GIB
    ]
    if not sized:
        return
    need, what, arch, images, crop = max(sized)
    if trials_per_gpu * need > gpu_gib:
        fits = max(1, math.floor(gpu_gib / need))
        raise ValueError(
            f"--trials-per-gpu={trials_per_gpu}: {trials_per_gpu} {what} runs ({arch}, {images} "
            f"images per device at crop {crop}) need about {trials_per_gpu} x {need:.1f} = "
            f"{trials_per_gpu * need:.1f} GiB, more than the {gpu_gib:.1f} GiB of {gpu}; at most "
            f"{fits} fit (estimated from the step memory measured at crop 512 with 2 and 8 "
            "images, docs/benchmarks.md section 7)"
        )
