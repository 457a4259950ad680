"""Tests for segray.metrics against scikit-learn as the oracle (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import (
    accuracy_score,
    auc,
    average_precision_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

import segray.metrics
from segray.metrics import (
    LOGIT_LIMIT,
    SegMetrics,
    confusion_counts,
    confusion_metrics,
    per_image_metrics,
    probs_from_logits,
    softmax_log_odds,
)

IGNORE = 255


def _case(
    num_classes: int, seed: int, batch: int = 2, size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that lean towards a random target, and the target with ~10% ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    n = max(num_classes, 2)
    target = torch.randint(0, n, (batch, size, size), generator=g)
    onehot = torch.nn.functional.one_hot(target, n).permute(0, 3, 1, 2).float()
    signal = (onehot[:, 1:] * 2 - 1) if num_classes == 1 else onehot * 1.5
    logits = torch.randn(batch, num_classes, size, size, generator=g) * 2 + signal
    target[torch.rand(batch, size, size, generator=g) < 0.1] = IGNORE
    return logits, target


def _oracle(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid pixels as (labels, predicted labels, per-class scores (N, C)), independently."""
    probs = probs_from_logits(logits)
    valid = target != IGNORE
    labels = target[valid].numpy()
    if logits.shape[1] == 1:
        fg = probs[:, 0][valid].numpy().astype(np.float64)
        return labels, (fg >= threshold).astype(np.int64), np.stack([1 - fg, fg], axis=1)
    scores = probs.permute(0, 2, 3, 1)[valid].numpy().astype(np.float64)
    return labels, scores.argmax(axis=1), scores


def _expected(labels: np.ndarray, pred: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    classes = list(range(scores.shape[1]))
    mcm = multilabel_confusion_matrix(labels, pred, labels=classes)  # [[tn, fp], [fn, tp]]
    onehot = labels[:, None] == np.array(classes)
    dice = f1_score(labels, pred, labels=classes, average=None)
    return {
        "dice": dice,
        "f1": dice,
        "iou": jaccard_score(labels, pred, labels=classes, average=None),
        "precision": precision_score(labels, pred, labels=classes, average=None),
        "recall": recall_score(labels, pred, labels=classes, average=None),
        "specificity": mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1]),
        "mse": ((scores - onehot) ** 2).mean(axis=0),
        "roc_auc": np.array([roc_auc_score(onehot[:, c], scores[:, c]) for c in classes]),
        "pr_auc": np.array([average_precision_score(onehot[:, c], scores[:, c]) for c in classes]),
    }


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compute_matches_sklearn(num_classes: int, seed: int) -> None:
    logits, target = _case(num_classes, seed)
    metrics = SegMetrics(num_classes, ignore_index=IGNORE)
    metrics.update_from_logits(logits, target)
    got = metrics.compute()
    labels, pred, scores = _oracle(logits, target)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-6)
    for key, values in _expected(labels, pred, scores).items():
        tol = 1e-3 if key.endswith("auc") else 1e-6
        for name, value in zip(metrics.class_names, values, strict=True):
            assert got[f"{key}_{name}"] == pytest.approx(value, abs=tol), f"{key}_{name}"
        headline = values[1] if num_classes == 1 else values[1:].mean()
        assert got[key] == pytest.approx(headline, abs=tol), key


def test_binary_threshold_and_class_names() -> None:
    logits, target = _case(1, seed=3)
    metrics = SegMetrics(1, class_names=["bg", "cat"], threshold=0.7, ignore_index=IGNORE)
    metrics.update_from_logits(logits, target)
    got = metrics.compute()
    labels, pred, _ = _oracle(logits, target, threshold=0.7)
    assert got["dice_cat"] == pytest.approx(f1_score(labels, pred), abs=1e-6)
    assert got["dice"] == got["dice_cat"]
    assert "dice_bg" in got and "dice_foreground" not in got
    # p == threshold counts as foreground
    exact = SegMetrics(1, threshold=0.5)
    exact.update(torch.full((1, 1, 1, 1), 0.5), torch.ones(1, 1, 1, dtype=torch.long))
    assert exact.confusion.tolist() == [[0, 0], [0, 1]]


