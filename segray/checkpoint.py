"""Self-describing checkpoint directories: the weights and the config that built them.

CKPT/model.pt         state_dict only (loads with torch.load(..., weights_only=True))
CKPT/config.yaml      the full resolved config; loading rebuilds the architecture from it
CKPT/metrics.json     val_dice, val_iou, val_loss, epoch, ... of the epoch it was taken at
CKPT/train_state.pt   optimizer, scheduler, scaler, epoch, history (for --resume; optional)
CKPT/history.json     the per-epoch rows up to this checkpoint (training checkpoints; small)

An ensemble checkpoint (`segray.inference.write_ensemble`) has no model.pt of its own:

ENS/ensemble.json     {"format": "segray-ensemble", "members": ["members/<name>", ...], ...}
ENS/config.yaml       the first member's config with the ensemble's inference settings
ENS/members/<name>/   a checkpoint directory per member (model.pt, config.yaml, metrics.json)

A checkpoint may live on object storage: `fetch_checkpoint` gives a local directory, fetching
only what inference needs. There a published checkpoint (``best/``) is a pointer and its
versions (`segray.storage.publish_folder`): readers follow ``current.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segray.config import Config, load_config
from segray.storage import POINTER, is_uri, resolve_published, with_retries

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"  # the per-epoch table, small: read without the optimizer state
INFERENCE_FILES = (MODEL_FILE, CONFIG_FILE, METRICS_FILE)  # what predicting needs
ENSEMBLE_FILE = "ensemble.json"  # marks an ensemble checkpoint directory

__all__ = [
    "CheckpointError",
    "build_model",
    "download_checkpoint",
    "ensemble_members",
    "fetch_checkpoint",
    "load_history",
    "load_checkpoint_config",
    "load_model",
    "load_train_state",
    "model_id",
    "save_checkpoint",
    "unwrap",
]


class CheckpointError(FileNotFoundError):
    """A path that is not a usable segray checkpoint directory."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def build_model(cfg: Config, *, pretrained: bool | None = None) -> nn.Module:
    """Build the model a config describes (``pretrained`` overrides ``model.pretrained``)."""
    from segray.models import create_model

    kwargs = cfg.model.kwargs(cfg.num_classes)
    if pretrained is not None and "pretrained" in kwargs:
        kwargs["pretrained"] = pretrained
    return create_model(cfg.model.name, **kwargs)


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    config: Config,
    metrics: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint directory (created; existing files of the same names replaced).

    ``history`` (the per-epoch rows so far) goes to a small file of its own, so that readers of
    the table never fetch the optimizer state (about 0.9 GB for a ResNet50-U-Net's Adam)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch.save(state, directory / MODEL_FILE)
    config.save(directory / CONFIG_FILE)
    (directory / METRICS_FILE).write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True))
    if train_state is not None:
        torch.save(train_state, directory / STATE_FILE)
    if history is not None:
        (directory / HISTORY_FILE).write_text(json.dumps(_jsonable(history)))
    return directory


def ensemble_members(directory: str | Path) -> list[Path] | None:
    """The member directories of an ensemble checkpoint, or None for a single checkpoint."""
    directory = Path(directory)
    manifest = directory / ENSEMBLE_FILE
    if not manifest.is_file():
        return None
    return [directory / m for m in _members(manifest.read_bytes(), directory)]


