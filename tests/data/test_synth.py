"""The synthetic dataset: deterministic, atomic, the documented mask convention, many scales."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from segray.data import synth
from segray.data.folder import find_pairs
from segray.data.io import decode_image, read_mask


def files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


def test_same_arguments_same_bytes(tmp_path):
    a = synth.generate(tmp_path / "a", num=6, size=48, seed=3)
    b = synth.generate(tmp_path / "b", num=6, size=48, seed=3)
    assert a == (tmp_path / "a") and a.is_absolute()
    fa, fb = files(a), files(b)
    assert len(fa) == 12 and fa == fb
    assert (a / "synth.json").read_bytes() == (b / "synth.json").read_bytes()
    c = synth.generate(tmp_path / "c", num=6, size=48, seed=4)
    assert files(c)["images/0000.png"] != fa["images/0000.png"]


def test_complete_dataset_is_reused_without_regenerating(tmp_path, monkeypatch):
    out = synth.generate(tmp_path / "d", num=4, size=32)
    before = files(out)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synth, "render", fail)
    assert synth.generate(tmp_path / "d", num=4, size=32) == out
    assert files(out) == before


def test_crash_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = synth.render
    calls = []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(synth, "render", crash_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        synth.generate(tmp_path / "e", num=5, size=32)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder
    monkeypatch.setattr(synth, "render", real)
    out = synth.generate(tmp_path / "e", num=5, size=32)
    assert len(files(out)) == 10


def test_other_parameters_replace_an_old_synthetic_dataset(tmp_path):
    synth.generate(tmp_path / "f", num=4, size=32)
    out = synth.generate(tmp_path / "f", num=5, size=32)
    assert json.loads((out / "synth.json").read_text())["params"]["num"] == 5
    assert len(files(out)) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a segray synthetic dataset"):
        synth.generate(tmp_path / "mine", num=4, size=32)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert len(files(synth.generate(tmp_path / "empty", num=4, size=32))) == 8


def test_binary_convention(tmp_path):
    out = synth.generate(tmp_path / "bin", num=8, size=64, seed=1)
    info = json.loads((out / "synth.json").read_text())
    assert info["params"] == {
        "version": synth.SYNTH_VERSION,
        "num": 8,
        "size": 64,
        "num_classes": 2,
        "seed": 1,
    }
    assert "0 = background, 255 = foreground" in info["mask_convention"]
    assert info["counts"]["images"] == 8
    samples = find_pairs(out / "images", out / "masks")
    assert [s.key for s in samples] == [f"{i:04d}" for i in range(8)]
    seen = set()
    for s in samples:
        image = decode_image(s.image, channels=3)
        assert image.shape == (64, 64, 3) and image.std() > 5  # textured, not flat
        raw = read_mask(s.mask)
        assert raw.shape == (64, 64)
        seen |= set(np.unique(raw).tolist())
    assert seen == {0, 255}


def test_multiclass_indices_and_shapes(tmp_path):
    out = synth.generate(tmp_path / "multi", num=12, size=64, num_classes=4)
    info = json.loads((out / "synth.json").read_text())
    assert "class index" in info["mask_convention"]
    assert info["class_shapes"] == {"1": "ellipse", "2": "rectangle", "3": "triangle"}
    assert sum(info["counts"]["objects_per_class"]) > 0
    values = set()
    for path in sorted((out / "masks").glob("*.png")):
        values |= set(np.unique(read_mask(path)).tolist())
    assert values == {0, 1, 2, 3}


def test_objects_span_small_and_large_scales():
    size = 96
    areas = []
    for i in range(30):
        _, mask, _ = synth.render(np.random.default_rng([0, i]), size, 2)
        n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8))
        areas += (stats[1:, cv2.CC_STAT_AREA] / size**2).tolist()
    areas = np.array(areas)
    assert areas.min() < 0.002  # radius ~2% of the side: a few pixels
    assert areas.max() > 0.3  # radius ~45%
    assert (areas < 0.01).sum() > 30 and (areas > 0.1).sum() > 10


def test_small_objects_locally_distinct_large_interiors_ambiguous():
    """Window statistics: small objects stand out from the background, large interiors do not."""
    size, k = 96, 7
    small_scores, large_scores = [], []
    for i in range(20):
        image, mask, _ = synth.render(np.random.default_rng([0, i]), size, 2)
        f = image.astype(np.float32)
        lum = f.mean(-1)
        local_std = np.sqrt(np.maximum(cv2.blur(lum**2, (k, k)) - cv2.blur(lum, (k, k)) ** 2, 0))
        feats = np.dstack([cv2.blur(f, (k, k)), local_std])
        fg = (mask > 0).astype(np.uint8)
        background = cv2.dilate(fg, np.ones((k, k), np.uint8)) == 0
        mu, sd = feats[background].mean(0), feats[background].std(0) + 1e-6
        score = np.sqrt((((feats - mu) / sd) ** 2).sum(-1))  # how unusual a window is
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
        for c in range(1, n):
            comp = labels == c
            area = stats[c, cv2.CC_STAT_AREA] / size**2
            if area > 0.15:
                core = cv2.erode(comp.astype(np.uint8), np.ones((2 * k + 1,) * 2, np.uint8)) > 0
                large_scores.append(np.median(score[core]) / np.median(score[background]))
            elif area < 0.01:
                small_scores.append(np.median(score[comp]) / np.median(score[background]))
    assert len(large_scores) > 5 and len(small_scores) > 20
    # Measured: ~1.5 (a small mean shift) against ~9.5 with 20 images.
    assert np.median(large_scores) < 2
    assert np.median(small_scores) > 4


def test_bad_parameters():
    with pytest.raises(ValueError, match="num_classes"):
        synth.synth_params(num=4, size=32, num_classes=1, seed=0)
    with pytest.raises(ValueError, match="size"):
        synth.synth_params(num=4, size=8, num_classes=2, seed=0)
