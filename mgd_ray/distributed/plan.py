"""A study's plan: per protocol, what its teachers and trials train (the dataset preset resolved
for the options) and how their Ray Train runs scale; how many runs the study makes and how many
trials run at once. `plan_study` is every check a study makes before Ray starts; it writes nothing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable

from ..config import TEACHER_DEEP, TEACHER_WIDE, DistillConfig, TeacherConfig
from ..data import build_datasets
from ..engine.presets import preset_configs
from .cluster import free_resources_per_node, node_shapes, trial_slots
from .memory import check_sharing
from .options import gpu_memory, study_name
from .spec import TrainRun, TrialSpec
from .study_config import StudyConfig
from .teachers import stage_pretrained
from .validate import validate


@dataclass(frozen=True)
class ProtocolPlan:
    """One protocol's runs before its teachers exist: the trials' base config (no teacher files
    yet), each teacher's config by architecture (each has its own lr), and the Train run
    settings."""

    protocol: str
    distill: DistillConfig
    teachers: dict[str, TeacherConfig] = field(repr=False)
    run: TrainRun

    @property
    def iterations(self) -> int:
        return self.distill.iterations

    def trial_spec(self, teacher_deep: str, teacher_wide: str) -> TrialSpec:
        """The protocol's TrialSpec once its teachers' files are known."""
        return TrialSpec(
            dataclasses.replace(
                self.distill,
                teacher_deep_checkpoint=teacher_deep,
                teacher_wide_checkpoint=teacher_wide,
            ),
            self.run,
        )


def train_run(cfg: StudyConfig) -> TrainRun:
    """How every Train run of the study (teachers and trials) scales and where it stores."""
    return TrainRun(
        storage_path=os.path.join(cfg.storage.resolved_storage(), study_name(cfg)),
        workers=cfg.cluster.workers_per_trial,
        cpus_per_worker=cfg.cluster.cpus_per_worker,
        gpus_per_worker=cfg.cluster.gpus_per_worker,
        max_failures=cfg.cluster.max_failures,
        worker_start_timeout_s=cfg.cluster.worker_start_timeout_s,
        worker_start_retries=cfg.cluster.worker_start_retries,
        log_level="INFO" if cfg.verbose_ray else "WARNING",
    )


def plan_protocol(
    cfg: StudyConfig, protocol: str, imagenet: dict[str, str | None] | None = None
) -> ProtocolPlan:
    """The plan of one protocol (engine.presets.preset_configs with the study's options);
    `imagenet`: {arch: ImageNet file} (None: from scratch)."""
    data = {
        "root": cfg.data.data_root,
        "split_dir": cfg.data.split_dir,
        "num_workers": cfg.data.loader_workers,
        "split_out_dir": os.path.abspath(os.path.join(cfg.storage.output_dir, "splits")),
        "crop_size": cfg.budget.crop_size,
        "batch_size": cfg.budget.batch_size,
    }
    distill, teachers = preset_configs(
        cfg.data.dataset,
        protocol,
        cfg.student,
        cfg.cluster.workers_per_trial,
        data=data,
        iterations=cfg.budget.iterations,
        teacher_iterations=cfg.budget.teacher_iterations,
        eval_every=cfg.budget.eval_every,
        teacher_eval_every=cfg.budget.teacher_eval_every,
        imagenet=imagenet,
        seed=cfg.seed,
    )
    if cfg.compile is not None:  # else the engine's default: on CUDA only
        distill = dataclasses.replace(distill, compile=cfg.compile)
        teachers = {
            arch: dataclasses.replace(t, compile=cfg.compile) for arch, t in teachers.items()
        }
    return ProtocolPlan(protocol, distill, teachers, train_run(cfg))


def plan_study(cfg: StudyConfig) -> list[ProtocolPlan]:
    """Every check that can be made before Ray starts, writing nothing: the options against the
    file system (validate: the data folder, the given files, the teacher files, the results folder,
    new or a matching study on --resume), the ImageNet files of --pretrained
    imagenet (found or downloaded here), the presets and the data (the synthetic set is generated
    in its cache on first use). Returns the plan of each protocol."""
    validate(cfg)  # the file system's part: the data, given files, teachers, results folder
    imagenet = stage_pretrained(
        cfg.data.pretrained,
        [cfg.student, TEACHER_DEEP, TEACHER_WIDE],
        cfg.storage.resolved_storage(),
        cfg.data.pretrained_dir,
        copy=False,
    )
    plans = [plan_protocol(cfg, protocol, imagenet) for protocol in cfg.budget.protocols]
    check_gpu_sharing(cfg, plans)
    for plan in plans:
        build_datasets(plan.distill.data, save_split=False)
    return plans


def check_gpu_sharing(
    cfg: StudyConfig,
    plans: list[ProtocolPlan],
    memory: Callable[[str | None], tuple[float, str] | None] | None = None,
) -> None:
    """With --trials-per-gpu N > 1: refuse (ValueError naming the numbers) when N of the study's
    largest run, a student trial or a teacher it trains, do not fit the GPU's memory
    (memory.check_sharing; `memory(address)`: (GiB, name) of the GPU, or None when unknown, then
    nothing is checked and the study says so)."""
    if cfg.cluster.trials_per_gpu <= 1:
        return
    found = (memory or gpu_memory)(cfg.cluster.address)
    if found is None:
        print(
            f"--trials-per-gpu={cfg.cluster.trials_per_gpu}: the GPU's memory is unknown here (no "
            "accelerator type on the cluster's nodes); whether the trials fit is not checked",
            flush=True,
        )
        return
    given = cfg.teachers.given
    runs = []
    for plan in plans:
        data = plan.distill.data
        runs.append(("student trial", plan.distill.student, data.batch_size, data.crop_size))
        runs += [
            ("teacher", arch, t.data.batch_size, t.data.crop_size)
            for arch, t in plan.teachers.items()
            if not given.get(arch)
        ]
    check_sharing(cfg.cluster.trials_per_gpu, runs, *found)


def planned_runs(cfg: StudyConfig) -> dict[str, int]:
    """Runs the whole study makes: teacher runs and student trials (search and ablation)."""
    teachers = sum(not given for given in cfg.teachers.given.values())
    per_protocol = cfg.budget.num_samples + (
        len(cfg.budget.ablation_variants) * cfg.budget.seeds if cfg.budget.ablation else 0
    )
    return {
        "teacher": teachers * len(cfg.budget.protocols),
        "trial": per_protocol * len(cfg.budget.protocols),
    }


def concurrency(cfg: StudyConfig, run: TrainRun) -> int:
    """Runs in flight in the next phase: --max-concurrent-trials, or what the cluster can hold
    now (cluster.trial_slots: its free resources, or an autoscaler's maximum node counts)."""
    if cfg.cluster.max_concurrent_trials:
        return cfg.cluster.max_concurrent_trials
    return trial_slots(run.scaling(), node_shapes(), free_resources_per_node())


def ablation_seeds(cfg: StudyConfig) -> list[int]:
    """The seeds of every ablation row: cfg.seed + 1 onwards, never the search's cfg.seed, so the
    "MGD (best found)" row is not the winning trial's own run again."""
    return [cfg.seed + 1 + s for s in range(cfg.budget.seeds)]