@pytest.mark.parametrize("num_classes", [1, 3])
def test_streaming_equals_one_big_update(num_classes: int) -> None:
    logits, target = _case(num_classes, seed=4, batch=4)
    whole = SegMetrics(num_classes, ignore_index=IGNORE)
    whole.update_from_logits(logits, target)
    streamed = SegMetrics(num_classes, ignore_index=IGNORE)
    for start, stop in ((0, 1), (1, 3), (3, 4)):
        streamed.update_from_logits(logits[start:stop], target[start:stop])
    for name in ("confusion", "hist", "n_pixels", "n_images", "n_images_no_fg"):
        assert torch.equal(streamed.state[name], whole.state[name]), name
    # float32 activations may differ in the last bit with the vector alignment of a slice
    assert torch.allclose(streamed.sq_err, whole.sq_err, rtol=1e-9)
    assert streamed.compute() == pytest.approx(whole.compute(), abs=1e-9, nan_ok=True)


def test_merge_and_reset() -> None:
    logits, target = _case(3, seed=5, batch=4)
    whole = SegMetrics(3, ignore_index=IGNORE)
    whole.update_from_logits(logits, target)
    a, b = SegMetrics(3, ignore_index=IGNORE), SegMetrics(3, ignore_index=IGNORE)
    a.update_from_logits(logits[:1], target[:1])
    b.update_from_logits(logits[1:], target[1:])
    a.merge(b)
    assert torch.equal(a.confusion, whole.confusion) and torch.equal(a.hist, whole.hist)
    assert a.compute() == pytest.approx(whole.compute(), abs=1e-9)
    a.reset()
    assert all(int(t.count_nonzero()) == 0 for t in a.state.values())
    with pytest.raises(ValueError, match="merge"):
        a.merge(SegMetrics(3, bins=10))


def test_all_reduce_is_a_noop_without_a_process_group() -> None:
    logits, target = _case(1, seed=6)
    metrics = SegMetrics(1, ignore_index=IGNORE)
    metrics.update_from_logits(logits, target)
    before = {k: v.clone() for k, v in metrics.state.items()}
    assert metrics.all_reduce() is metrics
    assert all(torch.equal(before[k], v) for k, v in metrics.state.items())


