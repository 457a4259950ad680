"""The config `segray auto` derives from a dataset's fingerprint and the resources found.

As nnU-Net's planner does, every setting comes from the data (the fingerprint of `segray
inspect`, the hints of its ``dataset.yaml``) and the devices, and each carries the reason it
was chosen, printed by ``--dry-run`` and saved in ``OUT/plan.json``:

    derived = derive_config(fp, Resources(cpus=2, gpus=0), root="data/cells")
    derived.config            # a validated Config (epochs and the search budget: `plan`)
    derived.reasons           # {"data.image_size": "256: median image 512x512, capped ...", ...}

The plan is a list of decisions (`DECISIONS`): one small ``derive_*(facts, chosen) -> (value,
reason)`` per setting, in order, each seeing the values chosen before it. A value of None
leaves the setting at its default; a reason of None records no reason; a `Keys` value sets
several keys together. Pure functions of plain data: no Ray, no reading of images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from segray.config import Config, apply_overrides
from segray.data.folder import DatasetError, find_layout
from segray.data.hints import HINTS_FILE, DatasetHints

__all__ = [
    "DECISIONS",
    "DILATION_CHOICES",
    "SMALL_SET",
    "AutoOptions",
    "Derived",
    "Facts",
    "Keys",
    "Resources",
    "derive_config",
    "find_layout",
]

# Atrous rates of the decoder's parallel branches the search chooses from: from local context
# only (1, 2, 4, 8) to the wide rates of DeepLab (1, 12, 24, 36). Rates wider than half the
# patch see mostly padding and are left out.
DILATION_CHOICES = ([1, 2, 4, 8], [1, 3, 6, 9], [1, 6, 12, 18], [1, 12, 24, 36])
SMALL_SET = 20  # fewer pairs get a 0.6 / 0.2 / 0.2 split
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
    fingerprint: Any = field(default=None, repr=False, compare=False)  # the live Fingerprint

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


@dataclass(frozen=True)
class Facts:
    """What every decision may look at: the fingerprint, its hints, the resources, the flags."""

    fp: dict[str, Any]
    resources: Resources
    options: AutoOptions
    hints: DatasetHints
    root: str

    @property
    def images(self) -> dict[str, Any]:
        return self.fp["images"]

    @property
    def gpu(self) -> bool:
        return self.resources.gpus >= 1

    @property
    def pairs(self) -> int:
        return int(self.fp.get("pairs") or self.images["count"])


class Keys(dict):
    """A decision's value that sets several config keys together (its reason goes to the
    decision's own key)."""


Decision = tuple[Any, str | None]
Chosen = dict[str, Any]  # the config keys decided so far -> their values


def derive_config(
    fp: dict[str, Any],
    resources: Resources,
    *,
    root: str,
    options: AutoOptions | None = None,
    base: Config | None = None,
) -> Derived:
    """The config for ``fp`` (a `Fingerprint.to_dict()`, with ``hints``: the keys of its
    ``dataset.yaml``, if any) on ``resources``.

    ``base`` carries the data layout (source, root, folders, classes, explicit splits) the
    fingerprint was taken with; everything else is derived. Epochs and the search budget are
    left at their defaults: `segray.auto.plan.make_plan` sets them from a timing probe.
    """
    if not (fp.get("images") or {}).get("count"):
        raise ValueError(f"{root}: the fingerprint has no readable image")
    hints = DatasetHints.model_validate(fp.get("hints") or {})
    facts = Facts(fp, resources, options or AutoOptions(), hints, root)
    chosen: Chosen = {}
    why: dict[str, str] = {}
    for key, derive in DECISIONS:
        value, reason = derive(facts, chosen)
        if value is None:
            continue
        chosen.update(value if isinstance(value, Keys) else {key: value})
        if reason is not None:
            why[key] = reason
    return Derived(apply_overrides(base or Config(), chosen), why)


