"""`python -m mgd_ray.models.compression [--size 512] [--num-classes 21]`: how much lighter the MGD
students are than the two complementary teachers, beside the paper's claims.

Every figure is computed here (flops.py's `complexity`, the package's `mgd_ray.models.complexity`,
says what is counted).
"""

from __future__ import annotations

import argparse
import math

from mgd_ray.config import STUDENTS, TEACHER_DEEP, TEACHER_WIDE

from .flops import complexity

# The paper's backbone-FLOPs compression claims (student vs the two teachers, low-high).
PAPER_BACKBONE_RATIO = {
    "deeplabv3plus_resnet18": (3.4, 5.3),
    "deeplabv3plus_mobilenetv2": (38.7, 59.6),
}
TEACHERS = {"teacher_deep": TEACHER_DEEP, "teacher_wide": TEACHER_WIDE}
# Parameter totals of the official networks at 21 classes (docs/design.md), printed beside ours.
OFFICIAL_TOTAL_PARAMS = {
    "deeplabv3plus_resnet18": 16.627e6,
    "deeplabv3plus_mobilenetv2": 5.760e6,
    "deeplabv3plus_resnet101": 59.468e6,
    "deeplabv3plus_wide_resnet50_2": 83.678e6,
}
OFFICIAL_STEM_WIDTH = {"deeplabv3plus_resnet18": 32, "deeplabv3plus_resnet101": 64}


def _short(arch: str) -> str:
    return arch.removeprefix("deeplabv3plus_")


def compression_rows(
    size: int = 512, num_classes: int = 21, output_stride: int | None = None
) -> list[dict]:
    """One row per (student, teacher): each network's figures and teacher / student ratios.
    output_stride None = each network's default (students 16 / 32, teachers 16)."""
    stats = {
        a: complexity(a, num_classes, size, output_stride) for a in (*STUDENTS, *TEACHERS.values())
    }
    rows = []
    for student in STUDENTS:
        for role, teacher in TEACHERS.items():
            s, t = stats[student], stats[teacher]
            rows.append(
                {
                    "student": student,
                    "teacher": teacher,
                    "role": role,
                    "student_stats": s,
                    "teacher_stats": t,
                    **{
                        f"{k}_ratio": t[k] / s[k]
                        for k in (
                            "backbone_gmacs",
                            "total_gmacs",
                            "backbone_params",
                            "total_params",
                        )
                    },
                }
            )
    return rows


