"""Boundary and structure metrics of one image: where overlap scores are blind to the shape.

    surface_metrics(pred, target, num_classes=1, ignore_index=255, tol=2)
    # {"hd95": 1.0, "msd": 0.41, "boundary_f1": 0.97}
    em_metrics(pred, target, ignore_index=255)
    # {"v_rand": 0.93, "v_info": 0.96}

Dice can be 0.95 while a membrane has a gap that merges two cells; these scores see it. All
take (H, W) integer class maps (binary: 0 / 1) and use numpy and `scipy.ndimage` only (no
torch), so bulk segmentation's actors compute them next to the mask.

Surface scores (`surface_scores`, per foreground class; distances in pixels):

* Boundary of a mask: its pixels with a 4-connected neighbour outside the mask, pixels beyond
  the image counting as outside, i.e. ``mask XOR binary_erosion(mask)`` with the cross
  structuring element and ``border_value=0``. This is MONAI's ``get_mask_edges``, so the
  distances below are MONAI's ``compute_hausdorff_distance`` (``percentile=95``,
  ``directed=False``) and ``compute_average_surface_distance`` (``symmetric=True``).
* Surface distances: for each predicted boundary pixel the Euclidean distance to the nearest
  true boundary pixel, and conversely (`scipy.ndimage.distance_transform_edt`).
* ``hd95``: the larger of the two directed 95th percentiles (numpy's linear interpolation).
  ``msd``: the mean of both sets of distances together (mean surface distance).
* ``boundary_f1`` at ``tol`` pixels (Csurka et al. 2013, "What is a good evaluation measure
  for semantic segmentation?"): precision = fraction of predicted boundary pixels within
  ``tol`` of a true boundary pixel, recall the converse, F1 their harmonic mean.
* Empty masks, as for Dice: both empty -> hd95 = msd = boundary_f1 = NaN (nothing to find,
  nothing found: undefined, never a perfect 0 / 1.0), left out of a mean. One empty and the
  other not (the object missed entirely, or found where there is none) -> the worst case,
  finite: hd95 = msd = the image diagonal ``hypot(H, W)`` (no boundary distance can be larger)
  and boundary_f1 = 0.0. Such an image counts in the mean, so total misses pull it down
  instead of vanishing from it (MONAI returns inf there, which a mean cannot use);
  `one_sided` tells them apart, and ``segray evaluate`` reports how many images were
  penalised so.

`surface_metrics` is the per-image headline: binary -> the foreground class; multi-class ->
the mean over classes 1..K-1 present in the target or the prediction (a class on one side
only with its worst case), NaN when no class is present in either. Pixels equal to
``ignore_index`` in the target are background in both masks, so a boundary drawn inside an
ignored band (Oxford Pet trimaps) costs nothing.

EM scores (`em_metrics`, `v_rand`, `v_info`): the ISBI 2012 challenge's foreground-restricted
Rand and information-theoretic scores (Arganda-Carreras et al. 2015, "Crowdsourcing the
creation of image segmentation algorithms for connectomics", Front. Neuroanat. 9:142), as its
evaluation code computes them (Fiji, ``trainableSegmentation.metrics.RandError`` and
``VariationOfInformation``, the N^2-normalised foreground-restricted statistics):

* Regions: the pixels of any class but 0 (ISBI membrane data: cell = 1 = region, membrane =
  0 = boundary), split into 4-connected components in the ground truth T and the
  prediction S. Ignored target pixels count as membrane.
* Foreground restriction: only pixels inside a true region count (n of them);
  p_ij = (pixels in true region i and predicted region j) / n, t_i = sum_j p_ij,
  s_j = sum_i p_ij. A true-region pixel predicted as membrane is its own singleton segment.
* ``v_rand`` = 2 sum_ij p_ij^2 / (sum_j s_j^2 + sum_i t_i^2): the F-score of Rand split and
  merge scores (1.0 = identical up to relabelling).
* ``v_info`` = 2 I(S;T) / (H(S) + H(T)): the F-score of the information-theoretic split and
  merge scores I/H(S) and I/H(T). Where H(S) + H(T) = 0 (one region, predicted as one) it is
  1.0; Fiji's code returns 0 there.
* No true region at all: both NaN.
* Not applied here: the challenge's final ranking also thinned the predicted membranes to one
  pixel (watershed) and took the best score over thresholds of a probability map; these scores
  are of the mask as predicted.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "DEFAULT_TOL",
    "boundary",
    "em_metrics",
    "one_sided",
    "surface_distances",
    "surface_metrics",
    "surface_scores",
    "v_info",
    "v_rand",
]

DEFAULT_TOL = 2.0  # boundary F1 tolerance in pixels
_BOTH_EMPTY = {"hd95": math.nan, "msd": math.nan, "boundary_f1": math.nan}  # undefined
_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean (H, W) mask: mask XOR its 4-connected erosion (module
    docstring; the image border counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def surface_distances(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (pixels) from each boundary pixel of ``pred`` to the nearest one of ``true``,
    and from each of ``true`` to ``pred``; two empty arrays when either boundary is empty."""
    bp, bt = boundary(pred), boundary(true)
    if not bp.any() or not bt.any():
        return np.empty(0), np.empty(0)
    # Crop to the bounding box of both boundaries: every nearest boundary pixel lies inside.
    rows = np.flatnonzero((bp | bt).any(axis=1))
    cols = np.flatnonzero((bp | bt).any(axis=0))
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    bp, bt = bp[box], bt[box]
    to_true = ndimage.distance_transform_edt(~bt)
    to_pred = ndimage.distance_transform_edt(~bp)
    return to_true[bp], to_pred[bt]


