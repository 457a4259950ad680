"""Tests of segray.structure against hand-computed values and brute-force references (no Ray)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from segray.checkpoint import build_model, save_checkpoint
from segray.config import load_config
from segray.data import read_mask
from segray.evaluate import evaluate_checkpoint
from segray.inference.segmenter import load_segmenter
from segray.structure import (
    boundary,
    em_metrics,
    one_sided,
    surface_distances,
    surface_metrics,
    surface_scores,
    v_info,
    v_rand,
)
from tests.test_evaluate import IMAGES, SPLIT_IDS, TINY_UNET, _checkpoint, _write_folder


# --------------------------------------------------------------------------- references
def _boundary_by_hand(mask: np.ndarray) -> list[tuple[int, int]]:
    """Pixels of ``mask`` with a 4-neighbour outside the mask or outside the image."""
    h, w = mask.shape
    out = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w) or not mask[ny, nx]:
                out.append((int(y), int(x)))
                break
    return out


def _brute_force_scores(pred: np.ndarray, true: np.ndarray, tol: float) -> dict[str, float]:
    """hd95 / msd / boundary F1 from all pairwise distances between boundary pixels, O(n^2)."""
    bp = np.array(_boundary_by_hand(pred), float)
    bt = np.array(_boundary_by_hand(true), float)
    pairwise = np.sqrt(((bp[:, None, :] - bt[None, :, :]) ** 2).sum(-1))
    d_pred, d_true = pairwise.min(axis=1), pairwise.min(axis=0)
    precision, recall = np.mean(d_pred <= tol), np.mean(d_true <= tol)
    return {
        "hd95": max(np.percentile(d_pred, 95), np.percentile(d_true, 95)),
        "msd": np.concatenate([d_pred, d_true]).mean(),
        "boundary_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0,
    }


def _v_rand_by_pairs(segments: np.ndarray, truth: np.ndarray) -> float:
    """V_rand by counting ordered pixel pairs (self-pairs included: the N^2 normalisation) of
    the true-region pixels; a predicted-boundary pixel is alone in its segment."""
    inside = np.flatnonzero(truth.ravel() != 0)
    g, s = truth.ravel()[inside], segments.ravel()[inside]
    same_t = same_s = same_both = 0
    for a, b in itertools.product(range(len(inside)), repeat=2):
        t = g[a] == g[b]
        p = a == b or (s[a] == s[b] and s[a] != 0)
        same_t, same_s, same_both = same_t + t, same_s + p, same_both + (t and p)
    return 2 * same_both / (same_t + same_s)


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


# --------------------------------------------------------------------------- surfaces
def test_boundary_is_the_mask_minus_its_4_connected_erosion() -> None:
    square = _square(7, 2, 2, 3)
    ring = square.copy()
    ring[3, 3] = False  # a 3x3 square's boundary: all but its centre
    assert np.array_equal(boundary(square), ring)
    assert np.array_equal(boundary(_square(5, 2, 2, 1)), _square(5, 2, 2, 1))
    full = np.ones((4, 5), bool)  # the image border counts as outside
    frame = full.copy()
    frame[1:-1, 1:-1] = False
    assert np.array_equal(boundary(full), frame)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_squares_offset_by_k_have_hd95_k(k: int) -> None:
    true, pred = _square(48, 10, 10, 20), _square(48, 10, 10 + k, 20)
    got = surface_scores(pred, true)
    # Most of each shifted side lies exactly k from the other's parallel side and no
    # boundary pixel is farther than k from the other boundary: every percentile >= 50 is k.
    assert got["hd95"] == k
    assert got == pytest.approx(_brute_force_scores(pred, true, 2.0), abs=1e-9)


def test_single_pixel_shift_by_hand() -> None:
    true, pred = _square(32, 5, 5, 20), _square(32, 5, 6, 20)
    # 76 boundary pixels each: 38 on the shared top and bottom rows at distance 0, and the two
    # overhanging corners plus both 18-pixel sides at distance 1 (38 pixels), both ways.
    assert surface_scores(pred, true, tol=0) == {"hd95": 1.0, "msd": 0.5, "boundary_f1": 0.5}
    assert surface_scores(pred, true, tol=1)["boundary_f1"] == 1.0
    d_pred, d_true = surface_distances(pred, true)
    assert sorted(d_pred) == sorted(d_true) == [0.0] * 38 + [1.0] * 38


def test_hand_made_boundary_cases_both_empty_one_sided_and_normal() -> None:
    """Both empty: undefined (NaN), as for Dice, never a perfect score. Target only (a total
    miss) or prediction only: the finite worst case, the image diagonal and F1 0."""
    empty = np.zeros((6, 8), bool)
    some = empty.copy()
    some[1:4, 2:5] = True
    both_empty = surface_scores(empty, empty)
    assert all(math.isnan(v) for v in both_empty.values()), both_empty
    worst = {"hd95": 10.0, "msd": 10.0, "boundary_f1": 0.0}  # hypot(6, 8) = 10
    assert surface_scores(empty, some) == worst  # target only: missed entirely
    assert surface_scores(some, empty) == worst  # prediction only
    shifted = np.roll(some, 1, axis=1)  # normal: one column off
    assert surface_scores(shifted, some, tol=0) == {
        "hd95": 1.0,
        "msd": pytest.approx(4 / 8),  # 8 boundary pixels each way, 4 of them 1 pixel off
        "boundary_f1": pytest.approx(0.5),
    }
    assert surface_scores(some, some) == {"hd95": 0.0, "msd": 0.0, "boundary_f1": 1.0}
    kw = {"num_classes": 1, "ignore_index": 255}
    assert one_sided(empty, some, **kw) and one_sided(some, empty, **kw)
    assert not one_sided(empty, empty, **kw) and not one_sided(shifted, some, **kw)


def test_checkerboard_against_itself_and_its_complement() -> None:
    board = (np.indices((8, 8)).sum(0) % 2).astype(bool)
    assert np.array_equal(boundary(board), board)  # every square is its own boundary
    assert surface_scores(board, board, tol=0) == {"hd95": 0.0, "msd": 0.0, "boundary_f1": 1.0}
    # Every pixel of one board is 1 pixel from a pixel of the other.
    assert surface_scores(board, ~board, tol=0) == {"hd95": 1.0, "msd": 1.0, "boundary_f1": 0.0}
    assert surface_scores(board, ~board, tol=1)["boundary_f1"] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_surface_scores_equal_brute_force_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(6, 20, 2))
    pred, true = rng.random(shape) < 0.4, rng.random(shape) < 0.3
    pred[0, 0] = true[-1, -1] = True  # never empty
    tol = float(rng.integers(0, 3))
    got, expected = surface_scores(pred, true, tol=tol), _brute_force_scores(pred, true, tol)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_surface_metrics_headline_classes_and_ignore() -> None:
    target = np.zeros((20, 20), np.int64)
    target[2:8, 2:8] = 1
    target[12:18, 12:18] = 2
    pred = target.copy()
    pred[12:18, 13:19] = 2  # class 2 shifted by one pixel
    shifted = surface_scores(pred == 2, target == 2, tol=0)
    perfect = {"hd95": 0.0, "msd": 0.0, "boundary_f1": 1.0}
    got = surface_metrics(pred, target, num_classes=3, tol=0)
    # the mean over classes 1 (perfect) and 2; a class absent from both (3) is skipped
    assert got == pytest.approx({k: (shifted[k] + perfect[k]) / 2 for k in perfect})
    assert surface_metrics(pred, target, num_classes=4, tol=0) == got
    missed = pred.copy()
    missed[missed == 1] = 0  # class 1 not found: the worst case, averaged with class 2
    worst = {"hd95": math.hypot(20, 20), "msd": math.hypot(20, 20), "boundary_f1": 0.0}
    assert surface_metrics(missed, target, num_classes=3, tol=0) == pytest.approx(
        {k: (shifted[k] + worst[k]) / 2 for k in worst}
    )
    assert one_sided(missed, target, num_classes=3) and not one_sided(pred, target, num_classes=3)
    nothing = np.zeros_like(target)
    assert all(math.isnan(v) for v in surface_metrics(nothing, nothing, num_classes=3).values())
    # Binary with an ignored band around the object: a prediction that ends anywhere in the
    # band is perfect; without the band it is 2 pixels off along the sides and 2 * sqrt(2)
    # at the corners (4 of 44 boundary pixels: beyond the 95th percentile's rank 40.85).
    binary = np.zeros((20, 20), np.int64)
    binary[4:16, 4:16] = 255
    binary[6:14, 6:14] = 1
    wide = np.zeros_like(binary)
    wide[4:16, 4:16] = 1
    assert surface_metrics(wide, binary, num_classes=1, ignore_index=255)["hd95"] == 0.0
    plain = np.where(binary == 255, 0, binary)
    assert surface_metrics(wide, plain, num_classes=1, ignore_index=255)["hd95"] == pytest.approx(
        2 * math.sqrt(2), abs=1e-12
    )
    with pytest.raises(ValueError, match="same shape"):
        surface_metrics(wide, plain[:5], num_classes=1)


# --------------------------------------------------------------------------- V_rand / V_info
def _two_regions() -> np.ndarray:
    truth = np.zeros((4, 4), np.int64)
    truth[:, :2], truth[:, 2:] = 1, 2  # two true regions of 8 pixels
    return truth


def test_identical_segmentations_score_1_up_to_relabelling() -> None:
    truth = _two_regions()
    relabelled = np.where(truth == 1, 7, 3)
    assert v_rand(relabelled, truth) == pytest.approx(1.0, abs=1e-12)
    assert v_info(relabelled, truth) == pytest.approx(1.0, abs=1e-12)
    single = np.ones((3, 3), np.int64)
    assert v_rand(single, single) == 1.0 and v_info(single, single) == 1.0


def test_split_and_merge_by_hand() -> None:
    truth = _two_regions()
    split = truth.copy()
    split[2:, :2] = 5  # region 1 split into two halves of 4
    # p = (4, 4, 8) / 16: sum p^2 = 3/8 = sum s^2; sum t^2 = 1/2 -> V_rand = 0.75 / 0.875
    assert v_rand(split, truth) == pytest.approx(6 / 7, abs=1e-12)
    # H(T) = 1 bit, H(S) = H(S,T) = 1.5 bits, I = 1 bit -> V_info = 2 / 2.5
    assert v_info(split, truth) == pytest.approx(0.8, abs=1e-12)
    # The merge is the same table transposed: the same scores.
    assert v_rand(truth, split) == pytest.approx(6 / 7, abs=1e-12)
    assert v_info(truth, split) == pytest.approx(0.8, abs=1e-12)
    # Both regions merged into one: sum p^2 = 1/2 = sum t^2, sum s^2 = 1 -> 2/3; I = 0.
    merged = np.ones_like(truth)
    assert v_rand(merged, truth) == pytest.approx(2 / 3, abs=1e-12)
    assert v_info(merged, truth) == 0.0


def test_em_metrics_on_a_class_map_with_singletons_by_hand() -> None:
    # 4 x 9 EM slice: column 4 is membrane (class 0), two cells (class 1) of 16 pixels each.
    target = np.ones((4, 9), np.int64)
    target[:, 4] = 0
    pred = target.copy()
    pred[2, :4] = 0  # a predicted membrane splits the left cell: 8 + 4 pixels + 4 singletons
    # n = 32, p = (8, 4, 16) / 32 and 4 singletons of 1/32: sum p^2 = (64 + 16 + 256 + 4) /
    # 1024 = sum s^2 (S refines T), sum t^2 = 512 / 1024.
    # H in bits: H(T) = 1, H(S) = H(S,T) = 0.5 + 0.375 + 0.5 + 4 * 5 / 32 = 2, I = 1.
    got = em_metrics(pred, target)
    assert got["v_rand"] == pytest.approx(680 / 852, abs=1e-12)
    assert got["v_info"] == pytest.approx(2 / 3, abs=1e-12)
    assert em_metrics(target, target) == pytest.approx({"v_rand": 1.0, "v_info": 1.0})
    # Components are 4-connected: cells touching only diagonally are two regions.
    diagonal = np.array([[1, 0], [0, 1]])
    assert em_metrics(np.ones((2, 2), np.int64), diagonal)["v_info"] == 0.0
    # Ignored target pixels are membrane; no true region at all: undefined.
    ignored = np.where(target == 0, 255, target)
    assert em_metrics(pred, ignored, ignore_index=255) == pytest.approx(got)
    assert all(math.isnan(v) for v in em_metrics(pred, np.zeros_like(target)).values())


@pytest.mark.parametrize("seed", range(4))
def test_v_rand_equals_pair_counting_on_random_label_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, (6, 7))
    segments = rng.integers(0, 5, (6, 7))
    assert v_rand(segments, truth) == pytest.approx(_v_rand_by_pairs(segments, truth), abs=1e-12)
    assert 0.0 <= v_info(segments, truth) <= 1.0


# --------------------------------------------------------------------------- evaluate
def _foreground_everywhere(directory: Path) -> Path:
    """A checkpoint whose head predicts foreground on every pixel (an untrained tiny model
    predicts none): defined distances wherever the ground truth has foreground."""
    config = load_config(None, TINY_UNET + [SPLIT_IDS])
    model = build_model(config)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(20.0)
    return save_checkpoint(directory, model=model, config=config, metrics={})


def test_evaluate_writes_structure_columns_and_means(tmp_path: Path) -> None:
    ckpt = _foreground_everywhere(tmp_path / "ckpt")
    data = _write_folder(tmp_path / "data", 2)
    empty = data / "masks" / "a1.png"  # foreground predicted, none to find: the worst case
    Image.fromarray(np.zeros_like(np.asarray(Image.open(empty)))).save(empty)
    out = tmp_path / "report"
    metrics = evaluate_checkpoint(
        ckpt, data=data, split="all", output=out, worst_k=0, progress=False,
        boundary_tol=1, em=True,
    )  # fmt: skip
    table = pd.read_parquet(out / "per_image.parquet").set_index("key")
    columns = ["hd95", "msd", "boundary_f1", "v_rand", "v_info"]
    assert list(table.columns[table.columns.get_loc("accuracy") + 1 :][:5]) == columns
    seg = load_segmenter(ckpt, device="cpu")
    for key, _, _ in IMAGES:
        pred = seg.predict(data / "images" / f"{key}.png")
        target = (read_mask(data / "masks" / f"{key}.png") > 127).astype(np.int64)
        expected = surface_metrics(pred, target, num_classes=1, ignore_index=255, tol=1)
        expected |= em_metrics(pred, target, ignore_index=255)
        for column in columns:
            assert table.loc[key, column] == pytest.approx(expected[column], abs=1e-9, nan_ok=True)
    assert table["boundary_penalised"].tolist() == [key == "a1" for key, _, _ in IMAGES]
    assert table.loc["a1", "hd95"] == table.loc["a1", "msd"] == math.hypot(48, 48)
    assert table.loc["a1", "boundary_f1"] == 0.0 and not table["hd95"].isna().any()
    written = json.loads((out / "metrics.json").read_text())
    for column in columns:
        assert written[column] == pytest.approx(table[column].mean(skipna=True), abs=1e-9)
    assert written["num_images_boundary_penalised"] == 1
    assert written["num_images_boundary_empty"] == 0
    assert written["boundary_tol"] == 1.0 and metrics["boundary_tol"] == 1.0


def test_evaluate_penalises_a_model_that_finds_nothing(tmp_path: Path) -> None:
    """A model that finds nothing scores the worst case on every image with foreground (the
    image diagonal, F1 0), which the means count and metrics.json reports; never null."""
    ckpt = _checkpoint(tmp_path / "ckpt", TINY_UNET + [SPLIT_IDS], background_only=True)
    data = _write_folder(tmp_path / "data", 2)
    out = tmp_path / "report"
    evaluate_checkpoint(ckpt, data=data, split="all", output=out, worst_k=0, progress=False)
    written = json.loads((out / "metrics.json").read_text())
    diagonal = np.mean([math.hypot(h, w) for _, h, w in IMAGES])
    assert written["hd95"] == pytest.approx(diagonal) and written["msd"] == pytest.approx(diagonal)
    assert written["num_images_boundary_penalised"] == len(IMAGES)
    assert written["num_images_boundary_empty"] == 0
    assert written["boundary_f1"] == 0.0 and "v_rand" not in written
    table = pd.read_parquet(out / "per_image.parquet")
    assert table["boundary_penalised"].all() and "v_rand" not in table.columns
