"""The config `segray auto` derives from a dataset's fingerprint and the resources found.

As nnU-Net's planner does, every setting comes from the data (the fingerprint of `segray
inspect`) and the devices, and each carries the reason it was chosen, printed by
``--dry-run`` and saved in ``OUT/plan.json``:

    derived = derive_config(fp, Resources(cpus=2, gpus=0), root="data/cells")
    derived.config            # a validated Config (epochs and the search budget: `plan`)
    derived.reasons           # {"data.image_size": "256: median image 512x512, capped ...", ...}

Pure functions of plain data: no Ray, no reading of images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from segray.config import Config, apply_overrides
from segray.data.folder import find_layout

__all__ = [
    "DILATION_CHOICES",
    "AutoOptions",
    "Derived",
    "Resources",
    "derive_config",
    "find_layout",
]

# Atrous rates of the decoder's parallel branches the search chooses from: from local context
# only (1, 2, 4, 8) to the wide rates of DeepLab (1, 12, 24, 36). Rates wider than half the
# patch see mostly padding and are left out.
DILATION_CHOICES = ([1, 2, 4, 8], [1, 3, 6, 9], [1, 6, 12, 18], [1, 12, 24, 36])
_GRAY_MODES = {"1", "L", "LA", "P", "PA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_CPU_PIXELS = 8 * 64 * 64  # per-worker batch pixels: 8 at 64 px, at least 4 above
_GPU_PIXELS = 16 * 256 * 256
_MIN_SAMPLES = 128  # training samples an epoch, at least: a few dozen optimizer steps
_PATCH_CAP = {False: 256, True: 512}  # training patch side on CPUs / GPUs


@dataclass(frozen=True)
class Resources:
    """What the search can use: the cluster's CPUs and GPUs (`segray.auto.plan.cluster`)."""

    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class AutoOptions:
    """The user's restrictions on what is derived (`segray auto` flags)."""

    flip: bool = True  # --no-flip: no flips (the data has a handedness)
    rotate: bool | None = None  # --rotate / --no-rotate; None: from the data
    classes: list[str] | None = None  # class names, background first; None: from the masks


@dataclass
class Derived:
    config: Config
    reasons: dict[str, str] = field(default_factory=dict)  # key -> why it has its value

    def values(self) -> dict[str, Any]:
        """The derived value of every key that has a reason."""
        flat = _flatten(self.config.to_dict())
        return {k: flat.get(k) for k in self.reasons}

    def table(self) -> str:
        width = max(len(k) for k in self.reasons)
        flat = _flatten(self.config.to_dict())
        return "\n".join(
            f"  {k.ljust(width)}  {_short(flat.get(k, '-'))}  ({why})"
            for k, why in self.reasons.items()
        )