def _members(manifest: bytes, where: object) -> list[str]:
    try:
        members = json.loads(manifest)["members"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{where}: {ENSEMBLE_FILE} has no members list") from None
    if not members or any(not isinstance(m, str) or ".." in m.split("/") for m in members):
        raise CheckpointError(f"{where}: {ENSEMBLE_FILE}: members must be relative folder names")
    return members


def _check(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    if (directory / ENSEMBLE_FILE).is_file():
        if not (directory / CONFIG_FILE).is_file():
            raise CheckpointError(f"{directory}: ensemble checkpoint without {CONFIG_FILE}")
        return directory
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: not a segray checkpoint (no {name})")
    return directory


def load_checkpoint_config(directory: str | Path) -> Config:
    return load_config(_check(directory) / CONFIG_FILE)


def load_model(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config]:
    """Rebuild the architecture from ``config.yaml`` and load ``model.pt`` (weights only), eval mode."""
    directory = _check(directory)
    if (directory / ENSEMBLE_FILE).is_file():
        raise CheckpointError(
            f"{directory}: an ensemble checkpoint ({ENSEMBLE_FILE}); load it with "
            "segray.inference.segmenter.load_segmenter, or load_model one of its members/"
        )
    cfg = load_checkpoint_config(directory)
    model = build_model(cfg, pretrained=False)  # the weights come from the file, not the network
    state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def load_history(directory: str | Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a training checkpoint (older checkpoints: from the train state)."""
    path = Path(directory) / HISTORY_FILE
    if path.is_file():
        return json.loads(path.read_text())
    state = load_train_state(directory)
    return list(state.get("history", [])) if state else []


def fetch_checkpoint(where: str | Path, names: Sequence[str] = INFERENCE_FILES) -> Path:
    """A local directory with the checkpoint ``where`` (a path, or any URI `segray.storage`
    reads): a local path as it is; from object storage only ``names`` are downloaded, once per
    process (the optimizer state that a training checkpoint also holds is left where it is)."""
    text = str(where)
    if is_uri(text):
        return _fetch(text.rstrip("/"), tuple(names))
    local = Path(text.removeprefix("file://"))
    if (local / POINTER).is_file():  # a folder published on an object store, copied here
        return Path(resolve_published(local).path)
    return local


@functools.cache
def _fetch(uri: str, names: tuple[str, ...]) -> Path:
    return download_checkpoint(uri, Path(tempfile.mkdtemp(prefix="segray-ckpt-")), names)


def download_checkpoint(where: str | Path, dst: Path, names: Sequence[str]) -> Path:
    """Copy the files ``names`` of the checkpoint ``where`` (a path or a URI) into the local
    folder ``dst`` (created); a missing optional file is skipped. Returns ``dst``.

    An ensemble checkpoint (no model.pt, an ensemble.json) is copied whole: its manifest,
    config and metrics, and ``names`` of every member. A folder published on an object store
    (`segray.storage.publish_folder`) is read from the version its pointer names."""
    src = resolve_published(where)
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            data = with_retries(src.join(name).read_bytes, what="read checkpoint")
        except FileNotFoundError:
            if name == MODEL_FILE and _download_ensemble(src, where, dst, names):
                return dst
            if name in (MODEL_FILE, CONFIG_FILE):
                raise CheckpointError(f"{where}: not a segray checkpoint (no {name})") from None
            continue
        except OSError as e:
            raise CheckpointError(f"{where}: cannot read {name} ({e})") from None
        (dst / name).write_bytes(data)
    return dst


def _download_ensemble(src: Any, where: str | Path, dst: Path, names: Sequence[str]) -> bool:
    """`download_checkpoint` of an ensemble: False when ``src`` is not one."""
    try:
        manifest = with_retries(src.join(ENSEMBLE_FILE).read_bytes, what="read checkpoint")
    except FileNotFoundError:
        return False
    members = _members(manifest, where)
    for name in (CONFIG_FILE, METRICS_FILE):
        try:
            (dst / name).write_bytes(
                with_retries(src.join(name).read_bytes, what="read checkpoint")
            )
        except FileNotFoundError:
            if name == CONFIG_FILE:
                raise CheckpointError(
                    f"{where}: ensemble checkpoint without {CONFIG_FILE}"
                ) from None
    for member in members:
        download_checkpoint(src.join(member).uri, dst / member, names)
    (dst / ENSEMBLE_FILE).write_bytes(manifest)  # last: a partial copy is not an ensemble
    return True


def model_id(directory: str | Path) -> str:
    """Content hash of the weights and the config: the provenance of every prediction
    (of an ensemble: its manifest and config, and every member's weights and config)."""
    directory = _check(directory)
    h = hashlib.sha256()
    members = ensemble_members(directory)
    files = [directory / n for n in (MODEL_FILE, CONFIG_FILE)]
    if members is not None:
        files = [directory / ENSEMBLE_FILE, directory / CONFIG_FILE]
        files += [_check(m) / n for m in members for n in (MODEL_FILE, CONFIG_FILE)]
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj
