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
from segray.export import CHECK_SIZES, MASK_TOLERANCE, TOLERANCE, ExportError, export_model
from segray.inference.segmenter import load_segmenter

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


def _image(n: int, h: int, w: int, channels: int = 3, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, channels), dtype=np.uint8)


def _script_runner(artifact: torch.jit.ScriptModule):
    """(N, H, W, C) -> (N, K, H, W) by the TorchScript artifact's `probabilities`, per image."""

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.stack([artifact.probabilities(torch.from_numpy(i)).numpy() for i in images])

    return run


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
    assert len(report.max_abs_diff) == len(CHECK_SIZES)
    assert all(0 <= d < 1e-4 for d in report.max_abs_diff.values()), report.max_abs_diff
    assert all(m <= MASK_TOLERANCE for m in report.mask_mismatch.values())
    _assert_matches_segmenter(ckpt, _script_runner(_jit_load(report.path)))


def test_onnx_export_round_trips(ckpt: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    report = export_model(ckpt, "onnx", tmp_path / "model.onnx")
    assert report.path.is_file() and report.format == "onnx"
    assert len(report.max_abs_diff) == 2
    assert all(d < 1e-3 for d in report.max_abs_diff.values()), report.max_abs_diff
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    _assert_matches_segmenter(ckpt, lambda images: session.run(None, {"images": images})[0])
    seg = load_segmenter(ckpt, device="cpu", precision="fp32")
    probs, masks = session.run(["probs", "mask"], {"images": _image(2, 40, 50, seg.channels)})
    expected = [seg.mask_from_proba(p[0] if seg.num_classes == 1 else p) for p in probs]
    assert np.array_equal(masks, np.stack(expected))


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
    with pytest.raises(ExportError, match=r"differs from load_segmenter\(\.\.\.\)\.predict"):
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
    _assert_matches_segmenter(unet_ckpt, _script_runner(_jit_load(local)))


# --------------------------------------------------------------------------- whole inference
POST = {"tta": "flip", "thresholds": [0.35], "min_component_px": 4, "fill_holes": True}


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two U-Net members that mostly agree, with flip TTA, a threshold and post-processing;
    tiles of 64 pixels so that 70x45 is tiled."""
    from segray.inference import write_ensemble
    from tests.test_inference import _checkpoint

    root = tmp_path_factory.mktemp("ensemble")
    members = [_checkpoint(root / f"m{i}", seed=0, noise=0.3 * i) for i in range(2)]
    return write_ensemble(
        members, root / "ens", inference_settings={**POST, "keep_largest": [True]}
    )


def test_torchscript_of_an_ensemble_with_tta_and_postprocessing_matches_predict(
    ensemble: Path, tmp_path: Path
) -> None:
    """The artifact's masks on odd sizes (tiled, padded, gray input to an RGB model) equal
    `load_segmenter(...).predict`: at most MASK_TOLERANCE (0.1%) of the pixels may differ, where a
    probability lies within float error (~1e-7) of the threshold; here none do."""
    report = export_model(ensemble, "torchscript", tmp_path / "ens.ts")
    assert report.ensemble_size == 2 and report.tta == "flip"
    artifact = _jit_load(report.path)
    seg = load_segmenter(ensemble, device="cpu", precision="fp32")
    assert seg.postprocess.steps and seg.tile_size == 64
    for i, (h, w) in enumerate(((37, 53), (70, 45), (21, 40))):
        image = _image(1, h, w, seed=i)[0]
        for given in (image, image[..., 0], np.dstack([image, image[..., :1]])):  # RGB, gray, RGBA
            with torch.inference_mode():
                mask = artifact(torch.from_numpy(np.ascontiguousarray(given))).numpy()
            expected = seg.predict(given)
            assert mask.shape == (h, w) and mask.dtype == np.uint8
            assert 0 < expected.mean() < 1  # both classes: a parity that means something
            assert (mask != expected).mean() <= MASK_TOLERANCE, (h, w, given.shape)


def test_onnx_of_an_ensemble_with_tta(ensemble: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ExportError, match="ONNX cannot express.*--format torchscript"):
        export_model(ensemble, "onnx", tmp_path / "ens.onnx")
    assert not (tmp_path / "ens.onnx").exists()
    from segray.inference import write_ensemble

    plain = write_ensemble(
        sorted((ensemble / "members").iterdir()),
        tmp_path / "plain",
        inference_settings={"tta": "flip", "thresholds": [0.35]},
    )
    report = export_model(plain, "onnx", tmp_path / "plain.onnx", tta="d4")
    assert report.tta == "d4" and all(d < 1e-3 for d in report.max_abs_diff.values())
