"""Export a checkpoint, single or ensemble, as one self-contained artifact: the whole inference.

    report = export_model("cv/ensemble", "torchscript", "model.ts", tta="flip")
    model = torch.jit.load("model.ts")
    mask = model(torch.from_numpy(image_hw_or_hwc_uint8))       # (H, W) uint8, any size
    probs = model.probabilities(torch.from_numpy(image))        # (K, H, W) float32

TorchScript: `MaskModel`, scripted around the traced network, does what
`segray.inference.segmenter.Segmenter.predict` does, in float32: channel conversion ((H, W), alpha dropped,
gray <-> RGB with PIL's luma), edge padding of sides under the models' 32-pixel minimum,
sliding-window tiles with Hann blending above ``segment.tile_size``, every ensemble member under
every TTA transform (averaged in probability space), the per-class thresholds and the
post-processing steps (connected components in pure torch, `segray.inference.postprocess`).
All of it comes from the checkpoint's ``segment`` settings; ``tta`` overrides ``segment.tta``.

Both artefacts take uint8 images as segray decodes them: 8-bit files as they are; high-bit-depth
and float files mapped to 0..255 by the checkpoint's ``data.intensity_range``
(``segray.data.decode_image(path, channels=C, intensity_range=R)``; TorchScript keeps ``R`` as
the JSON string attribute ``intensity_range``, ONNX in its metadata). A model of N bands takes
(H, W, N) images.

ONNX (opset 17, ``pip install 'segray[onnx]'``): `ProbabilityModel` (members and TTA) of a batch
``(N, H, W, C)`` uint8, H and W >= 32, run whole (no sliding-window tiles: on images larger
than ``segment.tile_size`` its probabilities differ slightly from the Segmenter's blended
tiles), with outputs ``probs`` (N, K, H, W) and ``mask`` (N, H, W) by the thresholds. Connected-component post-processing
(``segment.min_component_px``, ``fill_holes``, ``keep_largest``) needs data-dependent loops that
the exporter cannot express: such a checkpoint is refused with an `ExportError` that says to
export TorchScript. The TorchScript-based exporter with dynamic axes needs only the ``onnx``
package.

Either way the artifact is loaded back and checked against `segray.inference.segmenter.load_segmenter` in
fp32 on random images of `CHECK_SIZES` (another aspect ratio, odd sides, one under the 32-pixel
minimum): probabilities within `TOLERANCE`, and masks equal but for at most `MASK_TOLERANCE` of
the pixels (a probability within float error of a threshold may fall either side); otherwise
an `ExportError`, and the artifact is removed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from segray.checkpoint import fetch_checkpoint
from segray.errors import UserError
from segray.inference.network import Preprocess, ProbabilityModel
from segray.inference.postprocess import postprocess_torch, threshold_torch
from segray.inference.segmenter import Segmenter, load_segmenter
from segray.inference.tta import TTA_MODES
from segray.models.blocks import MIN_INPUT_SIZE
from segray.storage import Location, published_file

__all__ = [
    "CHECK_SIZES",
    "FORMATS",
    "MASK_TOLERANCE",
    "TOLERANCE",
    "ExportError",
    "ExportReport",
    "MaskModel",
    "Preprocess",
    "ProbabilityModel",
    "export_model",
]

Format = Literal["torchscript", "onnx"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx")
TOLERANCE: dict[str, float] = {"torchscript": 1e-4, "onnx": 1e-3}  # max abs diff vs eager
MASK_TOLERANCE = 1e-3  # fraction of mask pixels that may differ (ties at a threshold)
TRACE_SIZE = (64, 64)  # (H, W) of the single example image the trace sees
CHECK_SIZES = ((96, 128), (67, 93), (20, 45))  # (H, W) of the parity checks, two images each
OPSET = 17

# images (N, H, W, C) uint8 -> probabilities (N, K, H, W) and masks (N, H, W)
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class ExportError(UserError, RuntimeError):
    """An export that cannot be made or does not reproduce eager PyTorch; one-line message."""


@dataclass(frozen=True)
class ExportReport:
    """What `export_model` wrote and how closely it matches `segray.inference.segmenter.load_segmenter`.

    ``max_abs_diff`` maps each checked size ``"HxW"`` to the largest absolute difference of
    the artifact's probabilities from the Segmenter's on the same images; ``mask_mismatch``
    to the fraction of mask pixels that differ.
    """

    path: Path
    format: str
    max_abs_diff: dict[str, float]
    model_id: str
    mask_mismatch: dict[str, float]
    ensemble_size: int = 1
    tta: str = "none"


class MaskModel(nn.Module):
    """One uint8 image (H, W) or (H, W, C) of any size -> its (H, W) uint8 mask, as
    `Segmenter.predict` (TorchScript-scriptable; `probabilities` gives the (K, H, W) float32
    probabilities before thresholds).

    Args:
        net: `ProbabilityModel` (or its trace): (N, H, W, C) uint8 -> (N, K, H, W).
        segmenter: the `Segmenter` whose settings (channels, tiles, thresholds,
            post-processing) it reproduces.
    """

    def __init__(self, net: nn.Module, segmenter: Segmenter) -> None:
        super().__init__()
        post = segmenter.postprocess
        self.net = net
        self.channels: int = segmenter.channels
        # data.intensity_range, as JSON: how raw high-bit-depth images were mapped to the
        # uint8 this artefact takes (`segray.data.decode_image(..., intensity_range=...)`).
        self.intensity_range: str = json.dumps(segmenter.config.data.intensity_range)
        self.tile_size: int = segmenter.tile_size
        self.stride: int = max(1, round(segmenter.tile_size * (1 - segmenter.tile_overlap)))
        self.batch_size: int = segmenter.batch_size
        self.num_classes: int = segmenter.num_classes
        self.thresholds: list[float] = list(post.thresholds)
        self.min_component_px: list[int] = list(post.min_component_px)
        self.fill_holes: list[bool] = list(post.fill_holes)
        self.keep_largest: list[bool] = list(post.keep_largest)
        self.steps: bool = post.steps
        self.min_size: int = MIN_INPUT_SIZE

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.outputs(image)[1]

    @torch.jit.export
    def outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(`probabilities`, mask) of one image, computed once."""
        probs = self.probabilities(image)
        mask = threshold_torch(probs, self.thresholds)
        if self.steps:
            mask = postprocess_torch(
                mask, self.min_component_px, self.fill_holes, self.keep_largest
            )
        return probs, mask

    @torch.jit.export
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """(K, H, W) float32 probabilities of one uint8 image (H, W) or (H, W, C)."""
        x = self._channels(image)
        h, w = x.shape[0], x.shape[1]
        if max(h, w) > self.tile_size:
            return self._tiled(x)
        return self._forward(x.unsqueeze(0))[0]

    def _channels(self, image: torch.Tensor) -> torch.Tensor:
        """`segray.inference.segmenter.Segmenter.to_array` of a uint8 array, in torch."""
        if image.dtype != torch.uint8:
            raise ValueError("the image must be a uint8 tensor (H, W) or (H, W, C)")
        if image.dim() == 2:
            image = image.unsqueeze(-1)
        if image.dim() != 3:
            raise ValueError("the image must be (H, W) or (H, W, C)")
        if image.shape[2] == self.channels:  # the model's own bands (multi-band included)
            return image
        if image.shape[2] > 4:
            raise ValueError("the image must be (H, W), (H, W, 1|3|4) or the model's bands")
        if image.shape[2] == 2 or image.shape[2] == 4:  # drop alpha
            image = image[:, :, :-1]
        if image.shape[2] == self.channels:
            return image
        if image.shape[2] != 1 and image.shape[2] != 3:
            raise ValueError("the image's bands do not match the model's input channels")
        if self.channels == 3:
            return image.expand(-1, -1, 3)
        rgb = image.to(torch.int32)  # PIL's RGB -> L: ITU-R 601 luma, rounded
        luma = rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000
        return (luma >> 16).to(torch.uint8).unsqueeze(-1)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) uint8 -> (N, K, H, W); sides under the minimum edge-padded."""
        h, w = images.shape[1], images.shape[2]
        if h < self.min_size or w < self.min_size:
            rows = torch.arange(max(h, self.min_size), device=images.device).clamp(max=h - 1)
            cols = torch.arange(max(w, self.min_size), device=images.device).clamp(max=w - 1)
            images = images.index_select(1, rows).index_select(2, cols)
        return self.net(images)[:, :, :h, :w]

    def _tiled(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[0], image.shape[1]
        th, tw = min(self.tile_size, h), min(self.tile_size, w)
        corners: list[tuple[int, int]] = []
        for y in _starts(h, th, self.stride):
            for x in _starts(w, tw, self.stride):
                corners.append((y, x))
        window = (_hann(th)[:, None] * _hann(tw)[None, :]).to(image.device)
        total = torch.zeros(self.num_classes, h, w, device=image.device)
        weight = torch.zeros(h, w, device=image.device)
        for start in range(0, len(corners), self.batch_size):
            chunk = corners[start : start + self.batch_size]
            tiles = torch.stack([image[y : y + th, x : x + tw] for y, x in chunk])
            probs = self._forward(tiles)
            for k in range(len(chunk)):
                y, x = chunk[k]
                total[:, y : y + th, x : x + tw] += probs[k] * window
                weight[y : y + th, x : x + tw] += window
        return total / weight


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """`segray.inference.segmenter._starts` (scriptable)."""
    if length <= tile:
        return [0]
    out = list(range(0, length - tile, stride))
    out.append(length - tile)
    return out


def _hann(n: int) -> torch.Tensor:
    """`segray.inference.segmenter._hann` (scriptable)."""
    i = torch.arange(n, dtype=torch.float64)
    return torch.sin(math.pi * (i + 0.5) / n).square().float()


def export_model(
    checkpoint: str | Path, fmt: Format, output: str | Path, *, tta: str | None = None
) -> ExportReport:
    """Export ``checkpoint`` (single or ensemble) to ``output`` as ``fmt``, parity-checked.

    Args:
        checkpoint: a checkpoint directory, path or URI; its ``segment`` settings (tiles,
            TTA, thresholds, post-processing) are exported with it.
        fmt: ``torchscript`` (the whole inference, `MaskModel`) or ``onnx`` (module docstring).
        output: the artifact's path or URI.
        tta: ``none | flip | d4``; default the checkpoint's ``segment.tta``.

    Raises:
        ValueError: an unknown format or TTA mode.
        ExportError: ONNX without onnx/onnxruntime installed, ONNX with connected-component
            post-processing, or an artifact that does not reproduce the Segmenter (the file is
            then removed).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if tta is not None and tta not in TTA_MODES:
        raise ValueError(f"unknown tta mode {tta!r}; valid: {', '.join(TTA_MODES)}")
    local = fetch_checkpoint(checkpoint)  # a URI: only weights and configs are fetched
    seg = load_segmenter(local, device="cpu", precision="fp32", tta=tta)
    if fmt == "onnx" and seg.postprocess.steps:
        raise ExportError(
            f"{checkpoint}: segment.min_component_px / fill_holes / keep_largest need "
            "connected components, which ONNX cannot express: export --format torchscript "
            "(the whole inference), or turn them off for an ONNX artifact"
        )
    net = ProbabilityModel(seg.net.members, seg.net.preprocesses, tta=seg.tta).eval()
    reference = seg  # ONNX runs images whole: compare with a Segmenter that does too
    if fmt == "onnx":
        whole = max(max(size) for size in CHECK_SIZES)
        reference = load_segmenter(local, device="cpu", precision="fp32", tta=tta, tile_size=whole)
    target = str(output)
    with published_file(output) as path:  # a URI: written here, then uploaded
        example = torch.from_numpy(_random_images(1, TRACE_SIZE, seg.channels, seed=0))
        run = (_torchscript if fmt == "torchscript" else _onnx)(net, seg, example, path)
        diffs, mismatch = {}, {}
        for seed, (h, w) in enumerate(CHECK_SIZES, start=1):
            if fmt == "onnx" and min(h, w) < MIN_INPUT_SIZE:
                continue  # the ONNX artifact takes sides >= 32
            n = 2 if fmt == "onnx" else 1  # a batch for ONNX's dynamic N; MaskModel takes one
            images = _random_images(n, (h, w), seg.channels, seed=seed)
            probs, masks = run(images)
            expected = reference.predict_batch_proba(list(images))
            expected_probs = np.stack([e if e.ndim == 3 else e[None] for e in expected])
            expected_masks = np.stack([reference.mask_from_proba(e) for e in expected])
            diffs[f"{h}x{w}"] = float(np.abs(probs - expected_probs).max())
            mismatch[f"{h}x{w}"] = float((masks != expected_masks).mean())
        worst = max(diffs.values())
        if not (worst <= TOLERANCE[fmt] and max(mismatch.values()) <= MASK_TOLERANCE):  # NaN too
            path.unlink(missing_ok=True)
            raise ExportError(
                f"{target}: the {fmt} artifact differs from load_segmenter(...).predict by up "
                f"to {worst:.2e} in probability (> {TOLERANCE[fmt]:.0e}?) and {max(mismatch.values()):.1e} "
                f"of mask pixels (> {MASK_TOLERANCE:.0e}?; per size: {diffs}, {mismatch}); "
                "it was removed"
            )
    shown = path if Location.parse(target).is_local else target
    return ExportReport(
        shown, fmt, diffs, seg.model_id, mismatch, ensemble_size=seg.ensemble_size, tta=seg.tta
    )


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence the tracer's shape-check notes and TorchScript's deprecation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        yield


