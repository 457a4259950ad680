"""The config tree: one pydantic class per section, each field documented where it is declared.

Every section forbids unknown keys and re-validates assignments; cross-section rules live in
`Config._cross`. The ``segment`` section is `segray.config.segment`'s; loading is
`segray.config.load`'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from segray.config.base import ConfigError, Section
from segray.config.segment import SegmentConfig
from segray.secrets import scrub

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SegmentConfig",
    "Section",
    "SynthConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
]


# --------------------------------------------------------------------------- data
class SynthConfig(Section):
    """The built-in synthetic dataset (``data.source: synthetic``); classes come from data.classes."""

    num: int = Field(64, ge=4, description="number of image/mask pairs to generate")
    size: int = Field(96, ge=32, le=4096, description="side of the square images, pixels")
    seed: int = Field(0, description="generator seed: same seed, same pixels")


class DataConfig(Section):
    """Where images and masks come from, how masks map to classes, splits and augmentation."""

    source: Literal["synthetic", "folder", "pet"] = Field(
        "synthetic",
        description="synthetic: generated on first use; folder: ROOT/images + ROOT/masks matched "
        "by stem; pet: the Oxford-IIIT Pet layout (images/, annotations/trimaps/)",
    )
    root: str | None = Field(
        None,
        description="dataset root (any relative path is resolved against the working directory "
        "before workers start); synthetic: where to generate (default: a cache dir)",
    )
    images_dir: str = Field("images", description="folder source: image folder under root")
    masks_dir: str = Field("masks", description="folder source: mask folder under root")
    classes: list[str] = Field(
        ["background", "foreground"],
        description="class names, background first; 2 names = binary (one sigmoid logit)",
    )
    mask_suffix: str | None = Field(
        None,
        description="folder source: mask name = image name + this suffix (e.g. _mask); "
        "x_mask and x_segmentation are matched without it",
    )
    mask_mode: Literal["auto", "threshold", "index", "values", "trimap", "colors"] = Field(
        "auto",
        description="auto: chosen from the dataset's mask values before training (0/1, 0/255 "
        "and near-binary 0/255 with < 1% in-between edge pixels, 0..K-1, Pet trimaps, "
        "mask_colors; see `segray inspect`); threshold: value > mask_threshold is foreground; "
        "index: pixel value is the class index; values: mask_values maps pixel values to "
        "classes; trimap: Oxford Pet; colors: mask_colors maps colours to classes",
    )
    mask_threshold: int = Field(127, ge=0, le=65534, description="threshold mode cut-off")
    mask_values: dict[int, int] | None = Field(
        None, description="values mode: pixel value -> class index; other values are ignored"
    )
    mask_colors: dict[str, int] | None = Field(
        None,
        description="colour masks: colour ('#rrggbb' or 'r,g,b') -> class index, e.g. "
        "{'#000000': 0, '#ff0000': 1}; every colour in a mask must be listed (mask_mode: "
        "auto or colors)",
    )
    trimap_uncertain: Literal["foreground", "ignore", "random"] = Field(
        "foreground",
        description="trimap class 3 (border): foreground, ignored, or a seeded coin per image",
    )
    ignore_index: int = Field(255, ge=0, description="target value of pixels that never count")
    split: list[float] = Field(
        [0.7, 0.15, 0.15],
        description="train/val/test fractions: stems (or groups) in a seeded hash order, cut "
        "exactly at these fractions (`segray.data.split`); every run lists them in splits.json",
    )
    split_seed: int = Field(0, description="seed of the stem-hash order of the split")
    split_ids: dict[Literal["train", "val", "test"], list[str]] | None = Field(
        None, description="explicit stems per split; overrides `split` when set"
    )
    folds: int | None = Field(
        None,
        ge=2,
        description="k-fold cross-validation (`segray cv` sets it): train + val of the split "
        "above are dealt into this many folds; test stays held out",
    )
    fold: int | None = Field(
        None, ge=0, description="with `folds`: the fold used for validation, the rest train"
    )
    group_by: str | None = Field(
        None,
        description="regex over file stems: stems with the same match (its first group if it "
        "has one) stay in one split (train, val or test) and one fold, e.g. '^(case_\\d+)' "
        "keeps a volume's slices together",
    )
    image_size: int = Field(256, ge=32, description="train crop/resize side; eval resize side")
    train_transform: Literal["random_crop", "resize"] = Field(
        "random_crop", description="how training images reach image_size"
    )
    eval_transform: Literal["none", "resize", "pad"] = Field(
        "none",
        description="none: full resolution; resize: to image_size; pad: up to image_size with "
        "ignored mask pixels",
    )
    hflip: float = Field(0.5, ge=0, le=1, description="p of a horizontal flip (train)")
    vflip: float = Field(0.0, ge=0, le=1, description="p of a vertical flip (train)")
    rotate90: float = Field(0.0, ge=0, le=1, description="p of a random 90-degree rotation")
    brightness_contrast: float = Field(0.2, ge=0, le=1, description="p of brightness/contrast")
    intensity_range: Literal["auto", "type"] | list[float] | list[list[float]] = Field(
        "auto",
        description="how image values map to the network's 0..255 before normalisation: type "
        "= by the value type's range (16 bits / 257, floats as [0, 1]); [lo, hi] (or one per "
        "band) = lo..hi linearly, clipped; auto = the dataset's 0.5/99.5 percentiles per band "
        "when images hold more than 8 bits, else type (resolved from the fingerprint and saved "
        "with every checkpoint; segray.data.intensity)",
    )
    mean: list[float] | None = Field(
        None,
        description="per-channel normalisation mean in [0, 1]; default ImageNet for 3 "
        "channels, 0.5 for 1, ImageNet's channel average (0.449) for N",
    )
    std: list[float] | None = Field(None, description="per-channel normalisation std")
    batch_size: int = Field(8, ge=1, description="training batch size per worker")
    samples_per_image: int = Field(
        1,
        ge=1,
        description="training samples (random crops) per image per epoch: few large images "
        "make short epochs, whose evaluation and checkpoint then dominate",
    )
    eval_batch_size: int | None = Field(None, ge=1, description="default: batch_size")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per worker")
    synthetic: SynthConfig = Field(default_factory=SynthConfig)

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError("need at least 2 class names, background first (2 = binary)")
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @field_validator("mask_colors")
    @classmethod
    def _colors(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is None:
            return v
        out: dict[str, int] = {}
        for colour, index in v.items():
            text = str(colour).strip().strip("()[]")
            parts = [p for p in re.split(r"[,\s]+", text) if p]
            if re.fullmatch(r"#?[0-9a-fA-F]{6}", text):
                name = "#" + text.lstrip("#").lower()
            elif len(parts) == 3 and all(p.isdigit() and int(p) < 256 for p in parts):
                name = "#" + "".join(f"{int(p):02x}" for p in parts)
            else:
                raise ValueError(f"colour {colour!r}: expected '#rrggbb' or 'r,g,b' (0-255 each)")
            if name in out:
                raise ValueError(f"colour {colour!r} is listed twice (as {name})")
            out[name] = index
        return out

    @field_validator("split")
    @classmethod
    def _split(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(f < 0 for f in v) or v[0] <= 0 or abs(sum(v) - 1) > 1e-6:
            raise ValueError("need 3 fractions [train, val, test], >= 0, train > 0, summing to 1")
        return v

    @field_validator("mean", "std")
    @classmethod
    def _norm(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(x < 0 for x in v)):
            raise ValueError("need non-negative values: one, or one per input channel")
        return v

    @field_validator("intensity_range")
    @classmethod
    def _intensity_range(cls, v: Any) -> Any:
        from segray.data.intensity import intensity_ranges

        intensity_ranges(v)  # [lo, hi] with lo < hi, or one such pair per band
        return v

    @model_validator(mode="after")
    def _modes(self) -> DataConfig:
        if self.mask_mode == "values" and not self.mask_values:
            raise ValueError("mask_mode 'values' needs data.mask_values (pixel value -> class)")
        if (self.mask_mode == "colors") != bool(self.mask_colors) and self.mask_mode != "auto":
            raise ValueError(
                "data.mask_colors is read by mask_mode 'colors' (or auto) only"
                if self.mask_colors
                else "mask_mode 'colors' needs data.mask_colors (colour -> class)"
            )
        if self.source == "folder" and not self.root:
            raise ValueError("source 'folder' needs data.root (a folder with images/ and masks/)")
        if self.source == "pet" and not self.root:
            raise ValueError("source 'pet' needs data.root (the Oxford-IIIT Pet folder)")
        if self.std is not None and any(x == 0 for x in self.std):
            raise ValueError("data.std must be > 0")
        if self.fold is not None and (self.folds is None or self.fold >= self.folds):
            raise ValueError(f"data.fold {self.fold} needs data.folds > {self.fold}")
        if self.group_by is not None:
            try:
                re.compile(self.group_by)
            except re.error as e:
                raise ValueError(f"data.group_by {self.group_by!r} is not a regex: {e}") from None
        return self


# --------------------------------------------------------------------------- model
class ModelConfig(Section):
    """Which architecture and its hyperparameters (see `segray models`)."""

    name: str = Field("resnet_unet", description="registered model name (`segray models`)")
    in_channels: int = Field(
        3,
        ge=1,
        le=64,
        description="image bands the model takes: 1 = grayscale, 3 = RGB, N = multi-band "
        "(derived by `segray auto`; a pretrained RGB stem is adapted, segray.models)",
    )
    encoder: Literal["resnet18", "resnet34", "resnet50"] = Field(
        "resnet50", description="resnet_unet: torchvision ResNet encoder"
    )
    dilation_rates: list[int] = Field(
        [1, 6, 12, 18], description="resnet_unet: dilation of each parallel atrous branch"
    )
    kernel_sizes: list[int] = Field(
        [1, 3, 3, 3], description="resnet_unet: kernel of each atrous branch (odd)"
    )
    decoder_channels: list[int] | None = Field(
        None, description="resnet_unet: 4 decoder widths; default by encoder"
    )
    atrous: bool = Field(True, description="resnet_unet: atrous decoder blocks (false = plain)")
    base_width: int = Field(64, ge=4, description="unet: channels of the first level")
    pretrained: bool = Field(False, description="load torchvision pretrained weights")
    weights_path: str | None = Field(
        None, description="local weights file for pretrained=true without network"
    )

    @field_validator("dilation_rates")
    @classmethod
    def _rates(cls, v: list[int]) -> list[int]:
        if not v or any(r < 1 for r in v):
            raise ValueError("need a non-empty list of dilation rates, each >= 1")
        return v

    @field_validator("kernel_sizes")
    @classmethod
    def _kernels(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 or k % 2 == 0 for k in v):
            raise ValueError("need a non-empty list of odd kernel sizes >= 1")
        return v

    @field_validator("decoder_channels")
    @classmethod
    def _decoder(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 4 or any(c < 1 for c in v)):
            raise ValueError("need 4 positive decoder widths (deepest first)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        from segray.models import list_models, model_kwargs

        if self.name not in list_models():
            raise ValueError(f"unknown model {self.name!r}; valid: {', '.join(list_models())}")
        if len(self.dilation_rates) != len(self.kernel_sizes):
            raise ValueError(
                f"dilation_rates {self.dilation_rates} and kernel_sizes {self.kernel_sizes} "
                "must have the same length"
            )
        accepted = model_kwargs(self.name)
        # A non-default value for a knob this model does not have is a mistake (a dump of a
        # whole config, which repeats every default, is not).
        unused = sorted(
            f
            for f in self.model_fields_set - {"name"}
            if f not in accepted and getattr(self, f) != type(self).model_fields[f].default
        )
        if unused:
            raise ValueError(
                f"model.{unused[0]} is not a parameter of model {self.name!r} "
                f"(it takes: {', '.join(sorted(k for k in accepted if k != 'num_classes'))})"
            )
        ignored = sorted(
            f
            for f in self.model_fields_set & {"dilation_rates", "kernel_sizes"}
            if not self.atrous and getattr(self, f) != type(self).model_fields[f].default
        )
        if ignored:  # the plain decoder has no atrous branches
            raise ValueError(f"model.{ignored[0]} is unused with model.atrous=false")
        return self

    def kwargs(self, num_classes: int) -> dict[str, Any]:
        """Constructor arguments for `segray.models.create_model(self.name, ...)`."""
        from segray.models import model_kwargs

        accepted = model_kwargs(self.name)
        values = self.model_dump()
        out = {k: values[k] for k in accepted if k in values}
        out["num_classes"] = num_classes
        return out


# --------------------------------------------------------------------------- loss / optim
class LossConfig(Section):
    """Training loss (`segray.losses.create_loss`)."""

    name: Literal["bce_dice", "dice", "bce", "ce"] = Field(
        "bce_dice", description="bce_dice = bce_weight*BCE + (1-bce_weight)*Dice (CE if K>2)"
    )
    bce_weight: float = Field(0.5, ge=0, le=1, description="weight of BCE/CE against Dice")
    smooth: float = Field(1.0, ge=0, description="Dice smoothing (keeps empty-empty at 1)")


class OptimConfig(Section):
    """Optimizer, learning-rate schedule and gradient clipping."""

    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 / decoupled weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    scheduler: Literal["none", "cosine", "plateau"] = Field(
        "cosine", description="cosine to min_lr over the run, or halve on a val-Dice plateau"
    )
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs before the schedule")
    min_lr: float = Field(1e-6, ge=0, description="floor of cosine / plateau")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau: LR multiplier")
    plateau_patience: int = Field(3, ge=0, description="plateau: epochs without improvement")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null = off")


# --------------------------------------------------------------------------- train
class TrainConfig(Section):
    """Distributed training: DDP workers through Ray Train."""

    epochs: int = Field(10, ge=1, description="epochs to train")
    num_workers: int = Field(2, ge=1, description="DDP workers (Ray Train workers)")
    use_gpu: bool = Field(False, description="one or more GPUs per worker, NCCL backend")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per worker when use_gpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast dtype of forward passes (segray.precision): auto = bf16 where the "
        "device runs it natively (Ampere+ GPUs; CPUs with AVX512-BF16/AMX), fp16 + GradScaler "
        "on older GPUs, else fp32; fp16 needs CUDA",
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="NHWC memory format; auto = on CUDA and oneDNN CPUs (faster there)"
    )
    sync_batchnorm: bool = Field(False, description="convert BatchNorm to SyncBatchNorm")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many epochs without a better val Dice"
    )
    seed: int = Field(0, description="seeds torch, numpy, random and the sampler")
    threshold: float = Field(0.5, gt=0, lt=1, description="binary probability threshold")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last ckpt")
    torch_threads: int | None = Field(
        None, ge=1, description="intra-op threads per worker; default: cpus_per_worker"
    )
    heap_reuse: bool = Field(
        True,
        description="glibc malloc settings on the workers (MALLOC_MMAP_MAX_=0, a high trim "
        "threshold) so large activations reuse heap pages instead of fresh zeroed mmap pages "
        "every step: measured ~8% faster CPU epochs in Ray's worker processes",
    )

    @model_validator(mode="after")
    def _fp16_needs_gpu(self) -> TrainConfig:
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision 'fp16' needs use_gpu: true; on CPUs use 'bf16' or 'fp32'")
        return self

    @model_validator(mode="after")
    def _gpu_settings(self) -> TrainConfig:
        if self.sync_batchnorm and not self.use_gpu:
            raise ValueError(
                "train.sync_batchnorm: true needs train.use_gpu: true (SyncBatchNorm runs on "
                "CUDA only); set it to false on CPU workers"
            )
        if self.use_gpu and (self.gpus_per_worker < 1 or self.gpus_per_worker % 1):
            raise ValueError(
                f"train.gpus_per_worker={self.gpus_per_worker:g} with use_gpu: a DDP worker needs "
                "a whole number of GPUs (>= 1); NCCL cannot share one GPU between workers"
            )
        return self


# --------------------------------------------------------------------------- tune
class TuneConfig(Section):
    """Hyperparameter search: Ray Tune + Optuna; each trial a DDP training."""

    num_samples: int = Field(8, ge=1, description="number of trials")
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="dotted config key -> {choice|uniform|loguniform|quniform|randint|"
        "qrandint|qloguniform: ...}",
    )
    metric: str = Field("val_dice", description="reported metric to optimise")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    searcher: Literal["optuna", "random"] = Field("optuna", description="TPE or random search")
    scheduler: Literal["asha", "none"] = Field("asha", description="early stopping of trials")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/rf per rung")
    max_epochs: int | None = Field(None, ge=1, description="ASHA max_t; default train.epochs")
    seed: int = Field(0, description="searcher seed")
    startup_trials: int | None = Field(
        None, ge=1, description="TPE's random start-up trials; default num_samples // 3 (2..10)"
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="default: cluster resources // one trial's resources"
    )
    max_failures: int = Field(1, ge=0, description="retries of a failed trial (from its ckpt)")
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="wall-clock budget of the whole search in seconds, enforced by Tune: "
        "trials still running then are stopped and keep their best checkpoint; null = none",
    )
    plateau_trials: float | None = Field(
        None,
        gt=0,
        description="stop the search once this many full trials' worth of epochs (summed over "
        "all trials) passed without a better best score; null = never",
    )


# --------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    """MLflow experiment tracking of `segray train` and `segray tune` (`segray.tracking`);
    off unless a tracking URI is set here or in $MLFLOW_TRACKING_URI."""

    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, ...); null: "
        "$MLFLOW_TRACKING_URI, and no tracking when that is unset too. Needs the mlflow extra",
    )
    experiment: str = Field("segray", min_length=1, description="MLflow experiment name")
    run_name: str | None = Field(
        None, description="name of the run (of a search: its parent run); null: a default"
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="tags set on every run this config opens"
    )


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
