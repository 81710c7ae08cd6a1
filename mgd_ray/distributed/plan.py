"""A study's plan: per protocol, what its teachers and trials train (the dataset preset resolved
for the options) and how their Ray Train runs scale; how many runs the study makes and how many
trials run at once. `plan_study` is every check a study makes before Ray starts; it writes nothing.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import ray

from ..config import TEACHER_DEEP, TEACHER_WIDE, DataConfig, DistillConfig, TeacherConfig
from ..data import build_datasets
from ..engine.presets import load_preset, preset_optim
from .checks import check_teachers
from .options import StudyConfig, check_study_folder, study_name
from .spec import TrainRun, TrialSpec
from .teachers import stage_pretrained


@dataclass(frozen=True)
class ProtocolPlan:
    """One protocol's runs before its teachers exist: the trials' base config (no teacher files
    yet), each teacher's config by architecture (each has its own lr), and the Train run settings."""

    protocol: str
    distill: DistillConfig
    teachers: dict[str, TeacherConfig] = field(repr=False)
    run: TrainRun

    @property
    def iterations(self) -> int:
        return self.distill.iterations

    def trial_spec(self, teacher_deep: str, teacher_wide: str) -> TrialSpec:
        """The protocol's TrialSpec once its teachers' files are known."""
        return TrialSpec(dataclasses.replace(self.distill, teacher_deep_checkpoint=teacher_deep,
                                             teacher_wide_checkpoint=teacher_wide), self.run)


def train_run(cfg: StudyConfig) -> TrainRun:
    """How every Train run of the study (teachers and trials) scales and where it stores."""
    return TrainRun(storage_path=os.path.join(cfg.resolved_storage(), study_name(cfg)),
                    workers=cfg.workers_per_trial, cpus_per_worker=cfg.cpus_per_worker,
                    gpus_per_worker=cfg.gpus_per_worker, max_failures=cfg.max_failures,
                    worker_start_timeout_s=cfg.worker_start_timeout_s,
                    worker_start_retries=cfg.worker_start_retries,
                    log_level="INFO" if cfg.verbose_ray else "WARNING")


def plan_protocol(cfg: StudyConfig, protocol: str, imagenet: dict[str, str | None] | None = None) -> ProtocolPlan:
    """The plan of one protocol; `imagenet`: {arch: ImageNet file} (None: from scratch)."""
    imagenet = imagenet or {}
    preset = load_preset(cfg.dataset, protocol, cfg.student, num_devices=cfg.workers_per_trial)
    data = DataConfig(dataset=cfg.dataset, root=cfg.data_root, protocol=protocol, split_dir=cfg.split_dir,
                      split_out_dir=os.path.abspath(os.path.join(cfg.output_dir, "splits")),
                      crop_size=cfg.crop_size or preset["crop_size"],
                      batch_size=cfg.batch_size or preset["batch_size"], num_workers=cfg.loader_workers,
                      seed=cfg.seed)
    iterations = cfg.iterations or preset["student_iterations"]
    eval_every = min(cfg.eval_every or preset["eval_every"], iterations)
    teacher_iterations = cfg.teacher_iterations or preset["teacher_iterations"]
    distill = DistillConfig(student=cfg.student, data=data, optim=preset_optim(preset, "student", iterations),
                            weights=preset["weights"], iterations=iterations, eval_every=eval_every,
                            ohem=preset["ohem"], backbone_weights=imagenet.get(cfg.student), seed=cfg.seed)
    # Teachers have their own official total batch (Cityscapes: 8 against the students' 16).
    teacher_data = dataclasses.replace(data, batch_size=cfg.batch_size or preset["teacher_batch_size"])
    teacher_eval_every = min(cfg.eval_every or preset["teacher_eval_every"], teacher_iterations)
    teachers = {arch: TeacherConfig(arch=arch, data=teacher_data,
                                    optim=preset_optim(preset, "teacher", teacher_iterations, arch),
                                    cps_weight=preset["cps_weight"], iterations=teacher_iterations,
                                    eval_every=teacher_eval_every, ohem=preset["ohem"],
                                    backbone_weights=imagenet.get(arch), seed=cfg.seed)
                for arch in (TEACHER_DEEP, TEACHER_WIDE)}
    return ProtocolPlan(protocol, distill, teachers, train_run(cfg))


def plan_study(cfg: StudyConfig) -> list[ProtocolPlan]:
    """Every check that can be made before Ray starts, writing nothing: the given teacher files,
    the results folder (new, or a matching study on --resume), the ImageNet files of --pretrained
    imagenet (found or downloaded here), the presets and the data (the synthetic set is generated
    in its cache on first use). Returns the plan of each protocol."""
    check_teachers(cfg)  # a corrupt teacher file would otherwise fail every trial in its worker
    check_study_folder(cfg)
    imagenet = stage_pretrained(cfg.pretrained, [cfg.student, TEACHER_DEEP, TEACHER_WIDE], cfg.resolved_storage(),
                                cfg.pretrained_dir, copy=False)
    plans = [plan_protocol(cfg, protocol, imagenet) for protocol in cfg.protocols]
    for plan in plans:
        build_datasets(plan.distill.data, save_split=False)
    return plans


def planned_runs(cfg: StudyConfig) -> dict[str, int]:
    """Runs the whole study makes: teacher runs and student trials (search and ablation)."""
    teachers = sum(not given for given in (cfg.teacher_deep_checkpoint, cfg.teacher_wide_checkpoint))
    per_protocol = cfg.num_samples + (len(cfg.ablation_variants) * cfg.seeds if cfg.ablation else 0)
    return {"teacher": teachers * len(cfg.protocols), "trial": per_protocol * len(cfg.protocols)}


def max_concurrent_trials(cfg: StudyConfig) -> int:
    """Trials in flight: the limiting resource of the cluster over what one trial takes."""
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    resources = ray.cluster_resources()
    if cfg.gpus_per_trial:
        gpus = int(resources.get("GPU", 0))
        # An autoscaled cluster starts with no GPU worker: one trial in flight makes it scale up.
        return max(1, gpus // cfg.gpus_per_trial) * cfg.trials_per_gpu
    return max(1, int(resources.get("CPU", 1)) // (cfg.workers_per_trial * cfg.cpus_per_worker))