def _torchscript(net: nn.Module, seg: Segmenter, example: torch.Tensor, output: Path) -> Runner:
    """Trace ``net``, script `MaskModel` around it, save, and return a runner of the file."""
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.script(MaskModel(traced, seg)).save(str(output))
        loaded = torch.jit.load(str(output), map_location="cpu")

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, C) -> (N, K, H, W) probabilities and (N, H, W) masks, image by image."""
        with torch.inference_mode():
            pairs = [loaded.outputs(torch.from_numpy(image)) for image in images]
        return np.stack([p.numpy() for p, _ in pairs]), np.stack([m.numpy() for _, m in pairs])

    return run


class _Thresholded(nn.Module):
    """`ProbabilityModel` with its thresholded masks as a second output (for ONNX)."""

    def __init__(self, net: nn.Module, thresholds: list[float]) -> None:
        super().__init__()
        self.net = net
        self.thresholds = thresholds

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.net(images)
        if probs.shape[1] == 1:
            return probs, (probs[:, 0] >= self.thresholds[0]).to(torch.uint8)
        top, mask = probs.max(dim=1)
        limits = torch.tensor([0.0, *self.thresholds], dtype=probs.dtype, device=probs.device)
        limits = limits[mask]
        return probs, torch.where(top < limits, torch.zeros_like(mask), mask).to(torch.uint8)


def _onnx(net: nn.Module, seg: Segmenter, example: torch.Tensor, output: Path) -> Runner:
    """Export ``net`` to ONNX with dynamic N/H/W and return an onnxruntime runner of the file."""
    try:
        import onnx  # torch's exporter serialises through it; the metadata is added with it
        import onnxruntime
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx and onnxruntime packages: pip install 'segray[onnx]'"
        ) from None
    with _quiet_jit(), torch.no_grad():
        torch.onnx.export(
            _Thresholded(net, list(seg.postprocess.thresholds)),
            (example,),
            str(output),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["probs", "mask"],
            dynamic_axes={
                "images": {0: "N", 1: "H", 2: "W"},
                "probs": {0: "N", 2: "H", 3: "W"},
                "mask": {0: "N", 1: "H", 2: "W"},
            },
        )
    model = onnx.load(str(output))
    entry = model.metadata_props.add()  # how raw images were mapped to the uint8 input
    entry.key, entry.value = "intensity_range", json.dumps(seg.config.data.intensity_range)
    onnx.save(model, str(output))
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, masks = session.run(["probs", "mask"], {"images": images})
        return probs, masks

    return run


def _random_images(n: int, size: tuple[int, int], channels: int, seed: int) -> np.ndarray:
    """(n, H, W, channels) uniformly random uint8 images."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *size, channels), dtype=np.uint8)