def derive_config(
    fp: dict[str, Any],
    resources: Resources,
    *,
    root: str,
    options: AutoOptions | None = None,
    base: Config | None = None,
) -> Derived:
    """The config for ``fp`` (a `Fingerprint.to_dict()`) on ``resources``.

    ``base`` carries the data layout (source, root, folders, classes, explicit splits) the
    fingerprint was taken with; everything else is derived. Epochs and the search budget are
    left at their defaults: `segray.auto.plan.make_plan` sets them from a timing probe.
    """
    options = options or AutoOptions()
    images = fp.get("images") or {}
    if not images.get("count"):
        raise ValueError(f"{root}: the fingerprint has no readable image")
    gpu = resources.gpus >= 1
    why: dict[str, str] = {}
    u: dict[str, Any] = {}

    # -- data: classes and masks, as inspect resolved them
    classes = options.classes or list(fp.get("class_fraction") or {}) or None
    if classes:
        u["data.classes"] = classes
        why["data.classes"] = "from the mask values" if not options.classes else "--classes"
    mode = fp.get("mask_mode")
    if mode:
        u["data.mask_mode"] = mode
        u.update(fp.get("mask_settings") or {})
        why["data.mask_mode"] = fp.get("mask_mode_reason") or "from the mask values"
        if "data.mask_threshold" in u:
            why["data.mask_threshold"] = "with data.mask_mode threshold: the midpoint of 0/top"

    # -- input channels and normalisation
    modes = images.get("modes") or {}
    gray = sum(n for m, n in modes.items() if m in _GRAY_MODES)
    bands = images.get("bands")  # data bands of the sampled images (alpha left out)
    if bands is not None and bands not in (1, 3):
        channels = int(bands)
        kind = f"{channels}-band"
    else:
        channels = 1 if gray * 2 > sum(modes.values() or [0]) or bands == 1 else 3
        kind = "grayscale" if channels == 1 else "colour"
    u["model.in_channels"] = channels
    why["model.in_channels"] = f"{kind} images ({_counts(modes)})"
    intensity = fp.get("intensity_range")
    if isinstance(intensity, list):
        bits = images.get("bit_depth_used")
        u["data.intensity_range"] = intensity
        why["data.intensity_range"] = (
            f"{images.get('value_type')} images"
            + (f" using {bits} bits" if bits else "")
            + ": their 0.5/99.5 percentiles per band map to 0..255"
        )
    mean, std = images.get("mean"), images.get("std")
    if mean and std and len(mean) == len(std):
        if len(mean) != channels:
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        u["data.mean"] = [round(x, 4) for x in mean]
        u["data.std"] = [round(max(x, 1e-3), 4) for x in std]
        why["data.mean"] = why["data.std"] = "the dataset's own intensity statistics"

    # -- patch, transforms, samples and batch
    w, h = images["width"], images["height"]
    side = min(w["median"], h["median"])
    smallest = min(w["min"], h["min"])
    cap = _PATCH_CAP[gpu]
    patch = max(32, min(cap, side // 32 * 32))
    u["data.image_size"] = patch
    why["data.image_size"] = (
        f"median image {w['median']}x{h['median']}: the largest multiple of 32 within it"
        + (
            f", capped at {cap} for {'GPU' if gpu else 'CPU'} memory"
            if side // 32 * 32 > cap
            else ""
        )
    )
    u["data.train_transform"] = "random_crop"
    why["data.train_transform"] = "crops keep the images' own scale, which evaluation sees"
    if smallest < patch:
        why["data.train_transform"] += f"; images under {patch} px are padded (ignored pixels)"
    pairs = int(fp.get("pairs") or images["count"])
    train_n = max(1, round(pairs * 0.7))
    crops = max(1, min(8, round(w["median"] * h["median"] / patch**2)))
    spi = min(32, max(crops, math.ceil(_MIN_SAMPLES / train_n)))
    u["data.samples_per_image"] = spi
    why["data.samples_per_image"] = (
        f"~{train_n} training images: {spi} crops each make {spi * train_n} samples an epoch"
    )
    batch = _pow2(((_GPU_PIXELS if gpu else _CPU_PIXELS) // patch**2), lo=4, hi=32 if gpu else 16)
    u["data.batch_size"] = batch
    u["data.eval_batch_size"] = max(1, batch // 2) if patch >= 256 else batch
    why["data.batch_size"] = (
        f"{batch} patches of {patch} px a worker fit {'GPU' if gpu else 'CPU'} memory"
    )
    if pairs < 20:
        u["data.split"] = [0.6, 0.2, 0.2]
        why["data.split"] = f"only {pairs} pairs: larger val and test shares"

    # -- augmentations
    rotate = options.rotate
    if rotate is None:
        bits = images.get("bit_depth") or {}
        synthetic = fp.get("source") == "synthetic"
        rotate = channels == 1 or any(int(b) > 8 for b in bits) or synthetic
        rotate_why = (
            "segray's synthetic scenes: no natural orientation"
            if synthetic
            else "microscopy-like data (grayscale or > 8 bit): no natural orientation"
            if rotate
            else "colour photographs: up stays up (--rotate to add rotations)"
        )
    else:
        rotate_why = "--rotate" if rotate else "--no-rotate"
    flip = options.flip
    u["data.hflip"] = 0.5 if flip else 0.0
    u["data.vflip"] = 0.5 if flip and rotate else 0.0
    u["data.rotate90"] = 0.5 if rotate else 0.0
    why["data.hflip"] = "--no-flip" if not flip else "mirror images are as likely"
    why["data.rotate90"] = rotate_why
    u["data.brightness_contrast"] = 0.2

    # -- model, loss, optimiser
    u["model.name"] = "resnet_unet"
    u["model.encoder"] = "resnet34" if gpu else "resnet18"
    u["model.atrous"] = True
    small = patch <= 128 and not gpu
    if small:
        u["model.decoder_channels"] = [64, 32, 16, 8]
    why["model.encoder"] = (
        "ResNet-U-Net with an atrous decoder; "
        + ("ResNet34 on GPUs" if gpu else "ResNet18 on CPUs")
        + (", narrow decoder for small patches" if small else "")
    )
    u["loss.name"] = "bce_dice"
    why["loss.name"] = "BCE (CE for > 2 classes) + Dice: robust to class imbalance"
    u.update({"optim.name": "adam", "optim.scheduler": "cosine", "optim.grad_clip": 1.0})
    u["optim.lr"] = 3e-3

    # -- workers and precision
    if gpu:
        workers = 2 if resources.gpus >= 2 else 1
        per = max(1, int(resources.cpus // max(resources.gpus, 1)))
        u.update(
            {
                "train.use_gpu": True,
                "train.num_workers": workers,
                "train.gpus_per_worker": 1,
                "train.cpus_per_worker": min(4, per),
            }
        )
        why["train.num_workers"] = f"{workers} GPU DDP worker(s) a trial, NCCL"
    else:
        cpw = max(1, int(resources.cpus // 16))
        u.update({"train.num_workers": 2, "train.cpus_per_worker": cpw, "train.use_gpu": False})
        why["train.num_workers"] = (
            f"2 DDP workers x {cpw} CPU a trial (gloo): "
            f"{max(1, int(resources.cpus // (2 * cpw)))} trial(s) at once on {resources.cpus:g} CPUs"
        )
    u["train.precision"] = "auto"
    u["train.max_failures"] = 1

    # -- search space around it
    rates = [r for r in DILATION_CHOICES if max(r) <= patch // 2] or [list(DILATION_CHOICES[0])]
    u["tune.space"] = {
        "model.dilation_rates": {"choice": rates},
        "loss.bce_weight": {"uniform": [0.1, 0.9]},
        "optim.lr": {"loguniform": [1e-3, 1e-2]},
    }
    why["tune.space"] = (
        f"{len(rates)} sets of dilation rates (widest <= half the {patch} px patch), "
        "bce_weight 0.1-0.9, lr 1e-3-1e-2 (Adam, batches of a few patches)"
    )
    u.update({"tune.scheduler": "asha", "tune.searcher": "optuna", "tune.reduction_factor": 2.0})

    cfg = apply_overrides(base or Config(), u)
    return Derived(cfg, why)


def _pow2(x: float, *, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, 2 ** int(math.floor(math.log2(max(x, 1)))))))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "space" and k != "split_ids":
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
