"""Tests of segray.evaluate on a tiny generated folder and tiny checkpoints (no Ray)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score

from segray.checkpoint import build_model, model_id, save_checkpoint
from segray.config import load_config
from segray.data import build_datasets, prepare_data, read_mask
from segray.evaluate import evaluate_checkpoint
from segray.inference.segmenter import load_segmenter
from segray.metrics import SegMetrics

TINY_UNET = ["model.name=unet", "model.base_width=8", "segment.tile_size=64"]
THREE_CLASSES = ["data.classes=[bg,a,b]", "data.mask_mode=index", "loss.name=ce"]
# (key, height, width): one image larger than the 64-pixel tile, so evaluation tiles it.
IMAGES = [
    ("a0", 48, 48),
    ("a1", 48, 48),
    ("a2", 40, 56),
    ("b0", 48, 48),
    ("b1", 72, 96),
    ("c0", 48, 48),
]
SPLIT_IDS = "data.split_ids={train: [a0, a1, a2], val: [b0, b1], test: [c0]}"
HEADLINE = ("accuracy", "dice", "iou", "precision", "recall", "f1", "specificity", "mse")
REPORT_KEYS = {
    *HEADLINE,
    *("roc_auc", "pr_auc", "num_images", "num_images_no_foreground"),
    *("split", "checkpoint", "model_id"),
}


def _write_folder(root: Path, num_classes: int) -> Path:
    """images/*.png (RGB) with bright discs and squares; masks/*.png 0/255 or class indices."""
    rng = np.random.default_rng(0)
    for name in ("images", "masks"):
        (root / name).mkdir(parents=True)
    for i, (key, h, w) in enumerate(IMAGES):
        yy, xx = np.mgrid[0:h, 0:w]
        classes = np.zeros((h, w), np.uint8)
        classes[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2] = 1
        classes[(abs(yy - h / 3) < 5) & (abs(xx - 3 * w / 4) < 5)] = num_classes - 1
        image = rng.integers(0, 60, (h, w, 3)) + 120 * (classes[..., None] > 0) + 10 * i
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"{key}.png")
        mask = classes * 255 if num_classes == 2 else classes
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{key}.png")
    return root


def _checkpoint(directory: Path, overrides: list[str], *, background_only: bool = False) -> Path:
    config = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(config)
    if background_only:  # a head that predicts background everywhere, whatever the image
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.fill_(-20.0)
    return save_checkpoint(directory, model=model, config=config, metrics={})


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("binary")
    return _checkpoint(root / "ckpt", TINY_UNET + [SPLIT_IDS]), _write_folder(root / "data", 2)


@pytest.fixture(scope="module")
def binary_report(binary: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    ckpt, data = binary
    out = tmp_path_factory.mktemp("report")
    metrics = evaluate_checkpoint(
        ckpt, data=data, split="all", output=out, worst_k=4, progress=False
    )
    return metrics, out


def test_report_files_and_keys(binary: tuple[Path, Path], binary_report) -> None:
    ckpt, _ = binary
    metrics, out = binary_report
    for name in ("metrics.json", "per_image.parquet", "roc_pr.png"):
        assert (out / name).is_file(), name
    written = json.loads((out / "metrics.json").read_text())
    assert REPORT_KEYS <= set(written)
    assert {
        f"{k}_{c}" for k in HEADLINE if k != "accuracy" for c in ("background", "foreground")
    } <= set(written)
    assert written["num_images"] == len(IMAGES) and written["split"] == "all"
    assert written["num_images_no_foreground"] == 0
    assert written["model_id"] == model_id(ckpt)
    assert written["checkpoint"] == str(ckpt.absolute())
    assert written["dice"] == pytest.approx(metrics["dice"], abs=0)
    assert Image.open(out / "roc_pr.png").size[0] > Image.open(out / "roc_pr.png").size[1]


def test_per_image_table(binary_report) -> None:
    _, out = binary_report
    table = pd.read_parquet(out / "per_image.parquet")
    assert list(table.columns) == [
        "key", "image", "width", "height", "dice", "iou", "precision", "recall", "accuracy",
        "hd95", "msd", "boundary_f1", "boundary_penalised", "foreground_fraction_true",
        "foreground_fraction_pred",
    ]  # fmt: skip
    assert sorted(table["key"]) == sorted(k for k, _, _ in IMAGES)
    sizes = {k: (w, h) for k, h, w in IMAGES}
    assert all(sizes[r.key] == (r.width, r.height) for r in table.itertuples())
    assert all(Path(p).is_file() for p in table["image"])
    for column in ("dice", "iou", "recall", "accuracy", "foreground_fraction_true"):
        assert table[column].between(0, 1).all(), column
    assert (table["foreground_fraction_true"] > 0).all()
    # precision is undefined (NaN) exactly where no foreground was predicted
    nothing_predicted = table["foreground_fraction_pred"] == 0
    assert table["precision"].isna().equals(nothing_predicted)
    assert table["precision"][~nothing_predicted].between(0, 1).all()


def test_metrics_equal_an_independent_computation(binary: tuple[Path, Path], binary_report) -> None:
    ckpt, data = binary
    metrics, _ = binary_report
    seg = load_segmenter(ckpt, device="cpu")
    assert seg.tile_size == 64  # b1 (72 x 96) is tiled
    targets, probas = [], []
    for key, _, _ in IMAGES:
        probas.append(seg.predict_proba(data / "images" / f"{key}.png").ravel())
        targets.append((read_mask(data / "masks" / f"{key}.png") > 127).ravel())
    target, proba = np.concatenate(targets), np.concatenate(probas)
    pred = proba >= seg.threshold
    assert metrics["dice"] == pytest.approx(f1_score(target, pred), abs=1e-6)
    assert metrics["accuracy"] == pytest.approx((target == pred).mean(), abs=1e-6)
    assert metrics["mse"] == pytest.approx(np.mean((proba - target) ** 2), abs=1e-6)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(target, proba), abs=2e-3)


def test_headline_scores_are_those_of_the_post_processed_masks(
    binary: tuple[Path, Path], tmp_path: Path
) -> None:
    """Thresholds and post-processing reach the headline scores, not only the per-image rows:
    the scores equal an independent computation on `predict`'s masks; the curves stay those of
    the probabilities."""
    _, data = binary
    # The untrained model's P(fg) is ~0.432 everywhere: at that threshold its masks are speckle,
    # which removing small components and filling holes changes.
    settings = ["segment.threshold=0.432", "segment.min_component_px=40", "segment.fill_holes=true"]
    ckpt = _checkpoint(tmp_path / "ckpt", TINY_UNET + [SPLIT_IDS, *settings])
    metrics = evaluate_checkpoint(
        ckpt, data=data, split="all", output=tmp_path / "r", progress=False
    )
    seg = load_segmenter(ckpt, device="cpu")
    assert seg.postprocess.steps
    preds, plain, targets, probas = [], [], [], []
    for key, _, _ in IMAGES:
        proba = seg.predict_proba(data / "images" / f"{key}.png")
        preds.append(seg.predict(data / "images" / f"{key}.png").ravel())
        plain.append((proba >= 0.432).ravel())
        probas.append(proba.ravel())
        targets.append((read_mask(data / "masks" / f"{key}.png") > 127).ravel())
    target, pred = np.concatenate(targets), np.concatenate(preds)
    assert not np.array_equal(pred, np.concatenate(plain))  # post-processing changed masks
    assert metrics["dice"] == pytest.approx(f1_score(target, pred), abs=1e-6)
    assert metrics["accuracy"] == pytest.approx((target == pred).mean(), abs=1e-6)
    assert metrics["roc_auc"] == pytest.approx(
        roc_auc_score(target, np.concatenate(probas)), abs=2e-3
    )


def test_overlays_are_the_worst_by_dice(
    binary_report, binary: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = binary_report
    overlays = sorted((out / "overlays").iterdir())
    table = pd.read_parquet(out / "per_image.parquet")
    worst = table.sort_values("dice", kind="stable")["key"].tolist()[:4]
    assert [p.name for p in overlays] == [f"{i:02d}_{k}.png" for i, k in enumerate(worst)]
    ckpt, data = binary
    evaluate_checkpoint(ckpt, data=data, split="all", output=tmp_path, worst_k=50, progress=False)
    assert len(list((tmp_path / "overlays").iterdir())) == len(IMAGES)


@pytest.mark.parametrize("split, keys", [("val", ["b0", "b1"]), ("test", ["c0"])])
def test_split_of_a_folder_follows_the_checkpoint_config(
    binary: tuple[Path, Path], tmp_path: Path, split: str, keys: list[str]
) -> None:
    ckpt, data = binary
    metrics = evaluate_checkpoint(
        ckpt, data=data, split=split, output=tmp_path, worst_k=0, progress=False
    )
    assert metrics["num_images"] == len(keys) and metrics["split"] == split
    assert sorted(pd.read_parquet(tmp_path / "per_image.parquet")["key"]) == keys
    assert not list((tmp_path / "overlays").iterdir())


def test_multiclass_report(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt", TINY_UNET + THREE_CLASSES)
    data = _write_folder(tmp_path / "data", 3)
    out = tmp_path / "report"
    metrics = evaluate_checkpoint(
        ckpt, data=data, split="all", output=out, worst_k=2, progress=False
    )
    for key in ("dice", "roc_auc", "pr_auc"):
        assert {f"{key}_bg", f"{key}_a", f"{key}_b"} <= set(metrics)
    seg = load_segmenter(ckpt, device="cpu")
    independent = SegMetrics(3, class_names=["bg", "a", "b"], ignore_index=255)
    for key, _, _ in IMAGES:
        proba = seg.predict_proba(data / "images" / f"{key}.png")
        target = read_mask(data / "masks" / f"{key}.png")
        independent.update(torch.from_numpy(proba)[None], torch.from_numpy(target)[None])
    expected = independent.compute()
    for key in ("dice", "iou", "accuracy", "dice_a", "dice_b", "mse"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert len(list((out / "overlays").iterdir())) == 2
    assert (out / "roc_pr.png").is_file()
    table = pd.read_parquet(out / "per_image.parquet")
    assert table["dice"].between(0, 1).all() and len(table) == len(IMAGES)


def test_background_only_model_scores_nan_without_foreground_and_0_with_it(
    binary: tuple[Path, Path], tmp_path: Path
) -> None:
    """Never a vacuous 1.0: an all-background model on all-background targets has no Dice."""
    _, data = binary
    # an explicit mask mode: `auto` cannot choose one from masks that are all background
    overrides = TINY_UNET + [SPLIT_IDS, "data.mask_mode=threshold"]
    ckpt = _checkpoint(tmp_path / "ckpt", overrides, background_only=True)
    empty = tmp_path / "empty"
    shutil.copytree(data, empty)
    for mask in (empty / "masks").iterdir():
        Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)
    out = tmp_path / "report_empty"
    metrics = evaluate_checkpoint(
        ckpt, data=empty, split="all", output=out, worst_k=2, progress=False
    )
    written = json.loads((out / "metrics.json").read_text())
    for key in ("dice", "iou", "f1", "precision", "recall", "dice_foreground"):
        assert written[key] is None and np.isnan(metrics[key]), key
    assert written["accuracy"] == 1.0
    assert written["num_images_no_foreground"] == written["num_images"] == len(IMAGES)
    table = pd.read_parquet(out / "per_image.parquet")
    assert table["dice"].isna().all() and table["recall"].isna().all()
    assert (table["foreground_fraction_true"] == 0).all() and (table["accuracy"] == 1).all()
    assert len(list((out / "overlays").iterdir())) == 2

    out = tmp_path / "report_missed"
    metrics = evaluate_checkpoint(ckpt, data=data, split="all", output=out, progress=False)
    assert (metrics["dice"], metrics["iou"], metrics["recall"]) == (0.0, 0.0, 0.0)
    assert np.isnan(metrics["precision"]) and metrics["num_images_no_foreground"] == 0
    table = pd.read_parquet(out / "per_image.parquet")
    assert (table["dice"] == 0).all() and table["precision"].isna().all()


def test_worst_overlays_rank_undefined_dice_last(binary: tuple[Path, Path], tmp_path: Path) -> None:
    """Images with nothing to find and nothing found are not among the worst."""
    _, data = binary
    ckpt = _checkpoint(tmp_path / "ckpt", TINY_UNET + [SPLIT_IDS], background_only=True)
    mixed = tmp_path / "mixed"
    shutil.copytree(data, mixed)
    empties = {"a0", "b1"}
    for key in empties:
        mask = mixed / "masks" / f"{key}.png"
        Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)
    out = tmp_path / "report"
    metrics = evaluate_checkpoint(
        ckpt, data=mixed, split="all", output=out, worst_k=len(IMAGES), progress=False
    )
    assert metrics["num_images_no_foreground"] == len(empties)
    names = [p.name for p in sorted((out / "overlays").iterdir())]
    assert {n.split("_", 1)[1].removesuffix(".png") for n in names[-2:]} == empties
    assert metrics["dice"] == 0.0  # the images with foreground: all missed
    # Boundary metrics: the 4 total misses score the worst case (the image diagonal, F1 0) and
    # count in the means; the 2 images with nothing to find and nothing found are left out.
    written = json.loads((out / "metrics.json").read_text())
    assert written["num_images_boundary_penalised"] == 4
    assert written["num_images_boundary_empty"] == 2
    diagonals = [math.hypot(h, w) for k, h, w in IMAGES if k not in empties]
    assert written["hd95"] == pytest.approx(np.mean(diagonals))
    assert written["msd"] == pytest.approx(np.mean(diagonals))
    assert written["boundary_f1"] == 0.0
    table = pd.read_parquet(out / "per_image.parquet").set_index("key")
    assert table["boundary_penalised"].to_dict() == {k: k not in empties for k, _, _ in IMAGES}
    assert table.loc[sorted(empties), ["hd95", "msd", "boundary_f1"]].isna().all().all()


def test_checkpoint_config_dataset_is_the_default(tmp_path: Path) -> None:
    synthetic = ["data.synthetic.num=6", "data.synthetic.size=48", "data.split=[0.5,0.5,0.0]"]
    ckpt = _checkpoint(tmp_path / "ckpt", TINY_UNET + synthetic)
    metrics = evaluate_checkpoint(ckpt, split="val", output=tmp_path / "report", progress=False)
    val = build_datasets(prepare_data(load_config(None, TINY_UNET + synthetic)))["val"].samples
    assert metrics["num_images"] == len(val) > 0
    keys = pd.read_parquet(tmp_path / "report" / "per_image.parquet")["key"]
    assert sorted(keys) == sorted(s.key for s in val)


def test_bad_split_and_empty_split(binary: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, data = binary
    with pytest.raises(ValueError, match="valid: val, test, all"):
        evaluate_checkpoint(ckpt, data=data, split="train", output=tmp_path)  # type: ignore[arg-type]
    empty = _checkpoint(tmp_path / "ckpt", TINY_UNET + ["data.split_ids={train: [a0], val: [b0]}"])
    with pytest.raises(ValueError, match="split 'test' has no images"):
        evaluate_checkpoint(empty, data=data, split="test", output=tmp_path, progress=False)


def test_checkpoint_and_report_on_object_storage(
    binary: tuple[Path, Path], binary_report, s3_bucket: str
) -> None:
    """`segray evaluate` with the checkpoint and the report folder on S3 (a real S3 API)."""
    from segray.storage import Location

    ckpt, data = binary
    remote = Location.parse(s3_bucket).join("ckpt")
    for path in ckpt.iterdir():
        remote.join(path.name).write(path.read_bytes())
    out = f"{s3_bucket}/report"
    metrics = evaluate_checkpoint(
        remote.uri, data=data, split="all", output=out, worst_k=2, progress=False
    )
    assert metrics["dice"] == pytest.approx(binary_report[0]["dice"], abs=1e-6)
    assert metrics["checkpoint"] == remote.uri  # the URI as given, not a local-looking path
    written = json.loads(Location.parse(out).join("metrics.json").read_bytes())
    assert written["checkpoint"] == remote.uri and written["model_id"] == model_id(ckpt)
    files = {rel for rel, _ in Location.parse(out).list_files()}
    assert {"metrics.json", "per_image.parquet", "roc_pr.png"} <= files
    assert sum(rel.startswith("overlays/") for rel in files) == 2
    assert not Path("s3:").exists()
