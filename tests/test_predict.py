"""Tests of segray.inference.segmenter: input kinds, shapes, tiling, batching, preprocessing (no Ray)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import segray
from segray.checkpoint import build_model, model_id, save_checkpoint
from segray.config import Config, load_config
from segray.data import default_norm, eval_transform
from segray.inference.segmenter import Preprocess, Segmenter, load_segmenter

TINY_UNET = ["model.name=unet", "model.base_width=8"]
THREE_CLASSES = ["data.classes=[bg,a,b]", "data.mask_mode=index", "loss.name=ce"]


def _checkpoint(directory: Path, overrides: list[str]) -> Path:
    config = load_config(None, overrides)
    torch.manual_seed(0)
    return save_checkpoint(directory, model=build_model(config), config=config, metrics={})


@pytest.fixture(scope="module")
def binary_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("binary"), TINY_UNET)


@pytest.fixture(scope="module")
def multi_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("multi"), TINY_UNET + THREE_CLASSES)


class Pointwise(nn.Module):
    """A model of 1x1 convolutions only: translation-equivariant, so tiling is exact."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 1), nn.Tanh(), nn.Conv2d(8, num_classes, 1)
        )
        self.input_shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_shapes.append(tuple(x.shape))
        return self.net(x) * 4  # sharper probabilities than a fresh init gives


def _pointwise_segmenter(num_classes: int = 1, in_channels: int = 3, **kwargs) -> Segmenter:
    torch.manual_seed(1)
    config = load_config(None, TINY_UNET + (THREE_CLASSES if num_classes > 1 else []))
    return Segmenter(Pointwise(in_channels, num_classes), config, **kwargs)


def _smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A random image with structure (so masks are not all one class)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 9.0 + c) * np.cos(yy / 7.0 - c) for c in range(3)], axis=2)
    noise = rng.normal(0, 0.2, (h, w, 3))
    return np.clip((base + noise + 1.2) * 105, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- shapes
def test_binary_predict_keeps_input_size(binary_ckpt: Path) -> None:
    seg = load_segmenter(binary_ckpt, device="cpu")
    image = _smooth_rgb(97, 131)
    mask = seg.predict(image)
    proba = seg.predict_proba(image)
    assert mask.shape == (97, 131) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert proba.shape == (97, 131) and proba.dtype == np.float32
    assert 0 <= proba.min() and proba.max() <= 1
    np.testing.assert_array_equal(mask, (proba >= seg.threshold).astype(np.uint8))


def test_multiclass_predict_is_argmax(multi_ckpt: Path) -> None:
    seg = load_segmenter(multi_ckpt, device="cpu")
    image = _smooth_rgb(97, 131)
    mask, proba = seg.predict(image), seg.predict_proba(image)
    assert seg.num_classes == 3
    assert mask.shape == (97, 131) and mask.dtype == np.uint8 and mask.max() <= 2
    assert proba.shape == (3, 97, 131) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mask, proba.argmax(axis=0))


def test_images_below_the_model_minimum_are_padded_and_cropped(binary_ckpt: Path) -> None:
    seg = load_segmenter(binary_ckpt, device="cpu")
    assert seg.predict(_smooth_rgb(20, 45)).shape == (20, 45)


def test_load_segmenter_provenance_and_lazy_package_attribute(binary_ckpt: Path) -> None:
    seg = segray.load_segmenter(binary_ckpt)  # device auto: CPU here
    assert segray.load_segmenter is load_segmenter
    assert seg.model_id == model_id(binary_ckpt)
    assert seg.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert (seg.channels, seg.num_classes) == (3, 1)
    assert isinstance(seg.config, Config) and not seg.model.training
    assert seg.tile_size == seg.config.segment.tile_size
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = segray.nope  # noqa: B018


