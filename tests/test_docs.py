"""Every `python train.py ...` command that the documentation shows composes and validates.

README.md, docs/*.md and the comments of conf/**/*.yaml show commands for
users to copy. Each is composed as Hydra composes it for train.py (hydra.*
keys included; a sweep's first combination of values), then checked by
:func:`alexnet.config.validate`, without a run: a renamed key, an option
that is gone, a `+` on a key that is now listed, or a value out of range
fails here, naming the file and the line, rather than on a user's machine.
"""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from alexnet.config import validate

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "conf").rglob("*.yaml"))]
# A command at the start of a line of a code block or a comment: "    python train.py ...",
# "    srun --kill-on-bad-exit=1 python train.py ...", "#   e.g. python train.py ..."; prose that mentions one is left
# alone, and so is a synopsis ("python train.py [group=option ...]").
COMMAND = re.compile(r"^\s*(?:#\s*)?(?:e\.g\.\s+)?(?:srun(?:\s+--?[\w-]+(?:=\S+)?)*\s+)?python train\.py(?=\s|$)(?P<args>.*)$")
SYNOPSIS = "...]"
SHELL_VARIABLE = re.compile(r'^\s*(?P<name>[A-Z_]+)="(?P<value>[^"]*)"\s*$')


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file:line, the command's arguments) for every documented train.py command."""
    commands = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        variables: dict[str, str] = {}
        i = 0
        while i < len(lines):
            start = i
            text = lines[i]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):  # a shell continuation
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].lstrip("# ")
            i += 1
            if found := SHELL_VARIABLE.match(text):  # COMMON="..." before the commands that use $COMMON
                variables[found["name"]] = found["value"]
                continue
            if not (found := COMMAND.match(text)) or SYNOPSIS in found["args"]:
                continue
            args = found["args"]
            for name, value in variables.items():
                args = args.replace(f"${name}", value)
            where = f"{path.relative_to(REPO)}:{start + 1}"
            commands.append((where, shlex.split(args, comments=True)))
    return commands


def first_of_sweep(args: list[str]) -> list[str]:
    """``-m`` dropped, and each swept key at its first value (``seed=0,1`` -> ``seed=0``)."""
    overrides = OverridesParser.create().parse_overrides([a for a in args if a != "-m"])
    return [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
            for o in overrides]


COMMANDS = documented_commands()


def test_the_documentation_shows_the_commands_users_run():
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert {"README.md", "docs/REPRODUCTION.md", "conf/experiment/paper_imagenet.yaml"} <= where
    assert len(COMMANDS) >= 30
    assert any("ckpt_path=last" in args for _, args in COMMANDS)
    assert any(a.startswith("hydra/launcher=submitit_slurm") for _, args in COMMANDS for a in args)


@pytest.fixture(scope="module")
def hydra_conf():
    """Hydra initialised once on conf/ for the module (as train.py's @hydra.main does it once)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3", job_name="docs"):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("where, args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_composes_and_validates(where, args, hydra_conf):
    overrides = first_of_sweep(args)
    cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    if any("${hydra:" in o for o in overrides):
        return  # resolved only inside a Hydra job (the launcher's values): composing is the check
    validate(cfg)
