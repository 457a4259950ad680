"""Evaluate a checkpoint on labelled images: the full report of seed 003, at full resolution.

    metrics = evaluate_checkpoint("runs/train/checkpoints/best", data="data/new", split="all",
                                  output="reports/best")

Every image goes through a `segray.inference.segmenter.Segmenter` at its own size (so large images are
tiled exactly as in production); its probabilities feed one `SegMetrics` accumulator (metrics
from counts over all pixels, never an average of per-image scores), and its mask the
per-image scores. Written into ``output/``:

    metrics.json        accuracy, dice, iou, precision, recall, f1, specificity, mse, roc_auc,
                        pr_auc, <metric>_<class> for every class, num_images,
                        num_images_no_foreground, split, data, checkpoint, model_id (undefined
                        values as null: e.g. Dice with no foreground in any target or
                        prediction, an AUC without positives); hd95, msd, boundary_f1: means
                        of the per-image values, num_images_boundary_penalised the images
                        scored with the worst case (foreground in only one of target and
                        prediction: hd95 = msd = the image diagonal, boundary_f1 = 0; they
                        count in the means), num_images_boundary_empty the images left out
                        (no foreground in either: undefined, as for Dice), boundary_tol; with
                        ``em=True`` also v_rand and v_info (means)
    per_image.parquet   key, image, width, height, dice, iou, precision, recall, accuracy,
                        foreground_fraction_true, foreground_fraction_pred (over non-ignored
                        pixels; foreground = any class but 0; foreground_fraction_true == 0:
                        an image without foreground, whose recall is NaN, and Dice / IoU too
                        unless foreground was predicted); after accuracy: hd95, msd (mean
                        surface distance), boundary_f1 at ``boundary_tol`` pixels, with
                        ``em=True`` v_rand and v_info, the ISBI 2012 challenge's scores (NaN
                        rules and definitions: `segray.structure`), and boundary_penalised
                        (hd95, msd and boundary_f1 are the worst case)
    roc_pr.png          ROC and PR curves side by side, AUCs in the legends (one curve per
                        foreground class)
    overlays/           the ``worst_k`` images with the lowest Dice, worst first (images whose
                        Dice is undefined, nothing to find and nothing found, rank last):
                        image | ground truth | prediction | errors (false positives and
                        false negatives in two colours, legend below), titled with key and Dice

Metric definitions, undefined values included: `segray.metrics`.
"""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm import tqdm

from segray.config import Config, DataConfig, apply_overrides
from segray.data import (
    DatasetError,
    ImageError,
    Listing,
    MaskMapper,
    Sample,
    data_splits,
    dataset_root,
    find_pairs,
    fingerprint,
    list_samples,
    local_root,
    prepare_data,
)
from segray.inference.segmenter import Segmenter, load_segmenter
from segray.metrics import SegMetrics, confusion_counts, per_image_metrics
from segray.overlay import ERROR_LEGEND, error_rgba
from segray.storage import Location, published
from segray.structure import DEFAULT_TOL, em_metrics, one_sided, surface_metrics

__all__ = ["SPLITS", "evaluate_checkpoint"]

