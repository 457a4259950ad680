"""Segmentation metrics: one streaming accumulator of counts, summed across ranks, then metrics.

    metrics = SegMetrics(num_classes=1, ignore_index=255)
    for logits, target in batches:
        metrics.update_from_logits(logits, target)
    metrics.all_reduce()          # under DDP: sum the counts of every rank (no-op otherwise)
    metrics.compute()             # {"accuracy": ..., "dice": ..., "dice_foreground": ..., ...}
    metrics.curves()              # ROC / PR curve points for plots

Every metric is derived from counts summed over all pixels of all images on all ranks, never
from an average of per-batch or per-rank scores (torchvision's ``ConfusionMatrix`` habit).

Conventions (shared with `segray.losses`): logits are (B, K, H, W), K == 1 a binary task
(sigmoid = P(foreground)), K > 1 K classes (softmax); targets are integer (B, H, W) class maps
(binary: 0 / 1); pixels equal to ``ignore_index`` count nowhere.

Prediction: binary -> foreground where P(foreground) >= threshold; multi-class -> argmax.
Binary tasks are scored over the two classes (background, foreground).

Count metrics, per class c from the confusion matrix (TP, FP, FN, TN of c against the rest):
dice = f1 = 2TP / (2TP + FP + FN), iou = TP / (TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN), specificity = TN / (TN + FP); accuracy = correct pixels / all pixels.
A ratio whose denominator is empty is undefined and reported as NaN, never as a made-up score
(scikit-learn's ``zero_division=np.nan``):

* dice, iou, f1: NaN when the class is absent from both target and prediction. A model that
  predicts only background on images without foreground has no foreground Dice: NaN, not 1.0.
  With foreground in the target and none predicted (or the reverse) they are 0.
* precision: NaN when the class is never predicted; recall: NaN when it never occurs in the
  target; specificity: NaN when every pixel is of the class.
* accuracy and mse: NaN only with no valid pixel at all.

Score metrics, per class: ``mse`` = mean over valid pixels of (p_c - onehot_c)^2 (binary
foreground: of P(foreground) vs the 0/1 target, as in seed 003); from histograms of the class
log-odds, ``roc_auc`` = trapezoidal area under the ROC curve and ``pr_auc`` = average precision
as scikit-learn defines it, sum_n (R_n - R_{n-1}) * P_n. roc_auc is NaN when the class has no
positive or no negative pixel; pr_auc is NaN when it has no positive pixel (with positives only
it is 1.0, as in scikit-learn). The histograms bin log(p_c / (1 - p_c)) uniformly over
[-LOGIT_LIMIT, LOGIT_LIMIT] (beyond it: the edge bins), so a confident model, whose scores
crowd next to 0 and 1 in probability, keeps its ranking: the AUCs match scikit-learn's exact ones
within 1e-3. `SegMetrics.update_from_logits` bins the logits themselves (sigmoid) or the
softmax log-odds z_c - logsumexp_{j != c} z_j (computed stably); `SegMetrics.update` takes
probabilities and their logit. Pixels are processed in chunks of a fixed size, so an update's
temporaries are bounded whatever the batch.

Headline keys (``dice``, ``iou``, ...): binary -> the foreground class (NaN where it is NaN);
multi-class -> the macro mean over classes 1..K-1, i.e. background (class 0) excluded,
skipping classes whose value is NaN (NaN if all are). Per-class keys ``<metric>_<class name>``
are reported for every class, background included. ``num_images`` counts the images seen and
``num_images_no_foreground`` those whose target has no valid pixel of any class but background
(binary: no foreground pixel): images whose recall is undefined, and Dice / IoU too unless
foreground was predicted on them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "SegMetrics",
    "confusion_counts",
    "confusion_metrics",
    "per_image_metrics",
    "probs_from_logits",
    "softmax_log_odds",
]

COUNT_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "f1", "specificity")
SCORE_METRICS: tuple[str, ...] = ("mse", "roc_auc", "pr_auc")
#: The histograms span log-odds in [-LOGIT_LIMIT, LOGIT_LIMIT]: probabilities 2e-9 .. 1 - 2e-9.
LOGIT_LIMIT = 20.0
#: Values (pixels x classes) an update processes at once: its temporaries are a few times this.
CHUNK_VALUES = 1 << 21


def probs_from_logits(logits: Tensor) -> Tensor:
    """Class probabilities from (B, K, H, W) logits: sigmoid when K == 1, else softmax over K."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, K, H, W), got {tuple(logits.shape)}")
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def softmax_log_odds(logits: Tensor, dim: int = 1) -> Tensor:
    """log(p_c / (1 - p_c)) of ``softmax(logits)`` along ``dim``, stable for confident models.

    Equals z_c - logsumexp_{j != c} z_j. With e_j = exp(z_j - max z) and s the sum of e_j over
    the classes but the winner (the argmax, e = 1): a loser's log-odds is
    z_c - max z - log(1 + s - e_c) (the argument is >= 1: no cancellation) and the winner's
    -log(s), a sum without a subtraction: exact where ``log(p) - log1p(-p)`` would give +inf
    once p rounds to 1.
    """
    top, winner = logits.max(dim=dim, keepdim=True)
    shifted = logits - top
    e = torch.exp(shifted)
    others = e.scatter(dim, winner, 0.0).sum(dim=dim, keepdim=True)
    odds = shifted.sub_(torch.log((others - e).add_(1.0)))
    return odds.scatter_(dim, winner, -torch.log(others))