def _ddp_case(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 images, image 1 (on rank 1 of 2) without foreground: only background and ignored."""
    logits, target = _case(num_classes, seed=7, batch=4)
    target[1][target[1] != IGNORE] = 0
    return logits, target


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: update with its share of the batch, all-reduce, save state and metrics."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        for num_classes in (1, 3):
            logits, target = _ddp_case(num_classes)
            metrics = SegMetrics(num_classes, ignore_index=IGNORE)
            metrics.update_from_logits(logits[rank::world_size], target[rank::world_size])
            metrics.all_reduce()
            torch.save(
                {"state": metrics.state, "metrics": metrics.compute()},
                Path(out_dir) / f"rank{rank}_k{num_classes}.pt",
            )
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_two_gloo_processes(tmp_path: Path) -> None:
    """Two gloo ranks, half the images each, equal a single accumulator over all of them.

    Forked like DataLoader workers: spawned children would spend ~7 s each re-importing torch
    and scikit-learn on a 2-core machine.
    """
    args = (2, str(tmp_path / "init"), str(tmp_path))
    mp.start_processes(_ddp_worker, args=args, nprocs=2, join=True, start_method="fork")
    for num_classes in (1, 3):
        reference = SegMetrics(num_classes, ignore_index=IGNORE)
        reference.update_from_logits(*_ddp_case(num_classes))
        expected = reference.compute()
        assert (expected["num_images"], expected["num_images_no_foreground"]) == (4, 1)
        for rank in range(2):
            saved = torch.load(tmp_path / f"rank{rank}_k{num_classes}.pt", weights_only=True)
            for name in ("confusion", "hist", "n_pixels", "n_images", "n_images_no_fg"):
                assert torch.equal(saved["state"][name], reference.state[name]), name
            assert torch.allclose(saved["state"]["sq_err"], reference.sq_err, rtol=1e-9)
            assert saved["metrics"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_per_image_metrics_matches_sklearn(num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = max(num_classes, 2)
    target = rng.integers(0, n, (32, 32))
    pred = np.where(rng.random((32, 32)) < 0.7, target, rng.integers(0, n, (32, 32)))
    target[rng.random((32, 32)) < 0.1] = IGNORE
    got = per_image_metrics(
        pred, torch.from_numpy(target), num_classes=num_classes, ignore_index=IGNORE
    )
    valid = target != IGNORE
    y, p = target[valid], pred[valid]
    if num_classes == 1:
        kw: dict = {"average": "binary"}
    else:
        kw = {"labels": list(range(1, n)), "average": "macro"}
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-6)
    assert got["dice"] == pytest.approx(f1_score(y, p, **kw), abs=1e-6)
    assert got["iou"] == pytest.approx(jaccard_score(y, p, **kw), abs=1e-6)
    assert got["precision"] == pytest.approx(precision_score(y, p, **kw), abs=1e-6)
    assert got["recall"] == pytest.approx(recall_score(y, p, **kw), abs=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_per_image_metrics_agrees_with_seg_metrics(num_classes: int) -> None:
    logits, target = _case(num_classes, seed=8, batch=1)
    metrics = SegMetrics(num_classes, ignore_index=IGNORE)
    metrics.update_from_logits(logits, target)
    probs = probs_from_logits(logits)
    pred = (probs[0, 0] >= 0.5).long() if num_classes == 1 else probs[0].argmax(0)
    got = per_image_metrics(pred, target[0], num_classes=num_classes, ignore_index=IGNORE)
    full = metrics.compute()
    assert got == {k: full[k] for k in ("dice", "iou", "precision", "recall", "accuracy")}


# ----------------------------------------------------------------- undefined values
NAN = math.nan


@pytest.mark.parametrize(
    ("confusion", "fg"),
    [
        # rows = target (bg, fg), columns = prediction; fg: expected foreground metrics
        ([[4, 0], [0, 0]], dict(dice=NAN, iou=NAN, precision=NAN, recall=NAN, specificity=1)),
        ([[4, 0], [2, 0]], dict(dice=0, iou=0, precision=NAN, recall=0, specificity=1)),
        ([[2, 2], [0, 0]], dict(dice=0, iou=0, precision=0, recall=NAN, specificity=0.5)),
        ([[0, 0], [0, 4]], dict(dice=1, iou=1, precision=1, recall=1, specificity=NAN)),
        ([[0, 0], [1, 3]], dict(dice=6 / 7, iou=3 / 4, precision=1, recall=3 / 4, specificity=NAN)),
    ],
    ids=["both-empty", "missed-all", "false-alarms", "no-negatives", "no-negatives-missed"],
)
def test_empty_denominators_are_nan(confusion: list[list[int]], fg: dict[str, float]) -> None:
    got = confusion_metrics(np.array(confusion))
    for key, value in fg.items():
        assert got[key][1] == pytest.approx(value, nan_ok=True), key
    assert np.array_equal(got["f1"], got["dice"], equal_nan=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_undefined_values_match_sklearn_zero_division_nan(seed: int) -> None:
    """Classes 2 and 3 of 4 are rare, so some are absent from target, prediction or both."""
    rng = np.random.default_rng(seed)
    y = rng.choice(4, size=40, p=[0.85, 0.1, 0.03, 0.02])
    p = np.where(rng.random(40) < 0.8, y, rng.choice(4, size=40, p=[0.9, 0.06, 0.02, 0.02]))
    got = confusion_metrics(np.bincount(y * 4 + p, minlength=16).reshape(4, 4))
    kw: dict = {"labels": [0, 1, 2, 3], "average": None, "zero_division": np.nan}
    np.testing.assert_allclose(got["precision"], precision_score(y, p, **kw))
    np.testing.assert_allclose(got["recall"], recall_score(y, p, **kw))
    np.testing.assert_allclose(got["dice"], f1_score(y, p, **kw))  # NaN: absent from both
    headline = per_image_metrics(p, y, num_classes=4)
    macro = {"labels": [1, 2, 3], "average": "macro", "zero_division": np.nan}
    assert headline["precision"] == pytest.approx(precision_score(y, p, **macro), nan_ok=True)
    assert headline["recall"] == pytest.approx(recall_score(y, p, **macro), nan_ok=True)
    assert headline["dice"] == pytest.approx(f1_score(y, p, **macro), nan_ok=True)


def test_all_background_prediction_is_nan_on_empty_targets_and_0_on_foreground() -> None:
    background = torch.zeros(2, 1, 4, 4)  # P(foreground) = 0 everywhere
    empty = SegMetrics(1)
    empty.update(background, torch.zeros(2, 4, 4, dtype=torch.long))
    got = empty.compute()
    for key in ("dice", "iou", "f1", "precision", "recall"):
        assert math.isnan(got[key]) and math.isnan(got[f"{key}_foreground"]), key
    assert got["accuracy"] == 1.0 and got["dice_background"] == 1.0
    assert (got["num_images"], got["num_images_no_foreground"]) == (2, 2)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    missed = SegMetrics(1)
    missed.update(background, target)
    got = missed.compute()
    assert (got["dice"], got["iou"], got["recall"]) == (0.0, 0.0, 0.0)
    assert math.isnan(got["precision"])
    assert got["num_images_no_foreground"] == 1
    # per image: the same rules
    none = np.zeros((4, 4), dtype=np.int64)
    image = per_image_metrics(none, none, num_classes=1)
    assert image["accuracy"] == 1.0
    assert all(math.isnan(image[k]) for k in ("dice", "iou", "precision", "recall"))
    assert per_image_metrics(none, target[0], num_classes=1)["dice"] == 0.0
    all_ignored = per_image_metrics(
        none, np.full((4, 4), IGNORE), num_classes=1, ignore_index=IGNORE
    )
    assert math.isnan(all_ignored["accuracy"]) and math.isnan(all_ignored["dice"])


def test_multiclass_absent_class_is_excluded_from_the_mean() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0] = 1  # class 1: 4 pixels; class 2: absent from target and prediction
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[:, 0] = 5.0
    logits[0, 1, 0, :2] = 10.0  # class 1 predicted on 2 of its 4 pixels
    metrics = SegMetrics(3)
    metrics.update_from_logits(logits, target)
    got = metrics.compute()
    assert math.isnan(got["dice_class2"]) and math.isnan(got["iou_class2"])
    assert got["dice_class1"] == pytest.approx(2 / 3)
    assert got["dice"] == got["dice_class1"]  # not (2/3 + 1) / 2
    assert got["num_images_no_foreground"] == 0
    none = SegMetrics(3)
    none.update_from_logits(logits[:, [0, 2, 2]], torch.zeros_like(target))  # nothing but 0
    got = none.compute()
    assert math.isnan(got["dice"]) and got["accuracy"] == 1.0
    assert got["num_images_no_foreground"] == 1


def test_images_without_foreground_are_counted_through_merge_and_reset() -> None:
    target = torch.ones(3, 4, 4, dtype=torch.long)
    target[0] = 0
    target[1] = IGNORE  # every pixel ignored: no foreground either
    target[2, 0, 0] = IGNORE
    probs = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a, b = SegMetrics(1, ignore_index=IGNORE), SegMetrics(1, ignore_index=IGNORE)
    a.update(probs[:2], target[:2])
    b.update(probs[2:], target[2:])
    a.merge(b)
    got = a.compute()
    assert (got["num_images"], got["num_images_no_foreground"]) == (3, 2)
    a.update(probs[:0], target[:0])  # an empty batch counts nothing
    assert a.compute()["num_images"] == 3
    a.reset()
    assert (int(a.n_images), int(a.n_images_no_fg)) == (0, 0)


def test_aucs_undefined_with_one_label_and_empty_accumulator() -> None:
    probs = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    only_bg = SegMetrics(1)
    only_bg.update(probs, torch.zeros(1, 8, 8, dtype=torch.long))
    got = only_bg.compute()
    assert math.isnan(got["roc_auc"]) and math.isnan(got["pr_auc"])
    assert math.isnan(got["roc_auc_background"]) and got["pr_auc_background"] == 1.0
    only_fg = SegMetrics(1)
    only_fg.update(probs, torch.ones(1, 8, 8, dtype=torch.long))
    assert math.isnan(only_fg.compute()["roc_auc"])
    assert only_fg.compute()["pr_auc"] == 1.0  # positives only: precision 1 everywhere (sklearn)
    empty = SegMetrics(3).compute()
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["mse"])
    assert math.isnan(empty["roc_auc"]) and math.isnan(empty["dice"])
    assert (empty["num_images"], empty["num_images_no_foreground"]) == (0, 0)


def test_multiclass_headline_skips_undefined_classes() -> None:
    logits, target = _case(3, seed=10)
    target[target == 2] = 1  # class 2 never occurs: its AUCs and recall are NaN
    metrics = SegMetrics(3, ignore_index=IGNORE)
    metrics.update_from_logits(logits, target)
    got = metrics.compute()
    assert math.isnan(got["roc_auc_class2"]) and math.isnan(got["recall_class2"])
    assert got["roc_auc"] == got["roc_auc_class1"]
    assert got["recall"] == got["recall_class1"]
    assert got["dice_class2"] == 0.0  # predicted somewhere, never true
    assert got["dice"] == pytest.approx((got["dice_class1"] + got["dice_class2"]) / 2)


# ----------------------------------------------------------------- AUCs of confident models
def _confident(num_classes: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ~ N(+-8, 3) towards a target (binary: 30% foreground), 10% of whose labels are
    then redrawn: ~40% of the pixels score beyond p = 1 - 1e-4 or below 1e-4, where the noisy
    labels overlap the clean ones."""
    g = torch.Generator().manual_seed(seed)
    side = int(math.isqrt(n))
    k = max(num_classes, 2)
    if num_classes == 1:
        target = (torch.rand(1, side, side, generator=g) < 0.3).long()
    else:
        target = torch.randint(0, k, (1, side, side), generator=g)
    onehot = torch.nn.functional.one_hot(target, k).permute(0, 3, 1, 2).float()
    sign = onehot[:, 1:] if num_classes == 1 else onehot
    logits = torch.randn(1, num_classes, side, side, generator=g) * 3 + (sign * 2 - 1) * 8
    noise = torch.rand(1, side, side, generator=g) < 0.1
    target[noise] = torch.randint(0, k, (int(noise.sum()),), generator=g)
    return logits, target


def _exact_log_odds(logits: torch.Tensor) -> np.ndarray:
    """(N, C) float64 log-odds of every class, sigmoid or softmax: the exact scores."""
    z = logits.double().permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    if z.shape[1] == 1:
        return torch.cat([-z, z], dim=1).numpy()
    log_p = torch.log_softmax(z, dim=1)
    return (log_p - torch.log(-torch.expm1(log_p))).numpy()


@pytest.mark.parametrize("num_classes", [1, 3])
def test_aucs_of_a_confident_model_match_sklearn(num_classes: int) -> None:
    """Within 1e-3 of the exact AUCs, from logits and from float32 probabilities alike (10,000
    bins of probability were 2e-3 (binary) and 1e-2 (3 classes) off in PR-AUC here)."""
    logits, target = _confident(num_classes, 1_000_000 if num_classes == 1 else 360_000)
    from_logits, from_probs = SegMetrics(num_classes), SegMetrics(num_classes)
    from_logits.update_from_logits(logits, target)
    from_probs.update(probs_from_logits(logits), target)
    scores, labels = _exact_log_odds(logits), target.reshape(-1).numpy()
    for c, name in enumerate(from_logits.class_names):
        positive = labels == c
        exact = {
            "roc_auc": roc_auc_score(positive, scores[:, c]),
            "pr_auc": average_precision_score(positive, scores[:, c]),
        }
        for metrics in (from_logits, from_probs):
            got = metrics.compute()
            for key, value in exact.items():
                assert abs(got[f"{key}_{name}"] - value) < 1e-3, (name, key, got, value)


def test_softmax_log_odds_is_exact_where_probabilities_round_to_one() -> None:
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 4
    np.testing.assert_allclose(
        softmax_log_odds(z).double().numpy(), _exact_log_odds(z.T.reshape(1, 4, 50, 1)), atol=1e-4
    )
    confident = torch.tensor([[40.0, 0.0, 0.0], [0.0, -30.0, 0.0]])
    expected = [[40 - math.log(2), -40.0, -40.0], [0.0, -30 - math.log(2), 0.0]]
    np.testing.assert_allclose(softmax_log_odds(confident).numpy(), expected, atol=1e-5)
    naive = torch.logit(torch.softmax(confident, dim=1))
    assert math.isinf(naive[0, 0])  # what binning probabilities would have given


def test_chunked_updates_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporaries are O(chunk): a tiny chunk (several images at once, and slices of one
    image) counts exactly what one chunk over the whole batch counts."""
    for num_classes in (1, 3):
        logits, target = _case(num_classes, seed=13, batch=3, size=8)
        results = {}
        for chunk in (1 << 30, 7 * max(num_classes, 2), 130 * max(num_classes, 2)):
            monkeypatch.setattr(segray.metrics, "CHUNK_VALUES", chunk)
            metrics = SegMetrics(num_classes, ignore_index=IGNORE)
            metrics.update_from_logits(logits, target)
            metrics.update(probs_from_logits(logits), target)
            results[chunk] = metrics
        whole, *chunked = results.values()
        for metrics in chunked:
            for name in ("confusion", "hist", "n_pixels", "n_images", "n_images_no_fg"):
                assert torch.equal(metrics.state[name], whole.state[name]), name
            # sigmoid / softmax may round the last bit differently at another vector alignment
            assert torch.allclose(metrics.sq_err, whole.sq_err, rtol=0, atol=1e-6)


# ----------------------------------------------------------------- curves
def test_curves_are_the_binned_sklearn_curves() -> None:
    logits, target = _case(1, seed=11)
    metrics = SegMetrics(1, bins=100, ignore_index=IGNORE)
    metrics.update_from_logits(logits, target)
    curves = metrics.curves()
    assert set(curves) == {"fpr", "tpr", "precision", "recall", "thresholds"}
    assert len({len(v) for v in curves.values()}) == 1
    assert curves["thresholds"][0] == np.inf and np.all(np.diff(curves["thresholds"]) < 0)
    assert (curves["fpr"][0], curves["tpr"][0], curves["precision"][0]) == (0.0, 0.0, 1.0)
    assert (curves["fpr"][-1], curves["tpr"][-1]) == (1.0, 1.0)
    # scikit-learn on the same scores rounded down to their bin edge gives the same points:
    # 100 bins of log-odds over [-L, L], their lower edges as probabilities (bin 0: 0.0)
    valid = target != IGNORE
    index = ((logits[:, 0][valid] + LOGIT_LIMIT) * (100 / (2 * LOGIT_LIMIT))).floor()
    edge = -LOGIT_LIMIT + index.clamp(0, 99).double().numpy() * (2 * LOGIT_LIMIT / 100)
    binned = np.where(index.numpy() <= 0, 0.0, 1 / (1 + np.exp(-edge)))
    labels = target[valid].numpy()
    fpr, tpr, thresholds = roc_curve(labels, binned, drop_intermediate=False)
    np.testing.assert_allclose(curves["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(curves["tpr"], tpr, atol=1e-12)
    np.testing.assert_allclose(curves["thresholds"][1:], thresholds[1:], atol=1e-12)
    got = metrics.compute()
    assert auc(curves["fpr"], curves["tpr"]) == pytest.approx(got["roc_auc"], abs=1e-12)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(labels, binned), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(average_precision_score(labels, binned), abs=1e-12)
    background = metrics.curves(0)
    assert background["tpr"][-1] == 1.0


def test_curves_class_index() -> None:
    metrics = SegMetrics(3, ignore_index=IGNORE)
    metrics.update_from_logits(*_case(3, seed=12))
    assert len(metrics.curves(2)["fpr"]) > 2
    with pytest.raises(ValueError, match="class_index is required"):
        metrics.curves()
    with pytest.raises(ValueError, match=r"class_index must be in 0\.\.2"):
        metrics.curves(3)


# ----------------------------------------------------------------- input errors
def test_errors_explain_themselves() -> None:
    with pytest.raises(ValueError, match="2 unique names"):
        SegMetrics(1, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="threshold"):
        SegMetrics(1, threshold=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        SegMetrics(0)
    metrics = SegMetrics(3, ignore_index=IGNORE)
    probs = torch.full((1, 3, 2, 2), 1 / 3)
    with pytest.raises(ValueError, match=r"probs must be \(B, 3, H, W\)"):
        metrics.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="to match probs"):
        metrics.update(probs, torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices"):
        metrics.update(probs, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"0\.\.2 or ignore_index=255"):
        metrics.update(probs, torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match=r"pred values must be class indices 0\.\.1"):
        per_image_metrics(np.full((2, 2), 2), np.zeros((2, 2), dtype=np.int64), num_classes=1)
    with pytest.raises(ValueError, match="integer class map"):
        per_image_metrics(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int64), num_classes=1)


def test_confusion_counts_match_sklearn_and_leave_ignored_pixels_out():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (2, 16, 16))
    target[0, :4] = IGNORE
    pred = rng.integers(0, 3, (2, 16, 16)).astype(np.uint8)
    got = confusion_counts(pred, target, 3, IGNORE)
    keep = target != IGNORE
    assert got.dtype == np.int64 and got.sum() == keep.sum()
    np.testing.assert_array_equal(got, confusion_matrix(target[keep], pred[keep], labels=[0, 1, 2]))
    assert confusion_counts(pred, target.clip(0, 2), 3).sum() == target.size  # none ignored
