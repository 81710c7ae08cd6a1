"""ImageNet initialisation end to end, with checkpoints these tests write and serve from 127.0.0.1
(nothing can be downloaded here): resolution order, hash checks, the offline error, and the
--pretrained option reaching the teacher and student configs of the study and the runner."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import threading

import pytest
import torch

from mgd_ray.config import TEACHER_DEEP, TEACHER_WIDE
from mgd_ray.models import build_model, pretrained
from mgd_ray.models.pretrained import PretrainedWeightsError, resolve_imagenet_weights

R18 = "deeplabv3plus_resnet18"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    """A static file server on 127.0.0.1 over tmp_path/served; .url(name), .requests, .folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_Quiet,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.folder, httpd.requests = folder, handler.requests
    httpd.url = lambda name: f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """torch hub's folder, redirected to a temporary one; returns its checkpoints/ folder."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _write_named(folder, stem: str, state: dict) -> str:
    """Save `state` as <stem>-<sha256 prefix>.pth in folder, as torchvision names its files."""
    tmp = folder / "unnamed.pth"
    torch.save(state, tmp)
    name = f"{stem}-{_sha256(tmp)[:8]}.pth"
    os.replace(tmp, folder / name)
    return name


def _torchvision_resnet18_state() -> dict:
    """Our backbone's tensors (torchvision naming), randomised, plus torchvision's fc
    classifier."""
    gen = torch.Generator().manual_seed(3)
    backbone = build_model(R18, 2).backbone.state_dict()
    state = {
        k: torch.rand(v.shape, generator=gen) for k, v in backbone.items() if v.is_floating_point()
    }
    return {
        **state,
        "fc.weight": torch.rand(1000, 512, generator=gen),
        "fc.bias": torch.zeros(1000),
    }


def _closed_port_url(name: str) -> str:
    with socket.socket() as s:  # a port nobody listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def test_download_into_hub_cache_and_every_key_loads(server, hub, monkeypatch):
    state = _torchvision_resnet18_state()
    name = _write_named(server.folder, "resnet18", state)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, R18, server.url(name))
    path = resolve_imagenet_weights(R18)
    assert path == str(hub / name) and _sha256(path) == _sha256(server.folder / name)
    assert server.requests == [f"/{name}"]
    assert (
        resolve_imagenet_weights(R18) == path and len(server.requests) == 1
    )  # cached: no second download
    loaded = build_model(R18, 21, backbone_weights=path).backbone.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert {k for k in loaded if not k.endswith("num_batches_tracked")} == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_a_file_whose_hash_differs_is_refused(server, hub, monkeypatch):
    name = _write_named(server.folder, "resnet18", {"w": torch.ones(3)})
    wrong = "resnet18-00000000.pth"
    os.replace(server.folder / name, server.folder / wrong)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, R18, server.url(wrong))
    with pytest.raises(PretrainedWeightsError, match="not the published file"):
        resolve_imagenet_weights(R18)
    assert not hub.exists() or os.listdir(hub) == []  # nothing half-written or wrong kept
    # the same check on a file already in the cache: a truncated download is not used
    hub.mkdir(parents=True, exist_ok=True)
    (hub / wrong).write_bytes(b"truncated")
    with pytest.raises(
        PretrainedWeightsError, match=r"resnet18-00000000\.pth: sha256 .* does not match"
    ):
        resolve_imagenet_weights(R18)


def test_the_user_folder_wins_without_network(server, hub, tmp_path, monkeypatch):
    name = _write_named(server.folder, "resnet18", {"w": torch.arange(4.0)})
    user = tmp_path / "user"
    user.mkdir()
    (user / name).write_bytes((server.folder / name).read_bytes())
    hub.mkdir(parents=True)
    (hub / name).write_bytes((server.folder / name).read_bytes())
    monkeypatch.setitem(pretrained.IMAGENET_URLS, R18, server.url(name))
    assert resolve_imagenet_weights(R18, str(user)) == str(user / name)
    assert resolve_imagenet_weights(R18) == str(hub / name)  # no user folder: the hub cache
    assert server.requests == []


@pytest.mark.parametrize("with_user_folder", [False, True])
def test_no_file_and_no_network_is_one_error_naming_file_url_and_folder(
    hub, tmp_path, monkeypatch, with_user_folder
):
    url = _closed_port_url("resnet18-f37072fd.pth")
    monkeypatch.setitem(pretrained.IMAGENET_URLS, R18, url)
    user = tmp_path / "user"
    user.mkdir()
    with pytest.raises(PretrainedWeightsError) as err:
        resolve_imagenet_weights(R18, str(user) if with_user_folder else None)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and url in message
    assert f"put it in {user if with_user_folder else hub}" in message
    assert "--pretrained none" in message


def test_published_table_names_every_network_with_its_hash():
    # torchvision's IMAGENET1K_V1 files (independently copied from torchvision's model builders)
    assert {
        a: pretrained.checkpoint_file_name(a)
        for a in (
            "deeplabv3plus_resnet18",
            "deeplabv3plus_resnet101",
            "deeplabv3plus_wide_resnet50_2",
            "deeplabv3plus_mobilenetv2",
        )
    } == {
        "deeplabv3plus_resnet18": "resnet18-f37072fd.pth",
        "deeplabv3plus_resnet101": "resnet101-63fe2227.pth",
        "deeplabv3plus_wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
        "deeplabv3plus_mobilenetv2": "mobilenet_v2-b0353104.pth",
    }
    assert pretrained.hash_prefix("wide_resnet50_2-95faca4d.pth") == "95faca4d"
    with pytest.raises(ValueError, match="--pretrained 'yes'"):
        pretrained.resolve_pretrained([R18], "yes")


@pytest.fixture()
def served_archs(server, monkeypatch):
    """Small stand-in files (named by their hash) for the student and both teachers."""
    names = {}
    for i, arch in enumerate((R18, TEACHER_DEEP, TEACHER_WIDE)):
        names[arch] = _write_named(
            server.folder, arch.removeprefix("deeplabv3plus_"), {"w": torch.full((2,), float(i))}
        )
        monkeypatch.setitem(pretrained.IMAGENET_URLS, arch, server.url(names[arch]))
    return names


def test_study_option_reaches_student_and_both_cps_teachers(
    tmp_path, hub, served_archs, monkeypatch
):
    from mgd_ray.distributed import study
    from mgd_ray.distributed.phases import teachers as teachers_phase
    from mgd_ray.distributed.phases.teachers import prepare_teachers

    cfg = study.StudyConfig.from_options(
        output_dir=str(tmp_path / "out"),
        storage_path=str(tmp_path / "storage"),
        protocols=("1/8",),
        pretrained="imagenet",
        crop_size=32,
        batch_size=2,
        max_concurrent_trials=1,
    )
    plans = study.prepare_study(cfg)
    staged = {
        arch: str(tmp_path / "storage" / "pretrained" / name)
        for arch, name in served_archs.items()
    }
    for path in staged.values():  # copied next to the cached teachers, for offline workers
        assert os.path.isfile(path)
    assert plans[0].distill.backbone_weights == staged[R18]
    teachers = []
    monkeypatch.setattr(
        teachers_phase,
        "ensure_teacher",
        lambda tcfg, run, root: teachers.append(tcfg) or (f"{root}/t.pt", False),
    )
    prepare_teachers(cfg, plans)
    assert {t.arch: t.backbone_weights for t in teachers} == {
        TEACHER_DEEP: staged[TEACHER_DEEP],
        TEACHER_WIDE: staged[TEACHER_WIDE],
    }
    with open(tmp_path / "out" / "study.json") as f:
        assert json.load(f)["pretrained"] == "imagenet"


def test_study_defaults_and_offline_failure_before_ray(tmp_path, hub, monkeypatch, capsys):
    from mgd_ray.distributed.options import resolve_study
    from mgd_ray.distributed.study_config import StudyConfig

    assert (
        resolve_study(gpus=lambda address: 0)[0].data.pretrained == "none"
    )  # synthetic trains from scratch
    assert (
        resolve_study(gpus=lambda address: 0, dataset="voc", data_root=str(tmp_path))[
            0
        ].data.pretrained
        == "imagenet"
    )
    with pytest.raises(ValueError, match="--pretrained 'imagenet1k'"):
        StudyConfig.from_options(pretrained="imagenet1k")
    url = _closed_port_url("resnet18-f37072fd.pth")
    monkeypatch.setitem(pretrained.IMAGENET_URLS, R18, url)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tune_loss_weights",
        os.path.join(os.path.dirname(__file__), "..", "experiments", "tune_loss_weights.py"),
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main(
        script.get_args_parser().parse_args(
            [
                "--pretrained",
                "imagenet",
                "--output-dir",
                str(tmp_path / "out"),
                "--crop-size",
                "32",
                "--protocols",
                "1/8",
            ]
        )
    )
    err = capsys.readouterr().err
    assert code == 2 and "resnet18-f37072fd.pth" in err and url in err
    assert not (tmp_path / "out" / "study.json").exists()


def test_teacher_and_student_names_key_the_file_not_its_folder():
    from mgd_ray.config import TeacherConfig
    from mgd_ray.distributed.teachers import teacher_name

    here = TeacherConfig(
        backbone_weights="/home/a/.cache/torch/hub/checkpoints/resnet101-63fe2227.pth"
    )
    there = TeacherConfig(backbone_weights="s3://bucket/mgd/pretrained/resnet101-63fe2227.pth")
    assert teacher_name(here) == teacher_name(there) != teacher_name(TeacherConfig())


def test_a_teacher_cached_under_another_kept_branch_is_not_reused(monkeypatch):
    from mgd_ray.config import TeacherConfig
    from mgd_ray.distributed import teachers

    kept_first = teachers.teacher_name(TeacherConfig())
    monkeypatch.setattr(teachers, "TEACHER_BRANCH", 1)
    assert teachers.teacher_name(TeacherConfig()) != kept_first


def test_worker_loops_fetch_the_imagenet_file(monkeypatch):
    from mgd_ray.distributed import trial as worker

    seen = {}
    monkeypatch.setattr(worker.storage, "download", lambda uri: "/local/" + os.path.basename(uri))
    monkeypatch.setattr(worker, "RayContext", lambda: None)
    monkeypatch.setattr(worker, "train_teacher", lambda cfg, ctx: seen.__setitem__("teacher", cfg))
    monkeypatch.setattr(
        worker, "distill_student", lambda cfg, ctx: seen.__setitem__("student", cfg)
    )
    from mgd_ray.config import DistillConfig, TeacherConfig

    teacher = TeacherConfig(backbone_weights="s3://b/pretrained/resnet101-63fe2227.pth")
    worker.teacher_loop({worker.JOB_KEY: teacher})
    from mgd_ray.distributed.spec import TrainRun, TrialSpec, from_tune, param_space

    spec = TrialSpec(
        DistillConfig(
            backbone_weights="s3://b/pretrained/resnet18-f37072fd.pth",
            teacher_deep_checkpoint="s3://b/teachers/d.pt",
        ),
        TrainRun(storage_path="s3://b/r"),
    )
    trial = from_tune(
        {**param_space(spec), **spec.paper_point.searched()}
    )  # a search trial's Tune config
    worker.student_loop({worker.JOB_KEY: trial.distill})
    assert seen["teacher"].backbone_weights == "/local/resnet101-63fe2227.pth"
    assert seen["student"].backbone_weights == "/local/resnet18-f37072fd.pth"
    assert seen["student"].teacher_deep_checkpoint == "/local/d.pt"


def test_runner_option_reaches_its_configs(tmp_path, hub, served_archs):
    from mgd_ray.engine.runner import get_args_parser, plan

    args = get_args_parser().parse_args(["--output-dir", str(tmp_path), "--student-seeds", "0"])
    teachers, students = plan(args)
    assert all(c.backbone_weights is None for c in (*teachers.values(), *students.values()))
    args = get_args_parser().parse_args(
        ["--output-dir", str(tmp_path), "--student-seeds", "0", "--pretrained", "imagenet"]
    )
    teachers, students = plan(args)
    assert {role: c.backbone_weights for role, c in teachers.items()} == {
        "deep": str(hub / served_archs[TEACHER_DEEP]),
        "wide": str(hub / served_archs[TEACHER_WIDE]),
    }
    assert {c.backbone_weights for c in students.values()} == {str(hub / served_archs[R18])}