def _network_table(rows: list[dict], num_classes: int) -> list[str]:
    lines = [
        "| network | role | output stride | backbone GMACs | total GMACs | backbone params (M) | "
        "total params (M) | official total (M) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    networks = {r["student"]: (r["student_stats"], "student") for r in rows}  # students first
    networks.update({r["teacher"]: (r["teacher_stats"], r["role"]) for r in rows})
    for arch, (st, role) in networks.items():
        official = (
            f"{OFFICIAL_TOTAL_PARAMS[arch] / 1e6:.3f}"
            if num_classes == 21 and arch in OFFICIAL_TOTAL_PARAMS
            else "-"
        )
        lines.append(
            f"| {_short(arch)} | {role} | {st['output_stride']} | {st['backbone_gmacs']:.2f} | "
            f"{st['total_gmacs']:.2f} | {st['backbone_params'] / 1e6:.2f} | "
            f"{st['total_params'] / 1e6:.3f} | {official} |"
        )
    return lines


def _ratio_table(rows: list[dict]) -> list[str]:
    lines = [
        "| student | vs teacher | backbone GMACs | total GMACs | backbone params | total params "
        "| paper (backbone) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = PAPER_BACKBONE_RATIO[r["student"]]
        lines.append(
            f"| {_short(r['student'])} | {_short(r['teacher'])} ({r['role']}) | "
            f"{r['backbone_gmacs_ratio']:.1f}x | {r['total_gmacs_ratio']:.1f}x | "
            f"{r['backbone_params_ratio']:.1f}x | {r['total_params_ratio']:.1f}x | {lo}-{hi}x |"
        )
    return lines


def official_stem_extra_gmacs(arch: str, size: int) -> float:
    """GMACs the official code's deep stem adds to `arch`'s backbone over torchvision's 7x7 stem.

    Deep stem: three 3x3 convs of widths w, w, 2w at stride 2 (ResNet-18 w = 32,
    ResNet-101 w = 64); with 2w = 128 channels out, layer1's first bottleneck (its 1x1 conv to 64
    and its 1x1 shortcut to 256) reads 64 more channels. WRN-50-2 and MobileNetV2 keep
    torchvision's stems: 0."""
    w = OFFICIAL_STEM_WIDTH.get(arch)
    if w is None:
        return 0.0
    h2, h4 = math.ceil(size / 2) ** 2, math.ceil(size / 4) ** 2
    extra = 9 * (3 * w + w * w + w * 2 * w) * h2 - 7 * 7 * 3 * 64 * h2
    if 2 * w != 64:
        extra += (2 * w - 64) * (64 + 256) * h4
    return extra / 1e9


def _backbone_ratios(
    rows: list[dict], student: str, size: int, official_stems: bool = False
) -> list[float]:
    def gmacs(arch: str, stats: dict) -> float:
        return stats["backbone_gmacs"] + (
            official_stem_extra_gmacs(arch, size) if official_stems else 0.0
        )

    return sorted(
        gmacs(r["teacher"], r["teacher_stats"]) / gmacs(r["student"], r["student_stats"])
        for r in rows
        if r["student"] == student
    )


def _verdict(student: str, rows: list[dict], size: int) -> str:
    lo, hi = PAPER_BACKBONE_RATIO[student]

    def gap(ratios: list[float]) -> float:
        return max(abs(ratios[0] - lo) / lo, abs(ratios[-1] - hi) / hi)

    ours, official = (
        _backbone_ratios(rows, student, size),
        _backbone_ratios(rows, student, size, True),
    )
    text = (
        f"{_short(student)}: backbone compression {ours[0]:.1f}-{ours[-1]:.1f}x against the "
        f"paper's {lo}-{hi}x (largest relative difference {gap(ours):.0%}); with the official "
        "code's deep stems on ResNet-18 and ResNet-101 (not built here: torchvision's ImageNet "
        f"checkpoints have 7x7 stems) it is {official[0]:.2f}-{official[-1]:.2f}x "
        f"({gap(official):.1%} from the paper)."
    )
    if student == "deeplabv3plus_mobilenetv2":
        text += (
            " The student is the official network: no 1280-channel conv, ASPP on the 320-channel "
            "block, output stride 32 against teachers at 16."
        )
    if gap(official) > 0.02:
        text += (
            " The rest of the difference is in what is counted: only convolutions and matrix "
            "products here, and the paper names neither its counter nor its image size."
        )
    return text


def compression_report(size: int = 512, num_classes: int = 21) -> str:
    """The Markdown report: per-network figures, teacher / student ratios, and a verdict per
    student."""
    rows = compression_rows(size, num_classes)
    out = [
        f"## MGD students vs complementary teachers (one {size} x {size} image, {num_classes} "
        "classes)",
        "",
        "MACs of convolutions and matrix products (torch.utils.flop_counter; FLOPs / 2). Ratios "
        "are teacher / student.",
        "",
        *_network_table(rows, num_classes),
        "",
        *_ratio_table(rows),
        "",
    ]
    out += ["- " + _verdict(student, rows, size) for student in STUDENTS]
    return "\n".join(out)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=int, default=512, help="image side in pixels (default 512, VOC's crop)"
    )
    parser.add_argument(
        "--num-classes", type=int, default=21, help="classifier outputs (default 21, VOC)"
    )
    return parser


def main(args: argparse.Namespace) -> None:
    print(compression_report(args.size, args.num_classes))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
