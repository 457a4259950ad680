"""Tests of segray.inference through segray.inference.segmenter: TTA, ensembles, thresholds and
post-processing, and choosing them on held-out predictions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from segray.checkpoint import (
    CheckpointError,
    build_model,
    fetch_checkpoint,
    load_model,
    model_id,
    save_checkpoint,
)
from segray.config import ConfigError, load_config
from segray.inference import PostProcess, choose_postprocessing, transforms, write_ensemble
from segray.inference.postprocess import postprocess_torch
from segray.inference.segmenter import Segmenter, load_segmenter

UNET = ["model.name=unet", "model.base_width=8", "segment.tile_size=64"]


# --------------------------------------------------------------------------- helpers
class Conv(nn.Module):
    """A one-layer model with the attributes `Segmenter` reads."""

    def __init__(self, kernel: int, num_classes: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.in_channels, self.num_classes = 3, num_classes
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, num_classes, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _segmenter(model: nn.Module, tta: str, **kwargs) -> Segmenter:
    config = load_config(None, kwargs.pop("overrides", []))
    return Segmenter(model, config, precision="fp32", tta=tta, **kwargs)


def _image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def _checkpoint(
    directory: Path, seed: int, overrides: list[str] = UNET, noise: float = 0.0
) -> Path:
    """A tiny U-Net with sharp logits (masks with both classes on noise images); ``noise``
    perturbs the weights of seed's model, for ensemble members that mostly agree."""
    config = load_config(None, overrides)
    torch.manual_seed(seed)
    model = build_model(config)
    generator = torch.Generator().manual_seed(1000 + int(noise * 1000))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * p.abs().mean() * torch.randn(p.shape, generator=generator))
        model.head.weight.mul_(200)
        model.head.bias.zero_()
    return save_checkpoint(directory, model=model, config=config, metrics={"seed": seed})


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two members: one model and a perturbed copy (they agree on most pixels)."""
    root = tmp_path_factory.mktemp("members")
    return [_checkpoint(root / f"m{i}", seed=0, noise=0.3 * i) for i in range(2)]


# --------------------------------------------------------------------------- TTA
def test_transforms_invert_exactly_and_d4_has_eight_distinct() -> None:
    from segray.inference.tta import apply, invert

    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    images = []
    for t in transforms("d4"):
        assert torch.equal(invert(apply(x, t), t), x)
        images.append(apply(x[0, 0], t).flatten().tolist())
    assert len(transforms("flip")) == 4 and len(transforms("none")) == 1
    assert len({tuple(i) for i in images}) == 8  # all 8 symmetries differ on a 5x7 ramp
    with pytest.raises(ValueError, match="valid: none, flip, d4"):
        transforms("rot")


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_of_an_equivariant_model_equals_no_tta(tta: str) -> None:
    image = _image(40, 52)
    plain = _segmenter(Conv(1), "none").predict_proba(image)
    np.testing.assert_allclose(_segmenter(Conv(1), tta).predict_proba(image), plain, atol=1e-6)


def test_d4_of_an_orientation_sensitive_model_is_the_hand_computed_average() -> None:
    model = Conv(3, seed=1).eval()
    seg = _segmenter(model, "d4")
    image = _image(36, 44, seed=2)
    x = seg.preprocess(torch.from_numpy(image)[None])
    expected = torch.zeros(1, 1, 36, 44)
    with torch.no_grad():
        for flip in (False, True):  # rotations by k * 90 degrees, of x and of its mirror
            xf = x.flip(-1) if flip else x
            for k in range(4):
                p = torch.sigmoid(model(torch.rot90(xf, k, (-2, -1))))
                p = torch.rot90(p, -k, (-2, -1))
                expected += p.flip(-1) if flip else p
    expected = (expected / 8)[0, 0].numpy()
    got = seg.predict_proba(image)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    plain = _segmenter(model, "none").predict_proba(image)
    assert np.abs(plain - expected).max() > 1e-3  # the model does see orientation


@torch.inference_mode()
def test_tta_with_tiles_equals_tta_on_the_whole_image() -> None:
    seg = _segmenter(Conv(3, seed=3), "d4", tile_size=48)
    image = seg.to_array(_image(48, 40, seed=4))
    whole, _ = seg._forward(image[None])
    tiled, _ = seg._predict_tiled(image)  # one tile the size of the image, Hann-weighted
    np.testing.assert_allclose(tiled.numpy(), whole[0].numpy(), atol=1e-6)
    # and a really tiled image: each tile's TTA equals TTA of the tile cropped by hand
    big = seg.to_array(_image(80, 56, seed=5))
    tile = big[:48, :48]
    alone = _segmenter(Conv(3, seed=3), "d4", tile_size=48).predict_proba(tile)
    np.testing.assert_allclose(seg._forward(tile[None])[0][0, 0].numpy(), alone, atol=1e-6)
    assert seg.predict_proba(big).shape == (80, 56)


# --------------------------------------------------------------------------- ensembles
def test_ensemble_of_one_equals_its_member(members: list[Path], tmp_path: Path) -> None:
    ensemble = write_ensemble(members[:1], tmp_path / "ens")
    image = _image(70, 45, seed=1)  # tiled at tile_size 64
    single = load_segmenter(members[0], device="cpu", precision="fp32")
    one = load_segmenter(ensemble, device="cpu", precision="fp32")
    assert one.ensemble_size == 1 and one.model_id == model_id(ensemble) != single.model_id
    assert np.array_equal(one.predict_proba(image), single.predict_proba(image))
    assert next(one.iter_batch_outputs([image]))[2] is None


def test_ensemble_of_two_is_the_mean_of_its_members(members: list[Path], tmp_path: Path) -> None:
    ensemble = write_ensemble(members, tmp_path / "ens", names=["fold0", "fold1"])
    manifest = json.loads((ensemble / "ensemble.json").read_text())
    assert manifest["members"] == ["members/fold0", "members/fold1"]
    seg = load_segmenter(ensemble, device="cpu", precision="fp32")
    image = _image(37, 53, seed=2)
    a, b = (load_segmenter(m, device="cpu", precision="fp32").predict_proba(image) for m in members)
    np.testing.assert_allclose(seg.predict_proba(image), (a + b) / 2, atol=1e-7)
    _, _, disagreement = next(seg.iter_batch_outputs([image]))
    np.testing.assert_allclose(disagreement, np.abs(a - b).mean() / 2, rtol=1e-5)  # std of 2
    with pytest.raises(CheckpointError, match="load_segmenter"):
        load_model(ensemble)


def test_ensemble_carries_inference_settings(members: list[Path], tmp_path: Path) -> None:
    settings = {"tta": "flip", "thresholds": [0.4], "segment.keep_largest": True}
    ensemble = write_ensemble(members, tmp_path / "ens", inference_settings=settings)
    seg = load_segmenter(ensemble, device="cpu", precision="fp32")
    assert seg.tta == "flip" and seg.threshold == 0.4 and seg.postprocess.keep_largest == (True,)
    mask = seg.predict(_image(40, 40, seed=3))
    assert ndimage.label(mask, structure=np.ones((3, 3)))[1] <= 1
    with pytest.raises(ConfigError, match="thresholds"):
        write_ensemble(members, tmp_path / "bad", inference_settings={"thresholds": [0.4, 0.5]})
    with pytest.raises(ValueError, match="unknown inference setting 'lr'"):
        write_ensemble(members, tmp_path / "bad", inference_settings={"lr": 1})
    assert not (tmp_path / "bad").exists()


def test_ensemble_round_trips_through_s3(
    members: list[Path], s3_bucket: str, tmp_path: Path
) -> None:
    from segray.storage import Location

    ensemble = write_ensemble(members, tmp_path / "ens", inference_settings={"tta": "flip"})
    uri = f"{s3_bucket}/cv/ensemble"
    for path in ensemble.rglob("*"):
        if path.is_file():
            Location.parse(uri).join(path.relative_to(ensemble).as_posix()).write(path.read_bytes())
    local = fetch_checkpoint(uri)
    assert (local / "members" / "member1" / "model.pt").is_file()
    assert model_id(local) == model_id(ensemble)
    image = _image(33, 41, seed=4)
    remote = load_segmenter(uri, device="cpu", precision="fp32")
    here = load_segmenter(ensemble, device="cpu", precision="fp32")
    assert remote.ensemble_size == 2 and remote.tta == "flip"
    assert np.array_equal(remote.predict_proba(image), here.predict_proba(image))


# --------------------------------------------------------------------------- post-processing
def _blob_mask() -> np.ndarray:
    mask = np.zeros((20, 24), np.uint8)
    mask[2:12, 2:12] = 1  # a 10x10 square with a hole
    mask[6:8, 6:8] = 0
    mask[15:18, 15:20] = 1  # a 3x5 component
    mask[0, 23] = 1  # a one-pixel speck
    return mask


def test_postprocessing_steps_on_a_hand_made_mask() -> None:
    mask = _blob_mask()
    no_speck = PostProcess.create(1, min_component_px=2).apply(mask)
    assert no_speck[0, 23] == 0 and no_speck.sum() == mask.sum() - 1
    filled = PostProcess.create(1, fill_holes=True).apply(mask)
    assert filled[6:8, 6:8].all() and filled.sum() == mask.sum() + 4
    largest = PostProcess.create(1, keep_largest=True).apply(mask)
    assert largest.sum() == 96 and largest[2:12, 2:12].sum() == 96
    assert np.array_equal(mask, _blob_mask())  # the input is untouched


def test_multiclass_thresholds_and_fill_holes_keep_other_classes() -> None:
    mask = np.zeros((9, 9), np.uint8)
    mask[1:8, 1:8] = 1
    mask[3:6, 3:6] = 0
    mask[4, 4] = 2  # class 2 inside class 1's hole: kept
    out = PostProcess.create(3, fill_holes=[True, False]).apply(mask)
    assert out[4, 4] == 2 and (out[3:6, 3:6] > 0).all()
    proba = np.array([[[0.2]], [[0.45]], [[0.35]]], np.float32)  # class 1 wins with 0.45
    assert PostProcess.create(3).threshold(proba)[0, 0] == 1
    assert PostProcess.create(3, thresholds=[0.5, 0.1]).threshold(proba)[0, 0] == 0


def test_torch_postprocessing_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    scripted = torch.jit.script(postprocess_torch)
    for trial in range(6):
        classes = 2 if trial < 3 else 3
        mask = ndimage.binary_opening(rng.random((23, 31)) > 0.55).astype(np.uint8)
        if classes == 3:
            mask[rng.random(mask.shape) > 0.8] = 2
        post = PostProcess.create(
            max(1, classes),
            min_component_px=3 + trial,
            fill_holes=True,
            keep_largest=trial % 2 == 0,
        )
        expected = post.apply(mask)
        got = scripted(
            torch.from_numpy(mask),
            list(post.min_component_px),
            list(post.fill_holes),
            list(post.keep_largest),
        )
        assert np.array_equal(got.numpy(), expected), trial


def test_choose_postprocessing_keeps_only_steps_that_help() -> None:
    rng = np.random.default_rng(1)
    truth, probas = [], []
    for _ in range(4):  # a true square; predicted well, plus false specks
        target = np.zeros((32, 32), np.uint8)
        target[8:24, 8:24] = 1
        proba = np.where(target == 1, 0.9, 0.1).astype(np.float32)
        for y, x in rng.integers(0, 32, (5, 2)):
            if target[y, x] == 0:
                proba[y, x] = 0.8
        truth.append(target)
        probas.append(proba)
    choice = choose_postprocessing(probas, truth, thresholds=[0.5], min_sizes=[4])
    assert choice.settings["min_component_px"] == [4] or choice.settings["keep_largest"] == [True]
    assert choice.dice > choice.baseline_dice
    assert choice.settings["fill_holes"] == [False]  # nothing to fill: not kept

    # Truth with several small objects: removing or dropping components hurts, so neither is kept.
    many = np.zeros((32, 32), np.uint8)
    for y, x in ((2, 2), (10, 20), (25, 5), (20, 25)):
        many[y : y + 2, x : x + 2] = 1
    proba = np.where(many == 1, 0.9, 0.1).astype(np.float32)
    kept = choose_postprocessing([proba] * 3, [many] * 3, thresholds=[0.5], min_sizes=[8])
    assert kept.settings["min_component_px"] == [0] and kept.settings["keep_largest"] == [False]
    assert kept.dice == kept.baseline_dice == 1.0

    # A biased model (true objects at 0.4): the threshold grid finds a better cut-off.
    biased = np.where(many == 1, 0.4, 0.1).astype(np.float32)
    chosen = choose_postprocessing([biased], [many], thresholds=[0.3, 0.5])
    assert chosen.settings["thresholds"] == [0.3] and chosen.dice == 1.0 > chosen.baseline_dice


# --------------------------------------------------------------------------- segment
@pytest.mark.integration
def test_segment_runs_an_ensemble_with_tta(ray_local, members: list[Path], tmp_path: Path) -> None:
    """`segray segment --tta flip` of an ensemble on a real local Ray: masks equal
    `load_segmenter(...).predict` and every row carries its ensemble disagreement; a single
    checkpoint leaves the column null."""
    import pandas as pd
    from PIL import Image

    from segray.cli import main
    from segray.segment import run_segment

    photos = tmp_path / "photos"
    photos.mkdir()
    images = {f"{i}.png": _image(36, 36 + 5 * i, seed=10 + i) for i in range(3)}
    for name, image in images.items():
        Image.fromarray(image).save(photos / name)
    ensemble = write_ensemble(members, tmp_path / "ens")
    out = tmp_path / "out"
    assert main(["segment", "--checkpoint", str(ensemble), "--input", str(photos),
                 "--output", str(out), "--tta", "flip"]) == 0  # fmt: skip
    df = pd.read_parquet(out / "parquet").set_index("image_id")
    seg = load_segmenter(ensemble, device="cpu", tta="flip")
    for name, image in images.items():
        row = df.loc[name]
        assert row.status == "ok"
        mask = np.asarray(Image.open(io.BytesIO(row.mask_png)))
        assert np.array_equal(mask, seg.predict(image))
        _, _, expected = next(seg.iter_batch_outputs([image]))
        assert row.ensemble_disagreement > 0
        np.testing.assert_allclose(row.ensemble_disagreement, expected, rtol=1e-3)
    single = run_segment(members[0], [str(photos)], str(tmp_path / "single"), progress=False)
    assert single["ok"] == 3
    rows = pd.read_parquet(tmp_path / "single" / "parquet")
    assert rows.ensemble_disagreement.isna().all()