def test_import_segray_stays_light() -> None:
    code = (
        "import segray, sys; assert not {'torch', 'segray.inference.segmenter'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- input kinds
def _encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_every_input_kind_gives_the_same_result(binary_ckpt: Path, tmp_path: Path) -> None:
    seg = load_segmenter(binary_ckpt, device="cpu")
    rgb = _smooth_rgb(40, 52)
    gray = rgb[..., 1].copy()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    opaque = np.concatenate([rgb, np.full((40, 52, 1), 255, np.uint8)], axis=2)
    groups = {
        "rgb": [
            rgb,
            str(tmp_path / "rgb.png"),
            tmp_path / "rgb.png",
            (tmp_path / "rgb.png").read_bytes(),
            _encode(Image.fromarray(rgb)),
            Image.fromarray(rgb),
            Image.fromarray(opaque),
            opaque,
            rgb.astype(np.uint16) * 257,
        ],
        "gray": [
            gray,
            gray[..., None],
            np.repeat(gray[..., None], 3, axis=2),
            np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=2),
            gray.astype(np.uint16) * 257,
            tmp_path / "gray.png",
            tmp_path / "gray16.png",
            Image.fromarray(gray),
            Image.open(tmp_path / "gray16.png"),
        ],
    }
    for name, inputs in groups.items():
        reference = seg.predict_proba(inputs[0])
        for i, image in enumerate(inputs[1:], start=1):
            np.testing.assert_array_equal(
                seg.predict_proba(image), reference, err_msg=f"{name}[{i}]"
            )
            np.testing.assert_array_equal(seg.predict(image), seg.mask_from_proba(reference))


def test_grayscale_model_takes_rgb_inputs_as_luma(tmp_path: Path) -> None:
    seg = _pointwise_segmenter(in_channels=1)
    rgb = _smooth_rgb(33, 47)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    reference = seg.predict_proba(luma)
    for image in (rgb, tmp_path / "rgb.png", Image.fromarray(rgb), rgb.astype(np.uint16) * 257):
        np.testing.assert_array_equal(seg.predict_proba(image), reference)


