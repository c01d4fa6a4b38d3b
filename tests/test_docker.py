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
    assert "pip install --no-deps ." in runs  # the package, after its dependencies
    copied = {c.value[0] for c in instructions() if c.cmd == "COPY"}
    assert {"train.py", "conf", "alexnet"} <= copied


def test_dependencies_are_installed_from_pyproject_alone_before_the_code_is_copied():
    # "so that editing the code does not reinstall them": the layer that installs them
    # must come before any COPY of the code.
    steps = instructions()
    install = next(i for i, c in enumerate(steps) if c.cmd == "RUN" and "pip install -r" in c.value[0])
    copied_before = [c.value[0] for c in steps[:install] if c.cmd == "COPY"]
    assert copied_before == ["pyproject.toml"]
    code = next(i for i, c in enumerate(steps) if c.cmd == "COPY" and c.value[0] == "alexnet")
    package = next(i for i, c in enumerate(steps) if c.cmd == "RUN" and "pip install --no-deps ." in c.value[0])
    assert install < code < package


def requirements(extras: str, tmp_path) -> list[str]:
    """What the Dockerfile's dependency layer would install, run here on the real pyproject.toml."""
    import shutil
    import subprocess
    import sys

    (run,) = [c.value[0] for c in instructions() if c.cmd == "RUN" and "pip install -r" in c.value[0]]
    script = run.split(">", 1)[0].strip().replace("python -c", f"{sys.executable} -c", 1)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env={"EXTRAS": extras, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.splitlines()


def test_the_dependency_layer_installs_the_projects_requirements_and_the_extras_asked_for(tmp_path):
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert requirements("", tmp_path) == project["dependencies"]
    assert requirements("imagenet", tmp_path) == project["dependencies"] + project["optional-dependencies"]["imagenet"]


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().lstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern matches from the context root; ``**`` spans folders; a
    matched folder excludes everything in it."""
    import re

    def regex(pattern: str) -> str:
        out = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return out.replace(r"\?", "[^/]")

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(re.fullmatch(regex(p), prefix) for p in patterns for prefix in prefixes)


def test_the_build_context_leaves_out_runs_caches_environments_and_history():
    patterns = dockerignore()
    for path in (".git/config", ".venv/bin/python", "outputs/2026-12-01/12-00-00/checkpoints/last.ckpt",
                 "multirun/ablation_cifar/baseline-seed0/results.json", "alexnet/__pycache__/config.cpython-311.pyc",
                 ".pytest_cache/v/cache/lastfailed", "lightning_logs/version_0/events"):
        assert ignored(path, patterns), path


def test_the_build_context_keeps_every_file_the_dockerfile_copies():
    import subprocess

    patterns = dockerignore()
    sources = [c.value[0] for c in instructions() if c.cmd == "COPY"]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    copied = [f for f in tracked if any(f == s or f.startswith(s.rstrip("/") + "/") for s in sources)]
    assert "alexnet/data/folder.py" in copied and "conf/config.yaml" in copied  # alexnet/data is not the root data/
    assert [f for f in copied if ignored(f, patterns)] == []
