"""The config tree's root: `Config` (every section, cross-section rules, YAML output) and the
one-line messages of validation errors.

One file per section group, each field documented where it is declared: `segray.config.data`,
`segray.config.model`, `segray.config.train` (loss, optim, train), `segray.config.tune` (tune,
tracking) and `segray.config.segment`; loading is `segray.config.load`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from segray.config.base import ConfigError, Section
from segray.config.data import DataConfig
from segray.config.model import ModelConfig
from segray.config.segment import SegmentConfig
from segray.config.train import LossConfig, OptimConfig, TrainConfig
from segray.config.tune import TrackingConfig, TuneConfig
from segray.secrets import scrub

__all__ = ["Config", "format_errors"]


# --------------------------------------------------------------------------- root
class Config(Section):
    """The whole resolved configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _cross(self) -> Config:
        binary = len(self.data.classes) == 2
        if self.loss.name == "bce" and not binary:
            raise ValueError(
                f"loss.name='bce' needs 2 classes, got {len(self.data.classes)}: use 'ce'"
            )
        if self.loss.name == "ce" and binary:
            raise ValueError("loss.name='ce' is for more than 2 classes: use 'bce' for binary")
        # (synthetic data writes its own masks; prepare_data picks their mode)
        if (
            self.data.mask_mode in ("threshold", "trimap")
            and not binary
            and self.data.source != "synthetic"
        ):
            raise ValueError(
                f"data.mask_mode={self.data.mask_mode!r} makes binary masks but data.classes has "
                f"{len(self.data.classes)} names: use 'index' or 'values'"
            )
        foreground = len(self.data.classes) - 1
        for key in ("thresholds", "min_component_px", "fill_holes", "keep_largest"):
            v = getattr(self.segment, key)
            if isinstance(v, list) and len(v) != foreground:
                raise ValueError(
                    f"segment.{key} has {len(v)} values but data.classes has {foreground} "
                    f"foreground classes: give {foreground} values"
                    + ("" if key == "thresholds" else " (or one value for all)")
                )
        for name in ("mean", "std"):
            v = getattr(self.data, name)
            if v is not None and len(v) not in (1, self.model.in_channels):
                raise ValueError(
                    f"data.{name} has {len(v)} values but model.in_channels={self.model.in_channels}"
                )
        return self

    # -- derived -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Logit channels: 1 for a binary task (sigmoid), K for K > 2 classes (softmax)."""
        k = len(self.data.classes)
        return 1 if k == 2 else k

    # -- io ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The config as written next to every output and printed: credentials scrubbed (the
        user-info of URIs, `segray.secrets`); the live config keeps them."""
        return yaml.safe_dump(scrub(self.to_dict()), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Validate a (possibly partial) dict; errors become one-line ConfigErrors."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise ConfigError(format_errors(e, data)) from None


# --------------------------------------------------------------------------- error messages
# Keys of earlier versions: what to write instead.
_RENAMED = {
    "train.amp": "replaced by train.precision: auto | fp32 | bf16 | fp16 (amp 'off' is fp32)",
    "segment.amp": "replaced by segment.precision: auto | fp32 | bf16 | fp16 (amp false is fp32)",
}


def format_errors(err: ValidationError, data: Mapping[str, Any]) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(e["loc"][:-1])
            msg = _RENAMED.get(loc) or f"unknown key; valid keys here: {', '.join(valid)}"
        value = _lookup(data, e["loc"])
        if loc and not isinstance(value, Mapping):  # a field: name its value
            lines.append(f"{loc}={_short(value)}: {msg}")
        elif loc:  # a whole section's rule: the message names the keys
            lines.append(f"{loc}: {msg}")
        else:
            lines.append(msg)
    head = "invalid config: " if len(lines) == 1 else "invalid config:\n  "
    return head + "\n  ".join(lines)


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        ann = model.model_fields.get(str(part))
        if ann is None or not (
            isinstance(ann.annotation, type) and issubclass(ann.annotation, BaseModel)
        ):
            return []
        model = ann.annotation
    return list(model.model_fields)


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    node = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return "<default>"
    return node


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