def test_bad_inputs_raise_clear_errors() -> None:
    seg = _pointwise_segmenter()
    with pytest.raises(ValueError, match="uint8, uint16 or bool"):
        seg.predict(np.zeros((40, 40, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 1\|3\|4\)"):
        seg.predict(np.zeros((40, 40, 5), np.uint8))
    with pytest.raises(TypeError, match="path, bytes, a PIL image or a numpy array"):
        seg.predict([[0, 1], [2, 3]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tile_size must be >= 32"):
        _pointwise_segmenter(tile_size=16)


# --------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("num_classes", [1, 3])
def test_tiled_prediction_equals_untiled_for_a_pointwise_model(num_classes: int) -> None:
    image = _smooth_rgb(150, 200)
    whole = _pointwise_segmenter(num_classes)
    tiled = _pointwise_segmenter(num_classes, tile_size=64, tile_overlap=0.25, batch_size=3)
    expected, got = whole.predict_proba(image), tiled.predict_proba(image)
    assert got.shape == expected.shape == ((150, 200) if num_classes == 1 else (3, 150, 200))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # The untiled model saw the whole image once; the tiled one only 64 x 64 tiles, <= 3 a pass.
    assert whole.model.input_shapes == [(1, 3, 150, 200)]
    shapes = tiled.model.input_shapes
    assert all(s[1:] == (3, 64, 64) and s[0] <= 3 for s in shapes)
    # Stride 48: rows start at 0, 48, 86 and columns at 0, 48, 96, 136: 12 tiles.
    assert sum(s[0] for s in shapes) == 12


class BorderArtefact(Pointwise):
    """Pointwise logits plus a bump that decays with the distance to its input's border, as
    a CNN's padding artefacts do: a tile sees a border where the whole image has none."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        to_border = torch.minimum(
            torch.minimum(rows, h - 1 - rows)[:, None], torch.minimum(cols, w - 1 - cols)[None, :]
        )
        return super().forward(x) / 4 + 3 * torch.exp(-to_border / 2.0)


def test_tile_blending_favours_tile_centres_over_tile_borders() -> None:
    """With a model that is worse near its input's border, the blended tiles must be closer to
    the whole-image prediction than an equal-weight blend of the same tiles, and much closer
    than a blend that favours tile borders (an inverted window)."""
    image = _smooth_rgb(150, 200)
    torch.manual_seed(1)
    config = load_config(None, TINY_UNET)
    whole = Segmenter(BorderArtefact(), config)  # 150 x 200 < the default 512 tile: untiled
    tiled = Segmenter(BorderArtefact(), config, tile_size=64, tile_overlap=0.25, batch_size=5)
    tiled.model.load_state_dict(whole.model.state_dict())
    expected, got = whole.predict_proba(image), tiled.predict_proba(image)

    # The same tiles (stride 48, the last flush with the far edge), blended here by hand.
    corners = [(y, x) for y in (0, 48, 86) for x in (0, 48, 96, 136)]
    assert sum(s[0] for s in tiled.model.input_shapes) == len(corners)
    tiles = {(y, x): whole.predict_proba(image[y : y + 64, x : x + 64]) for y, x in corners}

    def blend(window: np.ndarray) -> np.ndarray:
        total, weight = np.zeros((150, 200)), np.zeros((150, 200))
        for (y, x), proba in tiles.items():
            total[y : y + 64, x : x + 64] += proba * window
            weight[y : y + 64, x : x + 64] += window
        return total / weight

    def error(proba: np.ndarray) -> float:
        return float(np.abs(proba - expected).mean())

    centred = np.sin(np.pi * (np.arange(64) + 0.5) / 64) ** 2  # 0 at the borders, 1 mid-tile
    centred = np.outer(centred, centred)
    uniform, inverted = error(blend(np.ones((64, 64)))), error(blend(1.001 - centred))
    assert uniform > 0.02  # the artefact is visible: tiling is not exact for this model
    assert 0 < error(got) < uniform / 4, (error(got), uniform)
    assert error(blend(centred)) < uniform / 4 < uniform < inverted  # the check can fail
    assert np.abs(got - expected).max() < 0.1


def test_tiles_of_a_long_thin_image_keep_the_short_side() -> None:
    seg = _pointwise_segmenter(tile_size=64, tile_overlap=0.5)
    image = _smooth_rgb(40, 300)
    np.testing.assert_allclose(
        seg.predict_proba(image), _pointwise_segmenter().predict_proba(image), atol=1e-5, rtol=0
    )
    assert {s[1:] for s in seg.model.input_shapes} == {(3, 40, 64)}


def test_tiled_real_model_keeps_input_size(multi_ckpt: Path) -> None:
    seg = load_segmenter(multi_ckpt, device="cpu", tile_size=64, tile_overlap=0.25)
    proba = seg.predict_proba(_smooth_rgb(150, 200))
    assert proba.shape == (3, 150, 200) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- batching
def test_predict_batch_of_mixed_sizes_equals_per_image(binary_ckpt: Path) -> None:
    seg = load_segmenter(binary_ckpt, device="cpu", tile_size=96, batch_size=2)
    images = [
        _smooth_rgb(64, 64, seed=0),
        _smooth_rgb(97, 131, seed=1),  # larger than a tile: tiled
        _smooth_rgb(64, 64, seed=2),
        _smooth_rgb(48, 80, seed=3),
        _smooth_rgb(64, 64, seed=4),
    ]
    probas = seg.predict_batch_proba(images)
    masks = seg.predict_batch(images)
    assert [p.shape for p in probas] == [im.shape[:2] for im in images]
    for image, proba, mask in zip(images, probas, masks, strict=True):
        single = seg.predict_proba(image)
        np.testing.assert_allclose(proba, single, atol=1e-5, rtol=0)
        decided = np.abs(single - seg.threshold) > 1e-4
        np.testing.assert_array_equal(mask[decided], seg.predict(image)[decided])


def test_same_size_images_share_forward_passes() -> None:
    seg = _pointwise_segmenter(batch_size=2)
    images = [_smooth_rgb(40, 40, seed=i) for i in range(3)] + [_smooth_rgb(50, 60)]
    seg.predict_batch(images)
    assert sorted(seg.model.input_shapes) == [(1, 3, 40, 40), (1, 3, 50, 60), (2, 3, 40, 40)]


def test_channels_last_fp32_gives_the_same_probabilities(binary_ckpt: Path) -> None:
    image = _smooth_rgb(70, 90)
    reference = load_segmenter(
        binary_ckpt, device="cpu", precision="fp32", channels_last=False
    ).predict_proba(image)
    seg = load_segmenter(binary_ckpt, device="cpu", precision="fp32", channels_last=True)
    assert seg.precision.dtype is None and seg.channels_last
    assert next(seg.model.parameters()).dtype == torch.float32  # autocast never casts weights
    np.testing.assert_allclose(seg.predict_proba(image), reference, atol=1e-5, rtol=0)


def test_bf16_runs_the_network_only_and_returns_float32(binary_ckpt: Path) -> None:
    image = _smooth_rgb(70, 90)
    reference = load_segmenter(binary_ckpt, device="cpu", precision="fp32").predict_proba(image)
    seg = load_segmenter(binary_ckpt, device="cpu", precision="bf16")
    assert seg.precision.dtype == torch.bfloat16
    proba = seg.predict_proba(image)
    assert proba.dtype == np.float32
    diff = np.abs(proba - reference)
    assert 0 < diff.max() < 0.05  # bf16 really ran (not fp32), and stayed close


# --------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize(
    "overrides, channels",
    [([], 3), (["model.in_channels=1"], 1), (["data.mean=[0.3]", "data.std=[0.2]"], 3)],
)
def test_preprocess_matches_the_training_eval_transform(
    overrides: list[str], channels: int
) -> None:
    config = load_config(None, TINY_UNET + overrides)
    image = np.random.default_rng(0).integers(0, 256, (37, 53, channels), dtype=np.uint8)
    mean, std = default_norm(channels)
    mean = config.data.mean * channels if config.data.mean else mean
    std = config.data.std * channels if config.data.std else std
    expected, _ = eval_transform(size=64, mean=mean, std=std)(image, np.zeros((37, 53), np.int64))
    got = Preprocess.from_config(config, channels)(torch.from_numpy(image)[None])[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_preprocess_rejects_normalisation_for_other_channel_counts() -> None:
    config = load_config(None, TINY_UNET)
    config.data.mean = [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="data.mean has 3 values but the model takes 1 channels"):
        Preprocess.from_config(config, 1)


def test_compiled_network_gives_the_eager_probabilities() -> None:
    image = _smooth_rgb(48, 64)
    eager = _pointwise_segmenter(precision="fp32")
    compiled = Segmenter(eager.model, eager.config, precision="fp32", compile=True)
    assert compiled.compiled and compiled.model is eager.model  # the module itself is kept
    np.testing.assert_allclose(
        compiled.predict_proba(image), eager.predict_proba(image), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("faithful", [True, False])
def test_a_compiled_network_that_disagrees_with_eager_is_dropped(faithful: bool) -> None:
    """The parity gate of compiled inference: the compiled network stands in as a second
    ProbabilityModel (torch.compile itself is too slow for a unit test); one that agrees is
    kept, one that does not gives way to eager for good."""
    from segray.inference.network import ProbabilityModel

    seg = _pointwise_segmenter()
    images = [_smooth_rgb(40, 40, seed) for seed in range(3)]
    expected = seg.predict_batch(images)
    other = Pointwise()
    other.load_state_dict(seg.model.state_dict())
    if not faithful:
        with torch.no_grad():
            other.net[2].bias.add_(3.0)  # shifts every pixel towards foreground
    stand_in = ProbabilityModel(other, seg.preprocess, tta=seg.tta)
    seg.compiled, seg.net = True, stand_in
    agreement = seg.verify_compiled(images)
    if faithful:
        assert agreement == 1.0 and seg.compiled and seg.net is stand_in
    else:
        assert agreement < 0.995 and not seg.compiled and seg.net is not stand_in
    for got, want in zip(seg.predict_batch(images), expected, strict=True):
        np.testing.assert_array_equal(got, want)  # eager's masks either way
    assert _pointwise_segmenter().verify_compiled(images) is None  # nothing compiled
