"""Export a checkpoint as one self-contained artifact: raw uint8 images in, probabilities out.

    report = export_model("runs/train/checkpoints/best", "torchscript", "model.ts")
    model = torch.jit.load("model.ts")
    probs = model(torch.from_numpy(images_nhwc_uint8))    # (N, K, H, W) float32

The artifact wraps the network in `ProbabilityModel`: uint8 (N, H, W, C) -> /255 and the
config's mean/std (`segray.predict.Preprocess`, baked in as buffers) -> NCHW -> model ->
sigmoid (K = 1) or softmax (K > 1). N, H and W are dynamic (H, W >= 32, the models' minimum).

TorchScript is produced by ``torch.jit.trace``: every registered model computes its resizes and
paddings from tensor shapes, which the tracer records, so nothing is baked to the traced size.
ONNX (opset 17, ``pip install 'segray[onnx]'``) uses the TorchScript-based exporter with
dynamic axes, which needs only the ``onnx`` package (the torch.export-based one would also
need ``onnxscript``). Either way the artifact is loaded back and run on random images of two
sizes other than the traced one (another aspect ratio, and sides that are not multiples of
32), with a batch of 2 where the trace saw 1; a difference from eager PyTorch above
`TOLERANCE` is an `ExportError` and the artifact is removed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from segray.checkpoint import fetch_checkpoint, load_model, model_id
from segray.metrics import probs_from_logits
from segray.predict import Preprocess
from segray.storage import Location, published_file

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "ExportError",
    "ExportReport",
    "ProbabilityModel",
    "export_model",
]

Format = Literal["torchscript", "onnx"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx")
TOLERANCE: dict[str, float] = {"torchscript": 1e-4, "onnx": 1e-3}  # max abs diff vs eager
TRACE_SIZE = (64, 64)  # (H, W) of the single example image the export sees
CHECK_SIZES = ((96, 128), (67, 93))  # (H, W) of the parity checks, two images each
OPSET = 17

Runner = Callable[[np.ndarray], np.ndarray]  # (N, H, W, C) uint8 -> (N, K, H, W) float32


class ExportError(RuntimeError):
    """An export that cannot be made or does not reproduce eager PyTorch; one-line message."""


@dataclass(frozen=True)
class ExportReport:
    """What `export_model` wrote and how closely it matches eager PyTorch.

    ``max_abs_diff`` maps each checked size ``"HxW"`` to the largest absolute difference of
    the artifact's probabilities from eager PyTorch's on the same images.
    """

    path: Path
    format: str
    max_abs_diff: dict[str, float]
    model_id: str


class ProbabilityModel(nn.Module):
    """(N, H, W, C) uint8 images -> (N, K, H, W) float32 probabilities, as `Segmenter` computes.

    Args:
        model: the segmentation network (logits at input resolution).
        preprocess: the `Preprocess` of its config (scaling and normalisation).
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return probs_from_logits(self.model(self.preprocess(images)))


def export_model(checkpoint: str | Path, fmt: Format, output: str | Path) -> ExportReport:
    """Export ``checkpoint`` to ``output`` as ``fmt`` ("torchscript" or "onnx"), parity-checked.

    Raises:
        ValueError: an unknown format.
        ExportError: ONNX without onnx/onnxruntime installed, or an artifact whose outputs
            differ from eager PyTorch by more than `TOLERANCE` (the file is then removed).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    checkpoint = fetch_checkpoint(checkpoint)  # a URI: only weights and config are fetched
    model, config = load_model(checkpoint, "cpu")
    channels = int(model.in_channels)
    net = ProbabilityModel(model, Preprocess.from_config(config, channels)).eval()
    target = str(output)
    with published_file(output) as path:  # a URI: written here, then uploaded
        example = torch.from_numpy(_random_images(1, TRACE_SIZE, channels, seed=0))
        exporter = _torchscript if fmt == "torchscript" else _onnx
        run = exporter(net, example, path)

        diffs = {}
        for seed, (h, w) in enumerate(CHECK_SIZES, start=1):
            images = _random_images(2, (h, w), channels, seed=seed)
            with torch.inference_mode():
                expected = net(torch.from_numpy(images)).numpy()
            diffs[f"{h}x{w}"] = float(np.abs(run(images) - expected).max())
        worst = max(diffs.values())
        if not worst <= TOLERANCE[fmt]:  # NaN fails too
            path.unlink(missing_ok=True)
            raise ExportError(
                f"{target}: the {fmt} artifact differs from eager PyTorch by up to {worst:.2e} "
                f"(> {TOLERANCE[fmt]:.0e}; per size: {diffs}); it was removed"
            )
    shown = path if Location.parse(target).is_local else target
    return ExportReport(shown, fmt, diffs, model_id(checkpoint))


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence the tracer's shape-check notes and TorchScript's deprecation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        yield


def _torchscript(net: nn.Module, example: torch.Tensor, output: Path) -> Runner:
    """Trace ``net`` on ``example``, save it, and return a runner of the reloaded file."""
    with _quiet_jit(), torch.no_grad():
        torch.jit.trace(net, example, check_trace=False).save(str(output))
        loaded = torch.jit.load(str(output), map_location="cpu")

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(images)).numpy()

    return run


def _onnx(net: nn.Module, example: torch.Tensor, output: Path) -> Runner:
    """Export ``net`` to ONNX with dynamic N/H/W and return an onnxruntime runner of the file."""
    try:
        import onnx  # noqa: F401  (torch's exporter serialises through it)
        import onnxruntime
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx and onnxruntime packages: pip install 'segray[onnx]'"
        ) from None
    with _quiet_jit(), torch.no_grad():
        torch.onnx.export(
            net,
            (example,),
            str(output),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["probs"],
            dynamic_axes={"images": {0: "N", 1: "H", 2: "W"}, "probs": {0: "N", 2: "H", 3: "W"}},
        )
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(["probs"], {"images": images})[0]

    return run


def _random_images(n: int, size: tuple[int, int], channels: int, seed: int) -> np.ndarray:
    """(n, H, W, channels) uniformly random uint8 images."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *size, channels), dtype=np.uint8)
