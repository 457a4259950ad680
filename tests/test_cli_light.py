"""The command line stays light: help without torch or Ray, bad input caught by a base class
that imports nothing."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from segray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI's main in a fresh interpreter, then reports which heavy packages got imported.
PROBE = """
import sys
from segray.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("heavy:", ",".join(m for m in ("torch", "ray") if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def _commands() -> list[list[str]]:
    """Every command and sub-command the parser knows, as argv prefixes."""
    found: list[list[str]] = []

    def walk(parser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return found


COMMANDS = _commands()


def test_the_walk_finds_every_command():
    names = {" ".join(c) for c in COMMANDS}
    expected = {"train", "tune", "cv", "evaluate", "export", "segment", "auto", "demo"}
    expected |= {"report", "inspect", "models", "synth", "config", "config show"}
    assert expected <= names


@pytest.mark.parametrize("argv", [[], *COMMANDS], ids=lambda c: " ".join(c) or "segray")
def test_help_imports_neither_torch_nor_ray(argv: list[str]):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: segray {' '.join(argv)}".rstrip())
    assert "heavy: \n" in done.stderr, done.stderr  # nothing after the colon


def test_the_error_base_imports_nothing_from_segray():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, segray.errors; "
            "print(sorted(m for m in sys.modules if m.startswith('segray.')))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['segray.errors', 'segray.version']"


def test_every_bad_input_error_is_a_user_error():
    from segray.cluster import ResourceError, UnreachableClusterError
    from segray.config import ConfigError
    from segray.data.folder import DatasetError
    from segray.data.io import ImageError
    from segray.engine import NonFiniteLossError
    from segray.errors import USER_ERRORS, UserError
    from segray.export import ExportError
    from segray.models import PretrainedWeightsError
    from segray.precision import PrecisionError
    from segray.report import ReportError

    bad_input = [ConfigError, PrecisionError, DatasetError, ImageError, ExportError]
    bad_input += [PretrainedWeightsError, NonFiniteLossError, ResourceError]
    bad_input += [UnreachableClusterError, ReportError]
    assert [e for e in bad_input if not issubclass(e, USER_ERRORS)] == []
    assert all(issubclass(e, UserError) for e in bad_input)
    # what code catches by the builtin base still catches them
    assert issubclass(ConfigError, ValueError) and issubclass(DatasetError, ValueError)
    assert issubclass(ImageError, ValueError) and issubclass(ReportError, ValueError)
    assert issubclass(ExportError, RuntimeError) and issubclass(ResourceError, RuntimeError)
    assert issubclass(PretrainedWeightsError, RuntimeError)
    assert issubclass(NonFiniteLossError, FloatingPointError)
    assert FileNotFoundError in USER_ERRORS and FileExistsError in USER_ERRORS


def test_a_user_error_is_one_line_and_exit_2(capsys, monkeypatch):
    from segray.cli import main
    from segray.commands import models
    from segray.errors import UserError

    def refuse(args):
        raise UserError("data/x.png: not an image")

    monkeypatch.setattr(models, "run", refuse)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "segray: error: data/x.png: not an image\n"
