"""The Python inference API: a checkpoint in, probabilities and masks out, at input resolution.

    seg = load_segmenter("runs/train/checkpoints/best")       # device "auto": CUDA if present
    mask = seg.predict("photo.jpg")                           # (H, W) uint8: 0/1 or class index
    proba = seg.predict_proba(array)                          # (H, W) P(fg), or (K, H, W)
    masks = seg.predict_batch([img_a, img_b, img_c])          # mixed sizes; same sizes batched

Preprocessing is exactly training's eval path: pixels scaled to [0, 1] and normalised with
``data.mean`` / ``data.std`` (`segray.data.default_norm` when unset); no resize. `Preprocess` is
the one implementation, shared by `Segmenter`, the exported artifacts (`segray.export`) and the
evaluation report (`segray.evaluate`).

This is the one inference path of predict, evaluate, segment and export; the config's
``segment`` section (which a checkpoint carries) sets it, and its pieces live in
`segray.inference`:

* an ensemble checkpoint (`segray.inference.write_ensemble`) loads like any checkpoint: the
  members' probabilities are averaged (`ensemble_disagreement`: their spread);
* ``segment.tta`` (``none | flip | d4``): every forward batch (whole images or tiles) runs
  under each transform, inverted exactly and averaged in float32 probability space;
* ``segment.thresholds`` and the post-processing steps (``min_component_px``, ``fill_holes``,
  ``keep_largest``) turn probabilities into the mask (`segray.inference.PostProcess`).

Images no larger than ``tile_size`` on both sides run whole (same-size images batched together).
Larger ones are segmented by sliding-window tiles of ``tile_size`` (``min(tile_size, side)`` on
a shorter side), ``tile_overlap`` apart; the last tile on each axis is shifted inwards so every
tile lies inside the image (no padding). Tiles run ``batch_size`` at a time, so accelerator
memory is bounded by the tile batch, not the image; their probabilities are blended on the CPU
with a separable Hann window (sampled at pixel centres, so never zero) and divided by the summed
weights. An image side below the models' 32-pixel minimum is edge-padded and cropped back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image
from torch import nn

from segray.checkpoint import fetch_checkpoint, model_id
from segray.config import Config
from segray.data import decode_image
from segray.data.intensity import Bands, intensity_ranges, to_uint8
from segray.inference.ensemble import load_members
from segray.inference.network import Preprocess, ProbabilityModel
from segray.inference.postprocess import PostProcess
from segray.models.blocks import MIN_INPUT_SIZE
from segray.precision import ChannelsLast, Precision, resolve_precision

__all__ = [
    "ImageInput",
    "Preprocess",
    "ProbabilityModel",
    "Segmenter",
    "load_segmenter",
    "resolve_device",
]

ImageInput: TypeAlias = str | Path | bytes | bytearray | Image.Image | np.ndarray

# PIL modes whose pixels np.asarray returns as the arrays `Segmenter` accepts.
_ARRAY_MODES = ("L", "LA", "RGB", "RGBA", "I;16")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as `torch.device` reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Segmenter:
    """A model, its config and the inference settings: images in, probabilities or masks out.

    Args:
        model: a segmentation model mapping (N, in_channels, H, W) to logits (N, K, H, W);
            it must have ``in_channels`` and ``num_classes`` attributes (every registered model
            has). Moved to ``device`` and put in eval mode. A sequence of models: an ensemble
            (mean of their probabilities; same classes and input channels).
        config: the config that built it (normalisation, tiling, TTA, threshold and
            post-processing defaults: its ``segment`` section).
        member_configs: an ensemble's per-member configs (their normalisation); default
            ``config`` for every member.
        device: where the model runs; ``"auto"`` = CUDA when available, else CPU.
        model_id: provenance string (`segray.checkpoint.model_id` of the checkpoint).
        tile_size: sliding-window tile side; default ``segment.tile_size``.
        tile_overlap: overlap fraction of neighbouring tiles; default ``segment.tile_overlap``.
        threshold: binary: foreground where P(fg) >= threshold; default ``segment.thresholds``
            (its one value), else ``segment.threshold``.
        batch_size: images or tiles per forward pass; default ``segment.batch_size``.
        precision: ``auto | fp32 | bf16 | fp16`` (`segray.precision.resolve_precision` on
            ``device``: auto = bf16 where the device runs it natively, fp16 on older GPUs,
            else fp32), or a resolved `segray.precision.Precision`. Only the network runs in
            it; the sigmoid/softmax and everything after run in float32.
        channels_last: ``auto | True | False``: NHWC memory format (auto: where faster, i.e.
            on CUDA and on oneDNN CPUs). Ignored when ``precision`` is a `Precision`.
        compile: run the network through ``torch.compile`` (inductor). Faster per image once
            compiled (measured on CPU, demo model, bf16: 1.39x eager), but the first batch of
            every new input shape compiles first (~100 s cold on 2 cores; seconds from
            inductor's on-disk cache); after torch's recompile limit, new shapes run eager.
        tta: ``none | flip | d4``; default ``segment.tta``.
        postprocess: thresholds and post-processing; default from ``config.segment`` (and
            ``threshold``).
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        config: Config,
        *,
        member_configs: Sequence[Config] | None = None,
        device: str | torch.device = "cpu",
        model_id: str = "",
        tile_size: int | None = None,
        tile_overlap: float | None = None,
        threshold: float | None = None,
        batch_size: int | None = None,
        precision: str | Precision = "auto",
        channels_last: ChannelsLast = "auto",
        compile: bool = False,
        tta: str | None = None,
        postprocess: PostProcess | None = None,
    ) -> None:
        seg = config.segment
        models = list(model) if isinstance(model, list | tuple | nn.ModuleList) else [model]
        configs = [config] * len(models) if member_configs is None else list(member_configs)
        if not models or len(configs) != len(models):
            raise ValueError(f"need one config per member, got {len(configs)} for {len(models)}")
        self.device = resolve_device(device)
        self.config = config
        self.model_id = model_id
        self.channels = int(models[0].in_channels)
        self.num_classes = int(models[0].num_classes)
        for m in models[1:]:
            if (int(m.in_channels), int(m.num_classes)) != (self.channels, self.num_classes):
                raise ValueError(
                    f"ensemble members disagree: in_channels/num_classes {m.in_channels}/"
                    f"{m.num_classes} vs {self.channels}/{self.num_classes}"
                )
        self.tile_size = seg.tile_size if tile_size is None else tile_size
        self.tile_overlap = seg.tile_overlap if tile_overlap is None else tile_overlap
        self.postprocess = postprocess or PostProcess.from_config(seg, self.num_classes, threshold)
        self.threshold = self.postprocess.thresholds[0] if self.num_classes == 1 else seg.threshold
        self.tta = seg.tta if tta is None else tta
        self.batch_size = seg.batch_size if batch_size is None else batch_size
        if self.tile_size < MIN_INPUT_SIZE:
            raise ValueError(f"tile_size must be >= {MIN_INPUT_SIZE}, got {self.tile_size}")
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must lie in [0, 1), got {self.tile_overlap}")
        if self.num_classes == 1 and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not isinstance(precision, Precision):
            precision = resolve_precision(precision, self.device, channels_last)
        self.precision = precision
        self.channels_last = precision.channels_last
        self.models = [m.to(self.device).eval() for m in models]
        if self.channels_last:
            self.models = [m.to(memory_format=torch.channels_last) for m in self.models]
        self.model = self.models[0]
        self.compiled = compile
        preprocesses = [Preprocess.from_config(c, self.channels) for c in configs]
        self._eager_net = ProbabilityModel(
            self.models, preprocesses, tta=self.tta, channels_last=self.channels_last
        ).to(self.device)
        self.net = self._eager_net
        if compile:
            self.net = ProbabilityModel(
                [torch.compile(m) for m in self.models],
                preprocesses,
                tta=self.tta,
                channels_last=self.channels_last,
            ).to(self.device)
        self.preprocess = self.net.preprocesses[0]

    @property
    def ensemble_size(self) -> int:
        """Number of member models (1: a single checkpoint)."""
        return len(self.models)

    # -- public API ----------------------------------------------------------
    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """float32 probabilities at the input resolution: (H, W) P(fg) if binary, else (K, H, W)."""
        return self.predict_batch_proba([image])[0]

    def predict(self, image: ImageInput) -> np.ndarray:
        """(H, W) uint8 mask: binary 0/1 by ``threshold``, multi-class the argmax."""
        return self.mask_from_proba(self.predict_proba(image))

    def predict_batch(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """`predict` of every image; same-size images share forward passes."""
        return [self.mask_from_proba(p) for p in self.predict_batch_proba(images)]

    def predict_batch_proba(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """`predict_proba` of every image (mixed sizes); same-size small images are batched."""
        out: list[np.ndarray | None] = [None] * len(images)
        for i, proba in self.iter_batch_proba(images):
            out[i] = proba
        return out  # type: ignore[return-value]  # every slot was filled

    def iter_batch_proba(self, images: Sequence[ImageInput]) -> Iterator[tuple[int, np.ndarray]]:
        """(index, `predict_proba`) of every image, each as soon as it is ready: the caller
        can turn it into a mask and drop it before the next forward pass, so at most one
        forward batch of probabilities is held at a time."""
        for i, proba, _ in self.iter_batch_outputs(images):
            yield i, proba

    @torch.inference_mode()
    def iter_batch_outputs(
        self, images: Sequence[ImageInput]
    ) -> Iterator[tuple[int, np.ndarray, float | None]]:
        """(index, `predict_proba`, ensemble disagreement) of every image, as
        `iter_batch_proba`. The disagreement is the mean over pixels of the standard deviation
        (over members, ddof 0) of the members' probability of the foreground (binary) or of
        the ensemble's argmax class; for a tiled image, the per-tile maps are blended with the
        tiles' Hann weights. None for a single model."""
        arrays = [self.to_array(image) for image in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, array in enumerate(arrays):
            if max(array.shape[:2]) > self.tile_size:
                probs, spread = self._predict_tiled(array)
                yield i, self._finish(probs), _mean(spread)
            else:
                groups.setdefault(array.shape, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                probs, spread = self._forward(np.stack([arrays[i] for i in chunk]))
                probs = probs.cpu()
                for k, (i, p) in enumerate(zip(chunk, probs, strict=True)):
                    yield i, self._finish(p), None if spread is None else _mean(spread[k])

    def verify_compiled(
        self, images: Sequence[ImageInput], min_agreement: float = 0.995
    ) -> float | None:
        """The compiled network's masks against eager's on ``images``: the fraction of equal
        pixels. Below ``min_agreement`` the compiled network is dropped and inference runs
        eager from then on (``compiled`` becomes False). None when nothing is compiled."""
        if not self.compiled:
            return None
        compiled = self.predict_batch(images)
        compiled_net, self.net = self.net, self._eager_net
        eager = self.predict_batch(images)
        total = sum(m.size for m in eager)
        agreement = sum(int((a == b).sum()) for a, b in zip(compiled, eager, strict=True))
        agreement = agreement / total if total else 1.0
        if agreement >= min_agreement:
            self.net = compiled_net
        else:
            self.compiled = False
        return agreement

    def mask_from_proba(self, proba: np.ndarray) -> np.ndarray:
        """`predict_proba` output -> (H, W) uint8 mask: the thresholds (binary: P(fg) >=
        threshold; else the argmax, background below its class's threshold), then the
        post-processing steps (`segray.inference.PostProcess`)."""
        return self.postprocess.mask(proba)

    def to_array(self, image: ImageInput) -> np.ndarray:
        """Any accepted image -> (H, W, channels) uint8, the model's input channels.

        Paths and bytes are decoded by `segray.data.decode_image` (EXIF rotation, any PIL mode,
        ``segment.max_pixels`` limit, the config's ``data.intensity_range``). Arrays may be
        (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), uint8 or uint16 (divided by 257), or bool;
        alpha is dropped. An array of ``channels`` bands (a multi-band model) is taken whole.
        uint8 arrays are taken as decoded; other value types (uint16, floats) are mapped by
        ``data.intensity_range`` as decoding a file does. PIL images become such an array
        (other modes are converted to RGB/RGBA first). Grayscale <-> RGB uses PIL's
        conversions (ITU-R 601 luma), as decoding a file does.
        """
        intensity_range = self.config.data.intensity_range
        if isinstance(image, str | Path | bytes | bytearray):
            max_pixels = self.config.segment.max_pixels
            return decode_image(
                image,
                channels=self.channels,
                max_pixels=max_pixels,
                intensity_range=intensity_range,
            )
        if isinstance(image, Image.Image):
            if image.mode not in _ARRAY_MODES:
                image = image.convert("RGBA" if image.has_transparency_data else "RGB")
            image = np.asarray(image)
        if not isinstance(image, np.ndarray):
            raise TypeError(
                "image must be a path, bytes, a PIL image or a numpy array, "
                f"got {type(image).__name__}"
            )
        if image.ndim == 2:
            image = image[..., None]
        bands = image.shape[2] if image.ndim == 3 else 0
        if image.dtype == np.uint8 and bands == self.channels:
            return np.ascontiguousarray(image)
        ranges = intensity_ranges(intensity_range)
        raw = image.dtype not in (np.uint8, np.bool_)
        if raw and (ranges is not None or self.channels not in (1, 3) or bands > 4):
            if bands in (2, 4) and bands != self.channels:  # alpha dropped, as below
                image = image[..., :-1]
            data = Bands(image, alpha=False, mode=f"{image.dtype.name}x{image.shape[2]}")
            return to_uint8(data, channels=self.channels, intensity_range=ranges, name="array")
        return _array_channels(_array_to_uint8(image), self.channels)

    # -- internals -----------------------------------------------------------
    def _forward(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, H, W, C) uint8 -> (N, K, H, W) float32 probabilities on ``device``, and for an
        ensemble the (N, H, W) per-pixel spread of its members (see `iter_batch_outputs`).

        A side below the models' minimum is edge-padded (the same pixels as replicate-padding
        the normalised input) and cropped back."""
        h, w = images.shape[1:3]
        if min(h, w) < MIN_INPUT_SIZE:
            pad_h, pad_w = max(0, MIN_INPUT_SIZE - h), max(0, MIN_INPUT_SIZE - w)
            images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        x = torch.from_numpy(images).to(self.device)
        with self.precision.autocast(self.device):
            members = self.net.member_probs(x)
        members = members.float()[..., :h, :w]
        if members.shape[0] == 1:
            return members[0], None
        probs = members.mean(0)
        if self.num_classes == 1:
            chosen = members[:, :, 0]
        else:
            top = probs.argmax(1, keepdim=True)  # (N, 1, H, W)
            index = top.unsqueeze(0).expand(members.shape[0], -1, -1, -1, -1)
            chosen = members.gather(2, index)[:, :, 0]
        return probs, chosen.std(0, unbiased=False)

    def _predict_tiled(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(K, H, W) CPU probabilities of an image larger than a tile, by blended tiles, and
        the blended member spread of an ensemble."""
        h, w = image.shape[:2]
        th, tw = min(self.tile_size, h), min(self.tile_size, w)
        stride = max(1, round(self.tile_size * (1 - self.tile_overlap)))
        corners = [(y, x) for y in _starts(h, th, stride) for x in _starts(w, tw, stride)]
        window = _hann(th)[:, None] * _hann(tw)[None, :]
        total = torch.zeros(self.num_classes, h, w)
        weight = torch.zeros(h, w)
        spread = torch.zeros(h, w) if self.ensemble_size > 1 else None
        for start in range(0, len(corners), self.batch_size):
            chunk = corners[start : start + self.batch_size]
            tiles = np.stack([image[y : y + th, x : x + tw] for y, x in chunk])
            probs, spreads = self._forward(tiles)
            probs = probs.cpu()
            for k, ((y, x), p) in enumerate(zip(chunk, probs, strict=True)):
                total[:, y : y + th, x : x + tw] += p * window
                weight[y : y + th, x : x + tw] += window
                if spread is not None and spreads is not None:
                    spread[y : y + th, x : x + tw] += spreads[k].cpu() * window
        return total / weight, None if spread is None else spread / weight

    @staticmethod
    def _finish(probs: torch.Tensor) -> np.ndarray:
        """(K, H, W) tensor -> float32 numpy; (H, W) when binary (K == 1)."""
        array = probs.cpu().numpy().astype(np.float32, copy=False)
        return array[0] if array.shape[0] == 1 else array


def _mean(spread: torch.Tensor | None) -> float | None:
    return None if spread is None else float(spread.double().mean())


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one axis: every ``stride``, the last one flush with the far edge."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, stride), length - tile]


def _hann(n: int) -> torch.Tensor:
    """A Hann window sampled at pixel centres: smooth, peaking mid-tile, never zero."""
    return torch.sin(torch.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n).square().float()


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is, uint16 scaled by its full range (/ 257), bool to 0/255; alpha dropped."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = np.rint(array / 257.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, uint16 or bool, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image arrays must be (H, W) or (H, W, 1|3|4), got {array.shape}")
    if array.shape[2] in (2, 4):  # gray + alpha, RGB + alpha
        array = array[..., :-1]
    return array


def _array_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, 1|3) uint8 -> (H, W, channels) with PIL's gray <-> RGB conversions."""
    if array.shape[2] == channels:
        return np.ascontiguousarray(array)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    return np.asarray(Image.fromarray(array).convert("L"))[..., None]


def load_segmenter(
    checkpoint: str | Path,
    *,
    device: str | torch.device = "auto",
    precision: str | Precision = "auto",
    config: Config | None = None,
    **kwargs: Any,
) -> Segmenter:
    """A `Segmenter` for a checkpoint directory, single or ensemble (a path, or a URI such as
    ``s3://b/tune/best``: only the weights and configs are fetched); ``kwargs`` are
    `Segmenter`'s keyword options.

    ``precision`` as `Segmenter`'s (auto: bf16 where ``device`` runs it natively, else fp16
    on older GPUs, else fp32). ``model_id`` is the checkpoint's content hash
    (`segray.checkpoint.model_id`) unless given. ``config`` replaces the checkpoint's own for
    the inference settings (e.g. with ``segment.*`` overrides); the members keep theirs for
    their architecture and normalisation.
    """
    resolved = resolve_device(device)
    checkpoint = fetch_checkpoint(checkpoint)
    models, configs, own = load_members(checkpoint, resolved)
    if "model_id" not in kwargs:
        kwargs["model_id"] = model_id(checkpoint)
    return Segmenter(
        models,
        own if config is None else config,
        member_configs=configs,
        device=resolved,
        precision=precision,
        **kwargs,
    )
