"""The command line as a user meets it: help, listings, resolved config, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segray.cli import main
from segray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segray.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("models", "synth", "config", "train", "evaluate", "export"):
        assert cmd in out.stdout


def test_models_lists_registry_with_encoders(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("unet", "resnet_unet", "deeplabv3", "resnet18", "resnet34", "resnet50"):
        assert name in out
    assert " M " in out  # parameter counts


def test_config_show_prints_resolved_yaml(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 0.02}\n")
    assert main(["config", "show", "--config", str(f), "loss.bce_weight=0.25"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == 0.02 and shown["loss"]["bce_weight"] == 0.25
    assert shown["model"]["dilation_rates"] == [1, 6, 12, 18]


def test_bad_override_is_one_line_exit_2():
    out = run_cli("config", "show", "loss.bce_weight=3")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "loss.bce_weight=3" in out.stderr and "less than or equal to 1" in out.stderr


def test_synth_writes_dataset(tmp_path):
    assert main(["synth", "--output", str(tmp_path / "s"), "--num", "4", "--size", "48"]) == 0
    assert len(list((tmp_path / "s" / "images").iterdir())) == 4
    assert len(list((tmp_path / "s" / "masks").iterdir())) == 4


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.num_classes >= 1


def test_inspect_writes_its_fingerprint_only_where_output_says(tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data = ["data.synthetic.num=8", "data.synthetic.size=32"]
    assert main(["inspect", *data]) == 0
    assert list(cwd.iterdir()) == [] and "fingerprint ->" not in capsys.readouterr().out
    assert main(["inspect", *data, "--output", str(tmp_path / "fp")]) == 0
    assert (tmp_path / "fp" / "fingerprint.json").is_file() and list(cwd.iterdir()) == []