def _ratio(num: npt.ArrayLike, den: npt.ArrayLike, empty: npt.ArrayLike) -> np.ndarray:
    """num / den elementwise, ``empty`` where den == 0."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.broadcast_to(np.asarray(empty, np.float64), num.shape).copy()
    return np.divide(num, den, out=out, where=den > 0)


def confusion_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """The count metrics of a C x C confusion matrix (rows = target, columns = prediction).

    The one place these formulas live: `SegMetrics.compute` and `per_image_metrics` both call
    it. Returns ``accuracy`` (0-d) and, per class (shape (C,)), ``dice``, ``iou``,
    ``precision``, ``recall``, ``f1`` (equal to dice for hard labels) and ``specificity``; an
    empty denominator gives NaN (module docstring).
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    dice = _ratio(2 * tp, 2 * tp + fp + fn, np.nan)
    return {
        "accuracy": _ratio(np.trace(cm), cm.sum(), np.nan),
        "dice": dice,
        "iou": _ratio(tp, tp + fp + fn, np.nan),
        "precision": _ratio(tp, tp + fp, np.nan),
        "recall": _ratio(tp, tp + fn, np.nan),
        "f1": dice,
        "specificity": _ratio(tn, tn + fp, np.nan),
    }


def _headline(values: np.ndarray, binary: bool) -> float:
    """Binary: the foreground value; multi-class: NaN-skipping mean over classes 1..K-1."""
    if values.ndim == 0:
        return float(values)
    if binary:
        return float(values[1])
    rest = values[1:]
    defined = rest[~np.isnan(rest)]
    return float(defined.mean()) if defined.size else float("nan")