SPLITS = ("val", "test", "all")
Split = Literal["val", "test", "all"]
_OVERLAY_ALPHA = 0.5
_IGNORE_RGBA = (0.6, 0.6, 0.6, 0.7)  # ignored ground-truth pixels in overlays


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | Path | None = None,
    split: Split = "val",
    output: str | Path,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    worst_k: int = 8,
    progress: bool = True,
    boundary_tol: float = DEFAULT_TOL,
    em: bool = False,
    tta: str | None = None,
    listing: Listing | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` and write the report into ``output`` (module docstring).

    ``listing`` (`segray auto`): the checkpoint's own dataset as the run listed it; its config
    is used as prepared for training, and the dataset is neither fingerprinted nor listed.

    Args:
        checkpoint: a segray checkpoint directory.
        data: a folder with ``images/`` and ``masks/`` (masks mapped by the checkpoint's
            ``data`` config); None: the checkpoint config's own dataset.
        split: ``val`` / ``test``: that split under the checkpoint config's ``data.split``,
            ``data.split_seed`` and ``data.split_ids``; ``all``: every pair.
        output: report folder (created): a local path or a URI (``s3://...``).
        batch_size: images (same size) or tiles per forward; default ``segment.batch_size``.
        device: ``"auto"`` = CUDA when available, else CPU.
        tta: ``none | flip | d4`` test-time augmentation; default the checkpoint's
            ``segment.tta`` (its thresholds and post-processing always apply to the masks).
        worst_k: number of overlays (the lowest-Dice images).
        progress: show a progress bar over the images.
        boundary_tol: tolerance in pixels of ``boundary_f1``.
        em: also score ``v_rand`` and ``v_info`` (electron microscopy: class 0 = membrane,
            any other class = cell; `segray.structure`).

    Returns:
        The metrics written to ``metrics.json`` (NaN kept as float NaN).

    Raises:
        DatasetError: the chosen split has no images, or an image has no mask.
        ImageError: an unreadable file, or a mask whose size differs from its image.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if worst_k < 0:
        raise ValueError(f"worst_k must be >= 0, got {worst_k}")
    if boundary_tol < 0:
        raise ValueError(f"boundary_tol must be >= 0 pixels, got {boundary_tol}")
    structure = {"tol": float(boundary_tol), "em": em}
    with published(output) as local:  # a URI: written here, then uploaded
        return _evaluate(
            checkpoint,
            data,
            split,
            local,
            batch_size,
            device,
            worst_k,
            progress,
            structure,
            tta=tta,
            listing=listing,
        )


def _evaluate(
    checkpoint: str | Path,
    data: str | Path | None,
    split: Split,
    output: Path,
    batch_size: int | None,
    device: str | torch.device,
    worst_k: int,
    progress: bool,
    structure: dict[str, Any],
    tta: str | None = None,
    listing: Listing | None = None,
) -> dict[str, Any]:
    segmenter = load_segmenter(checkpoint, device=device, batch_size=batch_size, tta=tta)
    if data is None and listing is not None:  # prepared and listed by the caller's run
        config, source = segmenter.config, dataset_root(segmenter.config.data)
    else:
        config, source = _dataset_config(segmenter.config, data)
    samples = _samples(config, data, split, source, listing)
    (output / "overlays").mkdir(parents=True, exist_ok=True)
    tally = _Tally(segmenter, config.data, worst_k, structure)
    with tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress) as bar:
        for start in range(0, len(samples), segmenter.batch_size):
            chunk = samples[start : start + segmenter.batch_size]
            probas = segmenter.predict_batch_proba([s.image for s in chunk])
            for sample, proba in zip(chunk, probas, strict=True):
                tally.add(sample, proba)
            bar.update(len(chunk))

    result = tally.compute()
    result.update(
        num_images=len(samples),
        split=split,
        data=str(source),
        checkpoint=Location.parse(checkpoint).uri,  # a local path absolute, a URI as given
        model_id=segmenter.model_id,
    )
    result.update(_structure_means(tally.rows, structure["tol"]))
    (output / "metrics.json").write_text(json.dumps(_nan_to_none(result), indent=2))
    pd.DataFrame(tally.rows).to_parquet(output / "per_image.parquet", index=False)
    _plot_curves(tally.metrics, result, output / "roc_pr.png")
    _plot_worst(segmenter, tally.worst, config.data, output / "overlays")
    return result


class _Tally:
    """What evaluation accumulates image by image: the probabilities' `SegMetrics` (curves),
    the confusion of the final masks (headline scores: per-class thresholds and
    post-processing applied, as segment and export apply them), one row per image, and the
    ``worst_k`` images of lowest Dice."""

    def __init__(
        self, segmenter: Segmenter, data_cfg: DataConfig, worst_k: int, structure: dict[str, Any]
    ) -> None:
        self.segmenter, self.worst_k, self.structure = segmenter, worst_k, structure
        self.mapper = MaskMapper.from_config(data_cfg)
        self.ignore = data_cfg.ignore_index
        self.metrics = SegMetrics(
            segmenter.num_classes,
            class_names=data_cfg.classes,
            threshold=segmenter.threshold,
            ignore_index=self.ignore,
        )
        n = self.metrics.confusion.shape[0]
        self.final_confusion = np.zeros((n, n), dtype=np.int64)
        self.rows: list[dict[str, Any]] = []
        self.worst: list[tuple[float, int, Sample, np.ndarray, np.ndarray]] = []  # see _keep

    def add(self, sample: Sample, proba: np.ndarray) -> None:
        """Score one image's probabilities against its mask."""
        assert sample.mask is not None  # _samples checked
        target = self.mapper.read(sample.mask, sample.key, name=sample.mask)
        if target.shape != proba.shape[-2:]:
            raise ImageError(
                f"{sample.image}: image is {proba.shape[-1]}x{proba.shape[-2]} but its "
                f"mask {sample.mask} is {target.shape[1]}x{target.shape[0]}"
            )
        probs = torch.from_numpy(proba).reshape(1, -1, *target.shape)
        self.metrics.update(probs, torch.from_numpy(target)[None])
        pred = self.segmenter.mask_from_proba(proba)
        n = self.final_confusion.shape[0]
        self.final_confusion += confusion_counts(pred, target, n, self.ignore)
        num_classes = self.segmenter.num_classes
        row = _image_row(sample, pred, target, num_classes, self.ignore, **self.structure)
        self.rows.append(row)
        self._keep(row["dice"], sample, pred, target)

    def _keep(self, dice: float, sample: Sample, pred: np.ndarray, target: np.ndarray) -> None:
        """Min-heap on (-dice, -index): its root is the best of the kept worst_k, so a new
        image replaces it only if strictly worse (ties keep the earlier image). An undefined
        Dice (no foreground in target or prediction) ranks as the best."""
        dice = math.inf if math.isnan(dice) else dice
        entry = (-dice, -len(self.rows), sample, pred, target)
        if len(self.worst) < self.worst_k:
            heapq.heappush(self.worst, entry)
        elif self.worst_k:
            heapq.heappushpop(self.worst, entry)

    def compute(self) -> dict[str, Any]:
        """The metrics: headline scores from the final masks, curves from the probabilities."""
        self.metrics.confusion.copy_(torch.from_numpy(self.final_confusion))
        return self.metrics.compute()


def _plot_worst(
    segmenter: Segmenter,
    worst: list[tuple[float, int, Sample, np.ndarray, np.ndarray]],
    data_cfg: DataConfig,
    folder: Path,
) -> None:
    """One overlay per kept image (`_Tally._keep`), worst first, into ``folder``."""
    for rank, (neg_dice, _, sample, pred, target) in enumerate(sorted(worst, reverse=True)):
        image = segmenter.to_array(sample.image)  # the model's bands, as it saw them
        if image.shape[2] not in (1, 3):  # multi-band: its first three (or one) shown
            image = image[..., : 3 if image.shape[2] > 3 else 1]
        name = f"{rank:02d}_{sample.key.replace('/', '__')}.png"
        dice = "n/a (no foreground)" if math.isinf(neg_dice) else f"{-neg_dice:.4f}"
        title = f"{sample.key}  -  Dice {dice}"
        classes, ignore = len(data_cfg.classes), data_cfg.ignore_index
        _plot_overlay(image, target, pred, title, classes, ignore, folder / name)


# --------------------------------------------------------------------------- data
def _dataset_config(config: Config, data: str | Path | None) -> tuple[Config, Path]:
    """The config whose ``data`` maps the masks, and the dataset root, for ``data``.

    The checkpoint's own dataset is prepared first (absolute root; a synthetic one generated
    and its mask convention set), exactly as training prepared it. For another folder, a
    ``data.mask_mode`` of ``auto`` is chosen from that folder's mask values.
    """
    if data is not None:
        root = local_root(data)  # a URI (s3://...) is mirrored, see segray.data.remote
        if config.data.mask_mode == "auto":
            folder = {"data.source": "folder", "data.root": str(root)}
            folder.update({"data.images_dir": "images", "data.masks_dir": "masks"})
            found = fingerprint(apply_overrides(config, folder).data)
            if not found.updates:
                raise DatasetError(found.error or f"{root}: cannot choose data.mask_mode")
            config = apply_overrides(config, found.updates)
        return config, root
    prepared = prepare_data(config)
    assert prepared.data.root is not None  # prepare_data always sets it
    return prepared, dataset_root(prepared.data)


def _samples(
    config: Config,
    data: str | Path | None,
    split: str,
    source: Path,
    listing: Listing | None = None,
) -> list[Sample]:
    """The samples of ``split``: from ``data/images`` + ``data/masks`` or the config's source."""
    if data is not None:
        samples = find_pairs(source / "images", source / "masks")
    else:
        samples = list_samples(config.data, check=False, listing=listing)  # checked before
    if split != "all":
        samples = data_splits(samples, config.data)[split]
    if not samples:
        raise DatasetError(f"{source}: split {split!r} has no images (try --split all)")
    unlabelled = [s.image for s in samples if s.mask is None]
    if unlabelled:
        raise DatasetError(f"{unlabelled[0]}: no mask to evaluate against")
    return list(samples)


def _image_row(
    sample: Sample,
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    ignore_index: int,
    *,
    tol: float = DEFAULT_TOL,
    em: bool = False,
) -> dict[str, Any]:
    """One row of per_image.parquet."""
    scores = per_image_metrics(pred, target, num_classes=num_classes, ignore_index=ignore_index)
    kw = {"num_classes": num_classes, "ignore_index": ignore_index}
    scores.update(surface_metrics(pred, target, tol=tol, **kw))
    if em:
        scores.update(em_metrics(pred, target, ignore_index=ignore_index))
    scores["boundary_penalised"] = one_sided(pred, target, **kw)
    valid = target != ignore_index
    n_valid = int(valid.sum())
    fraction_true = float(np.count_nonzero(target[valid])) / n_valid if n_valid else math.nan
    fraction_pred = float(np.count_nonzero(pred[valid])) / n_valid if n_valid else math.nan
    return {
        "key": sample.key,
        "image": sample.image,
        "width": int(target.shape[1]),
        "height": int(target.shape[0]),
        **scores,
        "foreground_fraction_true": fraction_true,
        "foreground_fraction_pred": fraction_pred,
    }


def _structure_means(rows: list[dict[str, Any]], tol: float) -> dict[str, Any]:
    """Means over images of the `segray.structure` columns, NaN images left out (all NaN:
    NaN); how many images were scored with the worst case (foreground in only one of target
    and prediction, counted in the means) and how many were left out (foreground in neither)."""
    keys = [k for k in ("hd95", "msd", "boundary_f1", "v_rand", "v_info") if k in rows[0]]
    out: dict[str, Any] = {}
    for key in keys:
        values = np.array([r[key] for r in rows], dtype=float)
        defined = values[~np.isnan(values)]
        out[key] = float(defined.mean()) if defined.size else math.nan
    out["num_images_boundary_penalised"] = sum(bool(r["boundary_penalised"]) for r in rows)
    out["num_images_boundary_empty"] = sum(math.isnan(r["hd95"]) for r in rows)
    out["boundary_tol"] = tol
    return out


def _nan_to_none(values: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON: NaN floats become null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


# --------------------------------------------------------------------------- plots
def _plot_curves(metrics: SegMetrics, result: dict[str, Any], path: Path) -> None:
    """ROC (left) and PR (right) curves of every foreground class, AUCs in the legends."""
    fig = Figure(figsize=(11, 4.8))
    roc_ax, pr_ax = fig.subplots(1, 2)
    foreground = [1] if metrics.binary else range(1, metrics.num_classes)
    for c in foreground:
        name = metrics.class_names[c]
        curve = metrics.curves(c)
        roc_auc, pr_auc = result[f"roc_auc_{name}"], result[f"pr_auc_{name}"]
        roc_ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {roc_auc:.3f})")
        pr_ax.plot(curve["recall"], curve["precision"], label=f"{name} (AUC {pr_auc:.3f})")
    roc_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    for ax, title, xlabel, ylabel in (
        (roc_ax, "ROC", "false positive rate", "true positive rate"),
        (pr_ax, "Precision-recall", "recall", "precision"),
    ):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc_ax else "lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _colorize(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """(H, W) class map -> (H, W, 4) RGBA overlay: class c > 0 in palette colour c, background
    transparent, ignored pixels grey."""
    palette = colormaps["tab10"].colors if num_classes <= 11 else colormaps["tab20"].colors
    rgba = np.zeros((*mask.shape, 4))
    for c in range(1, num_classes):
        rgba[mask == c] = (*palette[(c - 1) % len(palette)][:3], _OVERLAY_ALPHA)
    rgba[mask == ignore_index] = _IGNORE_RGBA
    return rgba


def _plot_overlay(
    image: np.ndarray,
    target: np.ndarray,
    pred: np.ndarray,
    title: str,
    num_classes: int,
    ignore_index: int,
    path: Path,
) -> None:
    """image | ground truth | prediction | errors, masks overlaid in colour on the image; the
    errors panel shows false positives and false negatives in two distinct colours (legend)."""
    height, width = target.shape
    fig = Figure(figsize=(16, 3.6 * height / width + 0.9), layout="constrained")
    gray = image.shape[2] == 1
    shown = image[..., 0] if gray else image
    panels = (
        ("image", None),
        ("ground truth", _colorize(target, num_classes, ignore_index)),
        ("prediction", _colorize(pred, num_classes, ignore_index)),
        ("errors", error_rgba(pred, target, ignore_index)),
    )
    for ax, (label, rgba) in zip(fig.subplots(1, 4), panels, strict=True):
        ax.imshow(shown, cmap="gray" if gray else None, vmin=0, vmax=255)
        if rgba is not None:
            ax.imshow(rgba, interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    kinds = ERROR_LEGEND if num_classes > 2 else ERROR_LEGEND[:3]
    handles = [Patch(color=np.array(rgb) / 255, label=name) for name, rgb in kinds]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
