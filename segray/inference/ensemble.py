"""Ensemble checkpoints: K member checkpoints that load and predict as one (mean of probabilities).

    write_ensemble(["cv/fold0/best", "cv/fold1/best"], "cv/ensemble",
                   inference_settings={"tta": "flip", "thresholds": [0.45], "keep_largest": True})
    seg = load_segmenter("cv/ensemble")          # like any checkpoint

Layout (`segray.checkpoint` reads it; `fetch_checkpoint` fetches it whole from object storage):

    ENS/ensemble.json         {"format": "segray-ensemble", "version": 1,
                               "members": ["members/<name>", ...], "inference": {...}}
    ENS/config.yaml           the first member's config with the ``segment.*`` inference
                              settings applied: what every consumer (predict, evaluate,
                              segment, export) applies
    ENS/metrics.json          optional (e.g. cross-validation scores)
    ENS/members/<name>/       a normal checkpoint directory (model.pt, config.yaml, metrics.json)

Members must agree on the classes and the input channels; each keeps its own architecture and
normalisation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segray.checkpoint import (
    CONFIG_FILE,
    ENSEMBLE_FILE,
    INFERENCE_FILES,
    METRICS_FILE,
    CheckpointError,
    download_checkpoint,
    ensemble_members,
    load_checkpoint_config,
    load_model,
)
from segray.config import Config, apply_overrides
from segray.storage import published_folder

__all__ = ["ENSEMBLE_FORMAT", "INFERENCE_KEYS", "load_members", "write_ensemble"]

ENSEMBLE_FORMAT = "segray-ensemble"
# The segment.* settings an ensemble carries (chosen by cross-validation, or given).
INFERENCE_KEYS = (
    "tta",
    "threshold",
    "thresholds",
    "min_component_px",
    "fill_holes",
    "keep_largest",
)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def write_ensemble(
    members: Sequence[str | Path],
    output: str | Path,
    *,
    inference_settings: Mapping[str, Any] | None = None,
    names: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write an ensemble checkpoint directory at ``output`` (local; replaced whole if it
    exists, `segray.storage.publish_folder`).

    Args:
        members: checkpoint directories (paths or URIs); an ensemble member is refused.
        output: the ensemble directory to write.
        inference_settings: ``segment.*`` settings of `INFERENCE_KEYS` (with or without the
            ``segment.`` prefix), e.g. `segray.inference.choose_postprocessing`'s ``settings``.
        names: member folder names (default ``member0``, ``member1``, ...).
        metrics: written to ``metrics.json``.

    Raises:
        CheckpointError: a member that is not a checkpoint, or members with different classes
            or input channels.
        ConfigError: settings the config rejects (e.g. thresholds of the wrong length).
    """
    if not members:
        raise ValueError("an ensemble needs at least one member checkpoint")
    names = _member_names(len(members), names)
    settings = {k.removeprefix("segment."): v for k, v in (inference_settings or {}).items()}
    unknown = sorted(set(settings) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(
            f"unknown inference setting {unknown[0]!r}; valid: {', '.join(INFERENCE_KEYS)}"
        )
    output = Path(output)
    with published_folder(output) as tmp:
        configs = []
        for member, name in zip(members, names, strict=True):
            dst = tmp / "members" / name
            download_checkpoint(member, dst, INFERENCE_FILES)
            if (dst / ENSEMBLE_FILE).is_file():
                raise CheckpointError(f"{member}: an ensemble cannot be a member of an ensemble")
            configs.append(load_checkpoint_config(dst))
        _check_compatible(members, configs)
        overrides: dict[str, Any] = {f"segment.{k}": v for k, v in settings.items()}
        # Fold models of a cross-validation: the ensemble trained on every fold, so none of
        # them is its validation split (its test split is still held out).
        overrides["data.fold"] = None
        config = apply_overrides(configs[0], overrides)
        config.save(tmp / CONFIG_FILE)
        (tmp / METRICS_FILE).write_text(json.dumps(dict(metrics or {}), indent=2, sort_keys=True))
        manifest = {
            "format": ENSEMBLE_FORMAT,
            "version": 1,
            "members": [f"members/{n}" for n in names],
            "sources": [str(m) for m in members],
            "inference": {k: getattr(config.segment, k) for k in INFERENCE_KEYS},
        }
        (tmp / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2))
    return output


def _member_names(count: int, names: Sequence[str] | None) -> list[str]:
    """The member folder names: ``names`` checked (unique, plain), or member0, member1, ..."""
    names = list(names) if names is not None else [f"member{i}" for i in range(count)]
    if len(names) != count or len(set(names)) != len(names):
        raise ValueError(f"need {count} unique member names, got {names}")
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"member name {bad[0]!r}: use letters, digits, '_', '-' and '.'")
    return names


def _check_compatible(members: Sequence[str | Path], configs: Sequence[Config]) -> None:
    """Members must agree with the first on the classes, input channels and intensity range."""
    first = configs[0]
    for member, cfg in zip(members, configs, strict=True):
        if (
            cfg.data.classes != first.data.classes
            or cfg.model.in_channels != first.model.in_channels
        ):
            raise CheckpointError(
                f"{member}: classes {cfg.data.classes} / in_channels {cfg.model.in_channels} "
                f"differ from the first member's ({first.data.classes} / {first.model.in_channels})"
            )
        if cfg.data.intensity_range != first.data.intensity_range:  # images decode once
            raise CheckpointError(
                f"{member}: data.intensity_range {cfg.data.intensity_range} differs from "
                f"the first member's ({first.data.intensity_range})"
            )


def load_members(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[list[nn.Module], list[Config], Config]:
    """(member models, member configs, the directory's config) of a local checkpoint
    directory; a single checkpoint is an ensemble of one."""
    members = ensemble_members(directory)
    if members is None:
        model, config = load_model(directory, device)
        return [model], [config], config
    loaded = [load_model(m, device) for m in members]
    return [m for m, _ in loaded], [c for _, c in loaded], load_checkpoint_config(directory)