# --------------------------------------------------------------------------- data
def derive_classes(f: Facts, chosen: Chosen) -> Decision:
    """Class names: --classes, else dataset.yaml, else as inspect found them in the masks."""
    if f.options.classes:
        return f.options.classes, "--classes"
    classes = list(f.fp.get("class_fraction") or {}) or None
    names = f.hints.class_names
    if names:
        found = (f.fp.get("mask_settings") or {}).get("data.classes") or classes
        if found != names:
            raise DatasetError(
                f"{f.root}/{HINTS_FILE}: class_names {names} do not match the masks' "
                f"{len(found or [])} classes ({', '.join(found or ['none'])})"
            )
        return classes, f"{HINTS_FILE} class_names"
    return classes, "from the mask values"


def derive_mask_mode(f: Facts, chosen: Chosen) -> Decision:
    """How masks map to classes, as inspect resolved it (with the settings it goes with)."""
    mode = f.fp.get("mask_mode")
    if not mode:
        return None, None
    keys = Keys({"data.mask_mode": mode, **(f.fp.get("mask_settings") or {})})
    return keys, f.fp.get("mask_mode_reason") or "from the mask values"


def derive_mask_threshold(f: Facts, chosen: Chosen) -> Decision:
    return chosen.get("data.mask_threshold"), "with data.mask_mode threshold: the midpoint of 0/top"


def derive_in_channels(f: Facts, chosen: Chosen) -> Decision:
    """Input channels: the images' data bands, else grayscale or colour by their modes."""
    modes = f.images.get("modes") or {}
    gray = sum(n for m, n in modes.items() if m in _GRAY_MODES)
    bands = f.images.get("bands")  # data bands of the sampled images (alpha left out)
    if bands is not None and bands not in (1, 3):
        channels = int(bands)
        kind = f"{channels}-band"
    else:
        channels = 1 if gray * 2 > sum(modes.values() or [0]) or bands == 1 else 3
        kind = "grayscale" if channels == 1 else "colour"
    names = f.hints.channel_names
    if names and len(names) != channels:
        raise DatasetError(
            f"{f.root}/{HINTS_FILE}: channel_names has {len(names)} names, the images have "
            f"{channels} channel(s) ({kind})"
        )
    return channels, f"{kind} images ({_counts(modes)})"


def derive_intensity_range(f: Facts, chosen: Chosen) -> Decision:
    intensity = f.fp.get("intensity_range")
    if not isinstance(intensity, list):
        return None, None
    bits = f.images.get("bit_depth_used")
    return intensity, (
        f"{f.images.get('value_type')} images"
        + (f" using {bits} bits" if bits else "")
        + ": their 0.5/99.5 percentiles per band map to 0..255"
    )


def _mean_std(f: Facts, chosen: Chosen) -> tuple[list[float], list[float]] | None:
    mean, std = f.images.get("mean"), f.images.get("std")
    if not (mean and std and len(mean) == len(std)):
        return None
    if len(mean) != chosen["model.in_channels"]:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return mean, std


def derive_mean(f: Facts, chosen: Chosen) -> Decision:
    stats = _mean_std(f, chosen)
    if stats is None:
        return None, None
    return [round(x, 4) for x in stats[0]], "the dataset's own intensity statistics"


def derive_std(f: Facts, chosen: Chosen) -> Decision:
    stats = _mean_std(f, chosen)
    if stats is None:
        return None, None
    return [round(max(x, 1e-3), 4) for x in stats[1]], "the dataset's own intensity statistics"


