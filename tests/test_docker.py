"""The Dockerfile, read with Docker's own parser (no Docker engine runs here)."""

from __future__ import annotations

import dockerfile
from conftest import REPO


def instructions() -> list:
    return list(dockerfile.parse_file(str(REPO / "Dockerfile")))


def test_the_image_starts_from_an_official_pytorch_cuda_runtime():
    (base,) = [c for c in instructions() if c.cmd == "FROM"]
    image = base.value[0]
    assert image.startswith("pytorch/pytorch:")
    assert "cuda" in image and image.endswith("-runtime")


def test_the_container_runs_as_a_non_root_user():
    users = [c.value[0] for c in instructions() if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")
    # The user is created before it is switched to.
    created = [c for c in instructions() if c.cmd == "RUN" and "useradd" in c.value[0] and users[-1] in c.value[0]]
    assert created


def test_the_entry_point_is_train_py_in_exec_form():
    (entry,) = [c for c in instructions() if c.cmd == "ENTRYPOINT"]
    assert entry.json and list(entry.value) == ["python", "train.py"]


def test_data_and_outputs_are_volumes_and_the_project_is_installed():
    volumes = [v for c in instructions() if c.cmd == "VOLUME" for v in c.value]
    assert "/data" in volumes and "/app/outputs" in volumes
    runs = " ".join(c.value[0] for c in instructions() if c.cmd == "RUN")
    assert "pip install ." in runs
    copied = {c.value[0] for c in instructions() if c.cmd == "COPY"}
    assert {"train.py", "conf", "alexnet"} <= copied
