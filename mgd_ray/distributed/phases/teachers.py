"""The teachers phase: both teachers of every protocol trained (or found cached) side by side,
and RESULTS_DIR/teachers.json written for the report."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ... import storage
from ...config import TEACHER_DEEP, TEACHER_WIDE
from ..plan import ProtocolPlan, concurrency
from ..progress import StudyProgress
from ..results import TEACHERS_JSON, write_listing
from ..spec import TrialSpec
from ..study_config import StudyConfig
from ..teachers import ensure_teacher, read_teacher_metrics


def prepare_teachers(
    cfg: StudyConfig, plans: list[ProtocolPlan], progress: StudyProgress | None = None
) -> list[TrialSpec]:
    """Train (or find cached) both teachers of every protocol, as many runs at a time as the
    cluster holds, write
    RESULTS_DIR/teachers.json (where each teacher is, its size and its val mIoU) for the report,
    and return each protocol's TrialSpec (with its teachers' storage URIs)."""
    teachers_root = storage.join(cfg.storage.resolved_storage(), "teachers")
    given = cfg.teachers.given
    jobs = [
        (plan, arch) for plan in plans for arch in (TEACHER_DEEP, TEACHER_WIDE) if not given[arch]
    ]

    def ensure(job) -> str:
        plan, arch = job
        uri, cached = ensure_teacher(plan.teachers[arch], plan.run, teachers_root)
        if progress is not None:  # a cached teacher is done but took no time: not in the estimate
            progress.already_done("teacher", 1) if cached else progress.finished("teacher")
        return uri

    with ThreadPoolExecutor(max_workers=concurrency(cfg, plans[0].run)) as pool:
        trained = {
            (plan.protocol, arch): uri for (plan, arch), uri in zip(jobs, pool.map(ensure, jobs))
        }
    listing: dict[str, dict[str, Any]] = {}
    specs = []
    for plan in plans:
        uris = {}
        for role, arch in (("deep", TEACHER_DEEP), ("wide", TEACHER_WIDE)):
            path = given[arch]
            uri = (
                trained[(plan.protocol, arch)]
                if not path
                else path
                if "://" in path
                else os.path.abspath(path)
            )
            # a given file's scores are unknown
            metrics = read_teacher_metrics(uri) if not path else {}
            listing.setdefault(plan.protocol, {})[role] = {
                "arch": arch,
                "path": uri,
                "size_bytes": _size_or_none(uri),
                "miou": metrics.get("miou"),
                "iterations": metrics.get("iterations"),
            }
            uris[arch] = uri
        specs.append(plan.trial_spec(uris[TEACHER_DEEP], uris[TEACHER_WIDE]))
    write_listing(cfg, TEACHERS_JSON, listing)
    return specs


def _size_or_none(uri: str) -> int | None:
    try:
        return os.path.getsize(uri) if "://" not in uri else None
    except OSError:
        return None