def surface_scores(
    pred: np.ndarray, true: np.ndarray, *, tol: float = DEFAULT_TOL
) -> dict[str, float]:
    """``hd95``, ``msd`` and ``boundary_f1`` of two boolean (H, W) masks (module docstring)."""
    if tol < 0:
        raise ValueError(f"boundary tolerance must be >= 0 pixels, got {tol}")
    has_pred, has_true = bool(np.any(pred)), bool(np.any(true))
    if not has_pred and not has_true:
        return dict(_BOTH_EMPTY)
    if not has_pred or not has_true:  # the worst case, finite (module docstring)
        diagonal = math.hypot(*np.shape(pred))
        return {"hd95": diagonal, "msd": diagonal, "boundary_f1": 0.0}
    d_pred, d_true = surface_distances(pred, true)
    precision = float(np.mean(d_pred <= tol))
    recall = float(np.mean(d_true <= tol))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "hd95": float(max(np.percentile(d_pred, 95), np.percentile(d_true, 95))),
        "msd": float(np.concatenate([d_pred, d_true]).mean()),
        "boundary_f1": f1,
    }


def surface_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    num_classes: int,
    ignore_index: int | None = None,
    tol: float = DEFAULT_TOL,
) -> dict[str, float]:
    """Headline ``hd95``, ``msd``, ``boundary_f1`` of one (H, W) predicted class map against
    its target (``num_classes`` as in `segray.metrics.SegMetrics`: 1 = binary)."""
    pred, target = _check(pred, target)
    valid = target != ignore_index if ignore_index is not None else np.ones(target.shape, bool)
    scores = []
    for c in [1] if num_classes == 1 else range(1, num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        if p.any() or t.any():
            scores.append(surface_scores(p, t, tol=tol))
    if not scores:
        return dict(_BOTH_EMPTY)
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def one_sided(
    pred: np.ndarray, target: np.ndarray, *, num_classes: int, ignore_index: int | None = None
) -> bool:
    """Whether a foreground class is in only one of ``pred`` and ``target`` (valid pixels), so
    that `surface_metrics` scored it with the worst case (module docstring)."""
    pred, target = _check(pred, target)
    valid = target != ignore_index if ignore_index is not None else np.ones(target.shape, bool)
    for c in [1] if num_classes == 1 else range(1, num_classes):
        if bool(((pred == c) & valid).any()) != bool(((target == c) & valid).any()):
            return True
    return False


def em_metrics(
    pred: np.ndarray, target: np.ndarray, *, ignore_index: int | None = None
) -> dict[str, float]:
    """``v_rand`` and ``v_info`` of one (H, W) class map: regions = any class but 0, split into
    4-connected components (module docstring)."""
    pred, target = _check(pred, target)
    regions = target != 0
    if ignore_index is not None:
        regions &= target != ignore_index
    truth = ndimage.label(regions, structure=_CROSS)[0]
    segments = ndimage.label(pred != 0, structure=_CROSS)[0]
    return {"v_rand": v_rand(segments, truth), "v_info": v_info(segments, truth)}


def v_rand(segments: np.ndarray, truth: np.ndarray) -> float:
    """Foreground-restricted Rand F-score of two label images (0 = boundary / background;
    module docstring): 1.0 for identical segmentations, NaN without a true region."""
    table = _contingency(segments, truth)
    if table is None:
        return math.nan
    p, t, s, singles, n = table
    single = singles / n**2  # each singleton pixel: p = 1/n, p^2 = 1/n^2
    sum_p = float(np.sum(p * p)) + single
    return 2 * sum_p / (float(np.sum(s * s)) + single + float(np.sum(t * t)))


def v_info(segments: np.ndarray, truth: np.ndarray) -> float:
    """Foreground-restricted information-theoretic F-score 2 I(S;T) / (H(S) + H(T)) of two
    label images (0 = boundary / background; module docstring): 1.0 for identical
    segmentations, NaN without a true region."""
    table = _contingency(segments, truth)
    if table is None:
        return math.nan
    p, t, s, singles, n = table
    single = singles / n * math.log(n)  # each singleton pixel: -p log p = (1/n) log n
    h_t = _entropy(t)
    h_s = _entropy(s) + single
    h_st = _entropy(p) + single
    if h_s + h_t == 0:  # one true region, predicted as one region: identical
        return 1.0
    info = min(max(h_s + h_t - h_st, 0.0), min(h_s, h_t))  # rounding only
    return 2 * info / (h_s + h_t)


def _contingency(
    segments: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None:
    """Over the n pixels inside a true region: the non-zero p_ij (predicted region j != 0),
    t_i, s_j, and the number of singletons (pixels predicted as boundary); None when the
    truth has no region."""
    segments, truth = _check(segments, truth)
    inside = truth != 0
    n = int(np.count_nonzero(inside))
    if n == 0:
        return None
    g, s = truth[inside], segments[inside]
    t = np.unique(g, return_counts=True)[1] / n
    labelled = s != 0
    g, s = g[labelled], s[labelled]
    singles = n - g.size
    if g.size == 0:
        return np.empty(0), t, np.empty(0), singles, n
    gi = np.unique(g, return_inverse=True)[1].ravel()
    si = np.unique(s, return_inverse=True)[1].ravel()
    counts = np.bincount(gi * (int(si.max()) + 1) + si)
    return counts[counts > 0] / n, t, np.bincount(si) / n, singles, n


def _entropy(p: np.ndarray) -> float:
    """-sum p log p over positive p (natural log; the scores are ratios of entropies)."""
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"expected two (H, W) label images of the same shape, got {a.shape} and {b.shape}"
        )
    return a, b