# --------------------------------------------------------------------------- patch and batch
def derive_patch_size(f: Facts, chosen: Chosen) -> Decision:
    """The largest multiple of 32 within the median image, capped for the device's memory."""
    w, h = f.images["width"], f.images["height"]
    side = min(w["median"], h["median"])
    cap = _PATCH_CAP[f.gpu]
    patch = max(32, min(cap, side // 32 * 32))
    capped = f", capped at {cap} for {'GPU' if f.gpu else 'CPU'} memory"
    return patch, (
        f"median image {w['median']}x{h['median']}: the largest multiple of 32 within it"
        + (capped if side // 32 * 32 > cap else "")
    )


def derive_train_transform(f: Facts, chosen: Chosen) -> Decision:
    patch = chosen["data.image_size"]
    why = "crops keep the images' own scale, which evaluation sees"
    if min(f.images["width"]["min"], f.images["height"]["min"]) < patch:
        why += f"; images under {patch} px are padded (ignored pixels)"
    return "random_crop", why


def derive_samples_per_image(f: Facts, chosen: Chosen) -> Decision:
    """Enough crops an image for a few dozen optimizer steps an epoch."""
    patch = chosen["data.image_size"]
    w, h = f.images["width"], f.images["height"]
    train_n = max(1, round(f.pairs * 0.7))
    crops = max(1, min(8, round(w["median"] * h["median"] / patch**2)))
    spi = min(32, max(crops, math.ceil(_MIN_SAMPLES / train_n)))
    return (
        spi,
        f"~{train_n} training images: {spi} crops each make {spi * train_n} samples an epoch",
    )


def derive_batch_size(f: Facts, chosen: Chosen) -> Decision:
    patch = chosen["data.image_size"]
    pixels = _GPU_PIXELS if f.gpu else _CPU_PIXELS
    batch = _pow2(pixels // patch**2, lo=4, hi=32 if f.gpu else 16)
    return batch, f"{batch} patches of {patch} px a worker fit {'GPU' if f.gpu else 'CPU'} memory"


def derive_eval_batch_size(f: Facts, chosen: Chosen) -> Decision:
    batch = chosen["data.batch_size"]
    return (max(1, batch // 2) if chosen["data.image_size"] >= 256 else batch), None


def derive_split(f: Facts, chosen: Chosen) -> Decision:
    if f.pairs >= SMALL_SET:
        return None, None
    return [0.6, 0.2, 0.2], f"only {f.pairs} pairs: larger val and test shares"


# --------------------------------------------------------------------------- augmentation
def _rotate(f: Facts, chosen: Chosen) -> tuple[bool, str]:
    """Whether views rotated by 90 degrees are as likely as the originals, and why."""
    if f.options.rotate is not None:
        return f.options.rotate, "--rotate" if f.options.rotate else "--no-rotate"
    if f.hints.orientation is not None:
        free = f.hints.orientation == "free"
        return free, f"{HINTS_FILE} orientation: {f.hints.orientation}: " + (
            "no natural orientation" if free else "up stays up"
        )
    bits = f.images.get("bit_depth") or {}
    if chosen["model.in_channels"] == 1 or any(int(b) > 8 for b in bits):
        return True, "microscopy-like data (grayscale or > 8 bit): no natural orientation"
    return False, "colour photographs: up stays up (--rotate to add rotations)"


def derive_hflip(f: Facts, chosen: Chosen) -> Decision:
    if not f.options.flip:
        return 0.0, "--no-flip"
    return 0.5, "mirror images are as likely"


def derive_vflip(f: Facts, chosen: Chosen) -> Decision:
    return (0.5 if f.options.flip and _rotate(f, chosen)[0] else 0.0), None


def derive_rotate90(f: Facts, chosen: Chosen) -> Decision:
    rotate, why = _rotate(f, chosen)
    return (0.5 if rotate else 0.0), why


def derive_brightness_contrast(f: Facts, chosen: Chosen) -> Decision:
    return 0.2, None


# --------------------------------------------------------------------------- model and loss
def derive_model(f: Facts, chosen: Chosen) -> Decision:
    return "resnet_unet", None


def derive_encoder(f: Facts, chosen: Chosen) -> Decision:
    return "resnet34" if f.gpu else "resnet18", (
        "ResNet-U-Net with an atrous decoder; "
        + ("ResNet34 on GPUs" if f.gpu else "ResNet18 on CPUs")
        + (", narrow decoder for small patches" if _small_model(f, chosen) else "")
    )


def derive_atrous(f: Facts, chosen: Chosen) -> Decision:
    return True, None


def derive_decoder_channels(f: Facts, chosen: Chosen) -> Decision:
    return ([64, 32, 16, 8] if _small_model(f, chosen) else None), None


def _small_model(f: Facts, chosen: Chosen) -> bool:
    return chosen["data.image_size"] <= 128 and not f.gpu


def derive_loss(f: Facts, chosen: Chosen) -> Decision:
    return "bce_dice", "BCE (CE for > 2 classes) + Dice: robust to class imbalance"


def derive_optimizer(f: Facts, chosen: Chosen) -> Decision:
    return Keys({"optim.name": "adam", "optim.scheduler": "cosine", "optim.grad_clip": 1.0}), None


def derive_lr(f: Facts, chosen: Chosen) -> Decision:
    return 3e-3, None


# --------------------------------------------------------------------------- workers and search
def derive_workers(f: Facts, chosen: Chosen) -> Decision:
    """DDP workers a trial: one a GPU (two with >= 2 GPUs), else two sharing the CPUs."""
    cpus, gpus = f.resources.cpus, f.resources.gpus
    if f.gpu:
        workers = 2 if gpus >= 2 else 1
        per = max(1, int(cpus // max(gpus, 1)))
        keys = {"train.use_gpu": True, "train.num_workers": workers, "train.gpus_per_worker": 1}
        keys["train.cpus_per_worker"] = min(4, per)
        return Keys(keys), f"{workers} GPU DDP worker(s) a trial, NCCL"
    cpw = max(1, int(cpus // 16))
    keys = {"train.num_workers": 2, "train.cpus_per_worker": cpw, "train.use_gpu": False}
    return Keys(keys), (
        f"2 DDP workers x {cpw} CPU a trial (gloo): "
        f"{max(1, int(cpus // (2 * cpw)))} trial(s) at once on {cpus:g} CPUs"
    )


def derive_precision(f: Facts, chosen: Chosen) -> Decision:
    return "auto", None


def derive_max_failures(f: Facts, chosen: Chosen) -> Decision:
    return 1, None


def derive_search_space(f: Facts, chosen: Chosen) -> Decision:
    """Dilation rates that fit the patch, the BCE weight and the learning rate."""
    patch = chosen["data.image_size"]
    rates = [r for r in DILATION_CHOICES if max(r) <= patch // 2] or [list(DILATION_CHOICES[0])]
    space = {
        "model.dilation_rates": {"choice": rates},
        "loss.bce_weight": {"uniform": [0.1, 0.9]},
        "optim.lr": {"loguniform": [1e-3, 1e-2]},
    }
    return space, (
        f"{len(rates)} sets of dilation rates (widest <= half the {patch} px patch), "
        "bce_weight 0.1-0.9, lr 1e-3-1e-2 (Adam, batches of a few patches)"
    )


def derive_search(f: Facts, chosen: Chosen) -> Decision:
    keys = {"tune.scheduler": "asha", "tune.searcher": "optuna", "tune.reduction_factor": 2.0}
    return Keys(keys), None


# The plan: every setting, in the order decided (and shown).
DECISIONS: list[tuple[str, Callable[[Facts, Chosen], Decision]]] = [
    ("data.classes", derive_classes),
    ("data.mask_mode", derive_mask_mode),
    ("data.mask_threshold", derive_mask_threshold),
    ("model.in_channels", derive_in_channels),
    ("data.intensity_range", derive_intensity_range),
    ("data.mean", derive_mean),
    ("data.std", derive_std),
    ("data.image_size", derive_patch_size),
    ("data.train_transform", derive_train_transform),
    ("data.samples_per_image", derive_samples_per_image),
    ("data.batch_size", derive_batch_size),
    ("data.eval_batch_size", derive_eval_batch_size),
    ("data.split", derive_split),
    ("data.hflip", derive_hflip),
    ("data.vflip", derive_vflip),
    ("data.rotate90", derive_rotate90),
    ("data.brightness_contrast", derive_brightness_contrast),
    ("model.name", derive_model),
    ("model.encoder", derive_encoder),
    ("model.atrous", derive_atrous),
    ("model.decoder_channels", derive_decoder_channels),
    ("loss.name", derive_loss),
    ("optim", derive_optimizer),
    ("optim.lr", derive_lr),
    ("train.num_workers", derive_workers),
    ("train.precision", derive_precision),
    ("train.max_failures", derive_max_failures),
    ("tune.space", derive_search_space),
    ("tune", derive_search),
]


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
