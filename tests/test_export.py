"""Tests of segray.export: TorchScript (and, when installed, ONNX) artifacts and their parity."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from segray.checkpoint import build_model, model_id, save_checkpoint
from segray.config import load_config
from segray.export import TOLERANCE, ExportError, export_model
from segray.predict import load_segmenter

SMALL_RESNET = [
    "model.name=resnet_unet",
    "model.encoder=resnet18",
    "model.decoder_channels=[32,16,16,8]",
]
CHECKPOINTS = {
    "unet-binary": ["model.name=unet", "model.base_width=8"],
    "resnet18-3class": SMALL_RESNET
    + ["data.classes=[bg,a,b]", "data.mask_mode=index", "loss.name=ce"],
    "unet-gray-custom-norm": [
        "model.name=unet",
        "model.base_width=8",
        "model.in_channels=1",
        "data.mean=[0.3]",
        "data.std=[0.2]",
    ],
}


def _checkpoint(directory: Path, overrides: list[str]) -> Path:
    config = load_config(None, overrides)
    torch.manual_seed(0)
    return save_checkpoint(directory, model=build_model(config), config=config, metrics={})


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp(request.param), CHECKPOINTS[request.param])


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.x
        return torch.jit.load(str(path))


def _assert_matches_segmenter(ckpt: Path, run) -> None:
    """The artifact's probabilities on a raw uint8 image equal `Segmenter.predict_proba`."""
    seg = load_segmenter(ckpt, device="cpu", precision="fp32")  # artifacts are fp32
    image = np.random.default_rng(7).integers(0, 256, (70, 90, seg.channels), dtype=np.uint8)
    probs = run(image[None])
    assert probs.shape == (1, seg.num_classes, 70, 90) and probs.dtype == np.float32
    expected = seg.predict_proba(image)
    np.testing.assert_allclose(
        probs[0, 0] if seg.num_classes == 1 else probs[0], expected, atol=1e-4
    )


def test_torchscript_export_round_trips(ckpt: Path, tmp_path: Path) -> None:
    report = export_model(ckpt, "torchscript", tmp_path / "out" / "model.ts")
    assert report.path == tmp_path / "out" / "model.ts" and report.path.is_file()
    assert report.format == "torchscript"
    assert report.model_id == model_id(ckpt)
    assert len(report.max_abs_diff) == 2
    assert all(0 <= d < 1e-4 for d in report.max_abs_diff.values()), report.max_abs_diff
    artifact = _jit_load(report.path)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return artifact(torch.from_numpy(images)).numpy()

    _assert_matches_segmenter(ckpt, run)


def test_onnx_export_round_trips(ckpt: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    report = export_model(ckpt, "onnx", tmp_path / "model.onnx")
    assert report.path.is_file() and report.format == "onnx"
    assert len(report.max_abs_diff) == 2
    assert all(d < 1e-3 for d in report.max_abs_diff.values()), report.max_abs_diff
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    _assert_matches_segmenter(ckpt, lambda images: session.run(None, {"images": images})[0])


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("unet"), CHECKPOINTS["unet-binary"])


def test_onnx_without_its_packages_names_the_extra(
    unet_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ExportError, match=r"pip install 'segray\[onnx\]'"):
        export_model(unet_ckpt, "onnx", tmp_path / "model.onnx")


def test_parity_failure_raises_and_removes_the_artifact(
    unet_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TOLERANCE, "torchscript", -1.0)
    with pytest.raises(ExportError, match="differs from eager PyTorch"):
        export_model(unet_ckpt, "torchscript", tmp_path / "model.ts")
    assert not (tmp_path / "model.ts").exists()


def test_unknown_format_lists_the_valid_ones(unet_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid: torchscript, onnx"):
        export_model(unet_ckpt, "tflite", tmp_path / "model.tflite")  # type: ignore[arg-type]


def test_export_to_object_storage(unet_ckpt: Path, s3_bucket: str, tmp_path: Path) -> None:
    from segray.storage import Location

    target = f"{s3_bucket}/models/unet.pt"
    report = export_model(unet_ckpt, "torchscript", target)
    assert report.path == target
    local = tmp_path / "unet.pt"
    local.write_bytes(Location.parse(target).read_bytes())
    artifact = _jit_load(local)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return artifact(torch.from_numpy(images)).numpy()

    _assert_matches_segmenter(unet_ckpt, run)