def _sweep(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Curve points from (..., 2, bins) negative/positive histograms, thresholds high to low.

    Point 0 is threshold +inf (nothing predicted positive), point i the lower edge of bin
    ``bins - i``. Returns fpr, tpr, precision, recall, each (..., bins + 1); tpr/recall are NaN
    without positives, fpr without negatives; precision with no predicted positive is 1.0.
    """
    desc = hist[..., ::-1].astype(np.float64)
    start = np.zeros(desc.shape[:-2] + (1,))
    fp = np.concatenate([start, np.cumsum(desc[..., 0, :], axis=-1)], axis=-1)
    tp = np.concatenate([start, np.cumsum(desc[..., 1, :], axis=-1)], axis=-1)
    tpr = _ratio(tp, tp[..., -1:], np.nan)
    fpr = _ratio(fp, fp[..., -1:], np.nan)
    return fpr, tpr, _ratio(tp, tp + fp, 1.0), tpr


def _aucs(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC (trapezoidal) and average precision per leading index of (..., 2, bins)."""
    fpr, tpr, precision, recall = _sweep(hist)
    roc_auc = np.sum(np.diff(fpr, axis=-1) * (tpr[..., 1:] + tpr[..., :-1]) / 2, axis=-1)
    pr_auc = np.sum(np.diff(recall, axis=-1) * precision[..., 1:], axis=-1)
    return roc_auc, pr_auc


def _pixel_chunks(values: Tensor, target: Tensor, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(B, K, H, W) values and (B, H, W) targets as ((n, K), (n,)) pixel chunks, n <= ``size``
    (whole images together while they fit, else slices of one image): every copy is O(size)."""
    b, k = values.shape[:2]
    values, target = values.flatten(2), target.flatten(1)
    hw = values.shape[2]
    if hw == 0:
        return
    if hw <= size:
        step = size // hw
        for i in range(0, b, step):
            yield (
                values[i : i + step].transpose(1, 2).reshape(-1, k),
                target[i : i + step].reshape(-1),
            )
    else:
        for i in range(b):
            for s in range(0, hw, size):
                yield values[i, :, s : s + size].T, target[i, s : s + size]


def check_batch(values: Tensor, target: Tensor, num_classes: int, kind: str = "logits") -> None:
    """Refuse a batch whose (B, K, H, W) ``values`` and (B, H, W) integer ``target`` disagree, with
    a message that says which shape or dtype was expected."""
    k = num_classes
    if values.ndim != 4 or values.shape[1] != k:
        raise ValueError(
            f"{kind} must be (B, {k}, H, W) for num_classes={k}, got {tuple(values.shape)}"
        )
    b, _, h, w = values.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"target must be (B, H, W) = {(b, h, w)} to match {kind}, got "
            f"{tuple(target.shape)} (squeeze a channel dimension of size 1)"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex:
        raise ValueError(
            f"target must hold integer class indices (int64), got {target.dtype}; "
            "convert it with target.long()"
        )


class SegMetrics:
    """Streaming per-class confusion counts + log-odds histograms, all-reducible across ranks.

    State (tensors on ``device``), C = 2 for a binary task (background, foreground), else K:

    * ``confusion``: (C, C) int64, rows = target class, columns = predicted class.
    * ``hist``: (C, 2, bins) int64; ``hist[c, 0]`` / ``hist[c, 1]`` histogram the log-odds of
      class c over pixels not of / of class c (binary background: minus the foreground logit).
      Bin i is [-L + i w, -L + (i + 1) w), w = 2L / bins, L = `LOGIT_LIMIT`; values beyond
      -L / L fall into the first / last bin.
    * ``sq_err``: (C,) float64, sum over pixels of (p_c - onehot_c)^2.
    * ``n_pixels``: () int64, number of valid pixels seen.
    * ``n_images``, ``n_images_no_fg``: () int64, images seen, and those of them whose target has
      no valid pixel of any class but background.

    Args:
        num_classes: 1 for a binary task (one sigmoid channel), K >= 2 for K softmax classes.
        class_names: names used in the per-class keys, C of them; default
            ["background", "foreground"] (binary) or ["class0", ..., "class{K-1}"].
        threshold: binary only: foreground where P(foreground) >= threshold.
        bins: histogram bins over the log-odds range (the default resolves 0.0025 in log-odds,
            i.e. 6e-4 in probability around 0.5).
        ignore_index: target value of pixels that never count; None: every pixel counts.
        device: where the state lives; under DDP the device the backend reduces on (CPU for
            gloo, the rank's GPU for nccl).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_names: list[str] | None = None,
        threshold: float = 0.5,
        bins: int = 16384,
        ignore_index: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = binary), got {num_classes}")
        self.binary = num_classes == 1
        n = 2 if self.binary else num_classes
        if class_names is None:
            class_names = (
                ["background", "foreground"] if self.binary else [f"class{i}" for i in range(n)]
            )
        if len(class_names) != n or len(set(class_names)) != n:
            raise ValueError(
                f"class_names must be {n} unique names for num_classes={num_classes}"
                f"{' (background, foreground)' if self.binary else ''}, got {class_names}"
            )
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.threshold = threshold
        self.bins = bins
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        self.confusion = torch.zeros(n, n, dtype=torch.int64, device=self.device)
        self.hist = torch.zeros(n, 2, bins, dtype=torch.int64, device=self.device)
        self.sq_err = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.n_pixels = torch.zeros((), dtype=torch.int64, device=self.device)
        self.n_images = torch.zeros((), dtype=torch.int64, device=self.device)
        self.n_images_no_fg = torch.zeros((), dtype=torch.int64, device=self.device)

    @property
    def state(self) -> dict[str, Tensor]:
        """The state tensors by name (live references: summing into them updates the metric)."""
        return {
            "confusion": self.confusion,
            "hist": self.hist,
            "sq_err": self.sq_err,
            "n_pixels": self.n_pixels,
            "n_images": self.n_images,
            "n_images_no_fg": self.n_images_no_fg,
        }

    @torch.no_grad()
    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch: ``probs`` (B, K, H, W) from `probs_from_logits`, ``target`` (B, H, W).

        The histograms bin ``logit(p)``: in float32 a probability within 6e-8 of 1 is 1, so
        positives more confident than that tie in the last bin; `update_from_logits` keeps them
        apart (the AUCs differ only if negatives score that high too).
        """
        self._update(probs, target, "probs")

    @torch.no_grad()
    def update_from_logits(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch of (B, K, H, W) logits: as `update` with ``probs_from_logits(logits)``,
        but the histograms bin the log-odds computed from the logits (exact at any confidence)."""
        self._update(logits, target, "logits")

    def _update(self, values: Tensor, target: Tensor, kind: str) -> None:
        k, n = self.num_classes, self.confusion.shape[0]
        check_batch(values, target, k, kind)
        b = values.shape[0]
        # Checked before any count changes, so a bad batch leaves the state as it was.
        foreground, bad = target > 0, (target < 0) | (target >= n)
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            foreground, bad = foreground & valid, bad & valid
        if bool(bad.any()):
            ignored = "" if self.ignore_index is None else f" or ignore_index={self.ignore_index}"
            raise ValueError(f"target values must be class indices 0..{n - 1}{ignored}")
        if b == 0:
            return
        no_fg = (~foreground.flatten(1).any(dim=1)).sum()
        self.n_images += b
        self.n_images_no_fg += no_fg.to(self.device)
        del foreground, bad
        size = max(1, CHUNK_VALUES // n)
        for x, t in _pixel_chunks(values.detach(), target, size):
            self._add_chunk(x.to(self.device, torch.float32), t.to(self.device, torch.int64), kind)

    def _add_chunk(self, x: Tensor, t: Tensor, kind: str) -> None:
        """Count (n, K) probabilities or logits ``x`` of pixels with targets ``t`` (n,)."""
        n, bins = self.confusion.shape[0], self.bins
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            if not bool(keep.all()):
                x, t = x[keep], t[keep]
        if kind == "logits":
            p = torch.sigmoid(x) if self.binary else torch.softmax(x, dim=1)
            odds = x if self.binary else softmax_log_odds(x)
        else:
            p, odds = x, torch.logit(x)  # +-inf at 0 / 1: the edge bins
        if self.binary:
            fg = p[:, 0]
            pred = (fg >= self.threshold).long()
            p, odds = torch.stack([1.0 - fg, fg], dim=1), torch.cat([-odds, odds], dim=1)
        else:
            pred = p.argmax(dim=1)
        classes = torch.arange(n, device=self.device)
        onehot = t.unsqueeze(1) == classes
        self.confusion += torch.bincount(t * n + pred, minlength=n * n).view(n, n)
        scale = bins / (2 * LOGIT_LIMIT)
        # bin = floor((odds + L) * scale), clamped: truncation floors the clamped values >= 0
        index = odds.add_(LOGIT_LIMIT).mul_(scale).clamp_(0, bins - 1).long()
        slot = (classes * 2 + onehot) * bins + index
        self.hist += torch.bincount(slot.view(-1), minlength=n * 2 * bins).view(n, 2, bins)
        self.sq_err += (p - onehot.float()).square().sum(dim=0, dtype=torch.float64)
        self.n_pixels += t.numel()

    def all_reduce(self) -> SegMetrics:
        """Sum every state tensor over all ranks when torch.distributed is initialised.

        A no-op in a single process. Call it once, on every rank, after the last `update`: it
        sums in place, so a second call would count everything again. Returns self.
        """
        if dist.is_available() and dist.is_initialized():
            for tensor in self.state.values():
                dist.all_reduce(tensor)
        return self

    def merge(self, other: SegMetrics) -> None:
        """Add the counts of another accumulator with the same classes, threshold and bins."""
        if (other.num_classes, other.threshold, other.bins) != (
            self.num_classes,
            self.threshold,
            self.bins,
        ):
            raise ValueError(
                "can only merge SegMetrics with equal num_classes, threshold and bins: "
                f"{(self.num_classes, self.threshold, self.bins)} != "
                f"{(other.num_classes, other.threshold, other.bins)}"
            )
        for name, tensor in self.state.items():
            tensor += other.state[name].to(self.device)

    def reset(self) -> None:
        """Zero every count."""
        for tensor in self.state.values():
            tensor.zero_()

    def compute(self) -> dict[str, float]:
        """Headline metrics, ``<metric>_<class name>`` for every class, then ``num_images`` and
        ``num_images_no_foreground`` (module docstring)."""
        per_class = confusion_metrics(self.confusion.cpu().numpy())
        n_pixels = int(self.n_pixels)
        per_class["mse"] = _ratio(self.sq_err.cpu().numpy(), n_pixels, np.nan)
        per_class["roc_auc"], per_class["pr_auc"] = _aucs(self.hist.cpu().numpy())
        out = {key: _headline(values, self.binary) for key, values in per_class.items()}
        for key in COUNT_METRICS + SCORE_METRICS:
            for name, value in zip(self.class_names, per_class[key], strict=True):
                out[f"{key}_{name}"] = float(value)
        out["num_images"] = int(self.n_images)
        out["num_images_no_foreground"] = int(self.n_images_no_fg)
        return out

    def _bin_thresholds(self) -> np.ndarray:
        """Probability at the lower edge of every bin, ascending (bin 0: 0.0, it holds all
        below), as float64 (the sigmoid of the log-odds edges)."""
        edges = -LOGIT_LIMIT + np.arange(self.bins) * (2 * LOGIT_LIMIT / self.bins)
        out = 1.0 / (1.0 + np.exp(-edges))
        out[0] = 0.0
        return out

    def curves(self, class_index: int | None = None) -> dict[str, np.ndarray]:
        """ROC and PR curve points of one class from its histograms, for plots.

        Args:
            class_index: the class (0..C-1); None means the foreground of a binary task (a
                multi-class headline is a macro mean, which has no single curve).

        Returns:
            ``fpr``, ``tpr``, ``precision``, ``recall`` and ``thresholds``, equal-length arrays:
            point i predicts positive where the class probability >= ``thresholds[i]``. The
            thresholds are the lower edges of the non-empty bins in probability, decreasing,
            after a first point at +inf (nothing positive: fpr = tpr = recall = 0,
            precision = 1).
        """
        n = self.confusion.shape[0]
        if class_index is None:
            if not self.binary:
                raise ValueError(
                    f"class_index is required for num_classes={self.num_classes} (0..{n - 1}); "
                    "None means the foreground of a binary task"
                )
            class_index = 1
        if not 0 <= class_index < n:
            raise ValueError(f"class_index must be in 0..{n - 1}, got {class_index}")
        hist = self.hist[class_index].cpu().numpy()
        fpr, tpr, precision, recall = _sweep(hist)
        thresholds = np.concatenate([[np.inf], self._bin_thresholds()[::-1]])
        keep = np.concatenate([[True], hist.sum(axis=0)[::-1] > 0])
        return {
            "fpr": fpr[keep],
            "tpr": tpr[keep],
            "precision": precision[keep],
            "recall": recall[keep],
            "thresholds": thresholds[keep],
        }


def _as_numpy(x: np.ndarray | Tensor, what: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{what} must be an integer class map, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


def confusion_counts(
    pred: np.ndarray, target: np.ndarray, n: int, ignore: int | None = None
) -> np.ndarray:
    """``(n, n)`` int64 counts of class maps (0..n-1): rows target, columns prediction."""
    t, p = np.ravel(target), np.ravel(pred)
    keep = t != ignore if ignore is not None else slice(None)  # ignored target pixels left out
    return np.bincount(t[keep].astype(np.int64) * n + p[keep], minlength=n * n).reshape(n, n)


def per_image_metrics(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    *,
    num_classes: int,
    ignore_index: int | None = None,
) -> dict[str, float]:
    """Headline ``dice``, ``iou``, ``precision``, ``recall``, ``accuracy`` of one image.

    ``pred`` and ``target`` are (H, W) integer class maps (binary: 0 / 1); ``num_classes`` as
    in `SegMetrics` (1 = binary). Same formulas, zero-division rules and headline (binary:
    foreground; multi-class: mean over classes 1..K-1) as `SegMetrics.compute`.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (1 = binary), got {num_classes}")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    p, t = _as_numpy(pred, "pred"), _as_numpy(target, "target")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    n = 2 if num_classes == 1 else num_classes
    for what, values in (("pred", p), ("target", t)):
        if values.size and (values.min() < 0 or values.max() >= n):
            raise ValueError(f"{what} values must be class indices 0..{n - 1}")
    counts = confusion_metrics(confusion_counts(p, t, n))
    return {
        key: _headline(counts[key], num_classes == 1)
        for key in ("dice", "iou", "precision", "recall", "accuracy")
    }
