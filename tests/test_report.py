"""`segray report`: kind detection, the sampled reads of a bulk-segmentation output, error
grouping, the overlays' error colours, and every kind of report opened in a real headless
Chromium (no console errors, every image decoded, the trials table sorts).

The run folders are tiny outputs in the exact formats segray writes (the columns of
`segray.search.run` / `segray.evaluate` / `OUTPUT_SCHEMA`), built here without Ray.
"""

from __future__ import annotations

import io
import json
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segray.config import load_config
from segray.data.io import encode_png
from segray.overlay import ERROR_COLOURS, error_rgba
from segray.report import ReportError, detect_kind, write_report
from segray.report.rundir import RunDir
from segray.report.segment import fetch_images, group_errors, pick_gallery, read_masks, read_stats
from segray.segment.schema import OUTPUT_SCHEMA, empty_row
from segray.storage import Location

SIZE = 32
PARAMS = ("model.dilation_rates", "loss.bce_weight", "optim.lr")


# --------------------------------------------------------------------------- run folders
def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)


def _disk(seed: int, shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = 6 + seed % 5
    return ((yy - 16) ** 2 + (xx - 16 - shift) ** 2 < r * r).astype(np.uint8)


def make_search(root: Path, *, plots: bool = True) -> Path:
    """A `segray tune` output: 4 trials, two stopped by ASHA, one errored."""
    root.mkdir(parents=True)
    trials = pd.DataFrame(
        {
            "trial_id": ["a1", "b2", "c3", "d4"],
            "param.model.dilation_rates": [
                "[1, 3, 6, 9]",
                "[1, 2, 4, 8]",
                "[1, 3, 6, 9]",
                "[1, 6, 12, 18]",
            ],
            "param.loss.bce_weight": [0.42, 0.79, 0.37, 0.84],
            "param.optim.lr": [0.0044, 0.0034, 0.0084, 0.0011],
            "status": ["TERMINATED", "TERMINATED", "TERMINATED", "ERROR"],
            "error": [None, None, None, "RuntimeError: boom"],
            "wall_time_s": [41.5, 30.0, 21.6, 3.0],
            "best_val_dice": [0.643, 0.488, 0.267, np.nan],
            "best_epoch": [4, 2, 1, 0],
            "best_checkpoint": ["x/a1", "x/b2", "x/c3", None],
            "last_val_dice": [0.643, 0.488, 0.267, np.nan],
            "last_val_loss": [0.51, 0.59, 0.62, np.nan],
            "epochs_run": [4, 2, 1, 0],
            "train_time_s": [21.0, 11.2, 5.7, 0.0],
            "stopped_early": [False, True, True, False],
        }
    )
    trials.to_parquet(root / "trials.parquet", index=False)
    rows = []
    for trial, epochs, top in (("a1", 4, 0.643), ("b2", 2, 0.488), ("c3", 1, 0.267)):
        for e in range(1, epochs + 1):
            dice = top * e / epochs
            rows.append(
                {"epoch": e, "train_loss": 1 - dice, "val_loss": 1.1 - dice, "val_dice": dice}
                | {"stopped_early": False, "epoch_time_s": 5.0, "trial_id": trial}
            )
    pd.DataFrame(rows).to_parquet(root / "history.parquet", index=False)
    summary = {
        "num_trials": 4,
        "completed": 3,
        "errored": 1,
        "stopped_early": 2,
        "metric": "val_dice",
        "mode": "max",
        "trial_epochs_total": 7,
        "wall_time_s": 96.1,
        "best": {
            "trial_id": "a1",
            "val_dice": 0.643,
            "epoch": 4,
            "params": {
                "model.dilation_rates": "[1, 3, 6, 9]",
                "loss.bce_weight": 0.42,
                "optim.lr": 0.0044,
            },
            "checkpoint": str(root / "best"),
        },
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    if plots:
        (root / "plots").mkdir()
        (root / "plots" / "optimization_history.png").write_bytes(_png(_image(1)))
        (root / "plots" / "param_importances.png").write_bytes(_png(_image(2)))
    return root


def make_train(root: Path) -> Path:
    """A `segray train` output: config.yaml, history.parquet, checkpoints/best/metrics.json."""
    (root / "checkpoints" / "best").mkdir(parents=True)
    (root / "config.yaml").write_text(load_config(None, []).to_yaml())
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "lr": [1e-3, 5e-4, 1e-6],
            "train_loss": [0.7, 0.5, 0.4],
            "val_loss": [0.65, 0.55, 0.5],
            "val_dice": [0.4, 0.55, 0.6],
            "val_iou": [0.25, 0.38, 0.43],
            "epoch_time_s": [3.0, 2.9, 3.1],
        }
    )
    history.to_parquet(root / "history.parquet", index=False)
    best = {
        "epoch": 3,
        "val_dice": 0.6,
        "val_iou": 0.43,
        "val_loss": 0.5,
        "val_dice_foreground": 0.6,
    }
    (root / "checkpoints" / "best" / "metrics.json").write_text(json.dumps(best))
    return root


def make_evaluation(root: Path) -> Path:
    """A `segray evaluate` output, overlays drawn by `segray.evaluate` itself."""
    from segray.evaluate import _plot_overlay

    (root / "overlays").mkdir(parents=True)
    metrics = {"dice": 0.66, "iou": 0.5, "accuracy": 0.76, "precision": 0.54, "recall": 0.85}
    metrics |= {"roc_auc": 0.88, "pr_auc": 0.73, "dice_background": 0.82, "dice_foreground": 0.66}
    metrics |= {"num_images": 2, "split": "test", "data": "d", "checkpoint": "c", "model_id": "m"}
    (root / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame(
        {
            "key": ["0001", "0002"],
            "image": ["d/images/0001.png", "d/images/0002.png"],
            "width": [SIZE, SIZE],
            "height": [SIZE, SIZE],
            "dice": [0.5, np.nan],
            "iou": [0.33, np.nan],
        }
    ).to_parquet(root / "per_image.parquet", index=False)
    (root / "roc_pr.png").write_bytes(_png(_image(3)))
    _plot_overlay(
        _image(4),
        _disk(1),
        _disk(1, 4),
        "0001 - Dice 0.5",
        2,
        255,
        root / "overlays" / "00_0001.png",
    )
    return root


def make_segment(root: Path, *, ok: int = 36, row_group: int = 4, base: str | None = None) -> dict:
    """A `segray segment` output over a tar shard and an image folder, with ground truth and
    3 error rows (2 sharing a reason). Returns what the checks need. ``base``: the URI that
    the output's rows name ``root`` by (the tree is uploaded there afterwards)."""

    def uri(path: Path) -> str:
        return str(path) if base is None else f"{base}/{path.relative_to(root).as_posix()}"

    inputs = root / "inputs"
    (inputs / "photos").mkdir(parents=True)
    (inputs / "masks").mkdir()
    images = {}
    tar_path = inputs / "shard-00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(ok):
            name = f"{i:04d}.png"
            data = _png(_image(100 + i))
            (inputs / "masks" / name).write_bytes(encode_png(_disk(i) * 255))
            if i % 2:
                (inputs / "photos" / name).write_bytes(data)
                images[f"photos/{name}"] = (data, uri(inputs / "photos" / name))
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                images[f"shard-00000.tar/{name}"] = (data, uri(tar_path))
    out = root / "out"
    (out / "parquet").mkdir(parents=True)
    (out / "_segray").mkdir()
    rows = []
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i, (image_id, (_, source)) in enumerate(sorted(images.items())):
        row = empty_row() | {"image_id": image_id, "source": source, "status": "ok"}
        row |= {"width": SIZE, "height": SIZE, "mask_png": encode_png(_disk(i, 3))}
        row |= {"foreground_fraction": 0.1 + i / 100, "class_fraction": [0.9, 0.1]}
        row |= {"mean_confidence": 0.9 - i / 200, "uncertain_fraction": (i * 7 % 36) / 36}
        row |= {"num_components": 1, "gt_mask": uri(inputs / "masks" / image_id.split("/")[-1])}
        row |= {"gt_foreground_fraction": 0.1, "dice": 1 - (i * 5 % 36) / 40}
        rows.append(row)
    for name, reason in (
        ("empty.png", "empty file (0 bytes)"),
        ("cut.png", "cannot decode image (truncated file)"),
        ("zero.png", "empty file (0 bytes)"),
    ):
        image_id = f"shard-00000.tar/{name}"
        rows.append(
            empty_row()
            | {
                "image_id": image_id,
                "source": uri(tar_path),
                "status": "error",
                "error": f"{image_id}: {reason}",
            }
        )
    for row in rows:
        row |= {"model_id": "m", "segray_version": "0", "run_id": "r", "segmented_at": now}
    half = len(rows) // 2
    for part, chunk in (("part-a.parquet", rows[:half]), ("part-b.parquet", rows[half:])):
        table = pa.Table.from_pylist(chunk, schema=OUTPUT_SCHEMA)
        pq.write_table(table, out / "parquet" / part, row_group_size=row_group)
    cfg = load_config(None, ["data.mask_mode=threshold"])
    (out / "config.yaml").write_text(cfg.to_yaml())
    settings = {"image_column": "image", "id_column": None, "masks": uri(inputs / "masks")}
    (out / "_segray" / "run.json").write_text(json.dumps({"settings": settings, "runs": []}))
    summary = {"rows": len(rows), "ok": ok, "error": 3, "images_per_s": 10.0, "complete": True}
    summary |= {"inputs": [uri(tar_path), uri(inputs / "photos")], "metrics": {"dice": 0.7}}
    (out / "summary.json").write_text(json.dumps(summary))
    return {"out": out, "images": images, "rows": len(rows)}


def make_demo(root: Path) -> Path:
    make_search(root / "tune")
    make_evaluation(root / "eval")
    make_segment(root / "seg")
    (root / "seg" / "out").rename(root / "segment")
    (root / "demo_summary.json").write_text(
        json.dumps({"trials": 4, "best_params": {"optim.lr": 0.004}})
    )
    return root


# --------------------------------------------------------------------------- unit tests
@pytest.mark.parametrize(
    "files, kind",
    [
        ({"summary.json", "trials.parquet", "history.parquet", "config.yaml"}, "search"),
        ({"summary.json", "_segray/run.json", "config.yaml"}, "segment"),
        ({"metrics.json", "per_image.parquet", "roc_pr.png"}, "evaluation"),
        ({"config.yaml", "history.parquet", "fingerprint.json"}, "train"),
        ({"demo_summary.json"}, "demo"),
        ({"auto_summary.json", "config.yaml", "plan.json"}, "auto"),
        ({"summary.json"}, None),
        ({"notes.txt", "config.yaml"}, None),
    ],
)
def test_detect_kind(files, kind):
    assert detect_kind(files) == kind


def test_detect_kind_of_folders(tmp_path):
    assert RunDir.open(str(make_search(tmp_path / "s"))).kind == "search"
    assert RunDir.open(str(make_train(tmp_path / "t"))).kind == "train"
    assert RunDir.open(str(make_evaluation(tmp_path / "e"))).kind == "evaluation"
    assert RunDir.open(str(make_segment(tmp_path / "g")["out"])).kind == "segment"
    demo = make_demo(tmp_path / "d")
    assert RunDir.open(str(demo)).kind == "demo"
    (demo / "demo_summary.json").unlink()  # an interrupted run: still its parts
    assert RunDir.open(str(demo)).kind == "auto"
    (demo / "auto_summary.json").write_text("{}")
    assert RunDir.open(str(demo)).kind == "auto"


def test_not_a_segray_folder_is_one_clear_line(tmp_path, capsys):
    from segray.cli import main

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ReportError, match="not a segray output folder") as e:
        write_report(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("segray: error: ") and "not a segray output folder" in err[-1]
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_error_reasons_are_grouped():
    stats = pd.DataFrame(
        {
            "image_id": ["a.png", "b.png", "c.png", "d.png"],
            "status": ["error", "error", "error", "ok"],
            "error": [
                "a.png: empty file (0 bytes)",
                "b.png: empty file (0 bytes)",
                "c.png: not an image",
                None,
            ],
        }
    )
    assert group_errors(stats) == [
        {"reason": "empty file (0 bytes)", "images": 2, "examples": "a.png, b.png"},
        {"reason": "not an image", "images": 1, "examples": "c.png"},
    ]


def test_gallery_picks_and_masks_read_only_for_picked_rows(tmp_path):
    built = make_segment(tmp_path, ok=36, row_group=4)
    parquet = Location.parse(str(built["out"] / "parquet"))
    stats = read_stats(parquet)
    assert len(stats) == built["rows"]
    assert not {"mask_png", "source", "gt_mask"} & set(stats)  # statistics only
    picks = pick_gallery(stats, 2, seed=0)
    ok = stats[stats["status"] == "ok"]
    top = ok.sort_values("uncertain_fraction", ascending=False)["image_id"].head(2).tolist()
    assert [p.image_id for p in picks["most uncertain"]] == top
    worst = ok.sort_values("dice")["image_id"].head(2).tolist()
    assert [p.image_id for p in picks["worst Dice"]] == worst
    assert picks["random sample"] == pick_gallery(stats, 2, seed=0)["random sample"]  # seeded
    assert all(p.image_id in set(ok["image_id"]) for p in picks["random sample"])

    unique = {(p.file, p.row): p for group in picks.values() for p in group}
    read = read_masks(parquet, unique.values())
    assert set(read.masks) == set(unique) and all(read.masks.values())
    # Only the row groups (of 4 rows) holding a picked row were decoded: never the whole output.
    assert read.row_groups <= len(unique) and read.decoded <= 4 * read.row_groups
    assert read.decoded < built["rows"] / 2
    for (file, row), mask in read.masks.items():  # the right rows' masks
        whole = pq.read_table(parquet.join(file).path, columns=["mask_png"])
        assert mask == whole.column("mask_png")[row].as_py()
    for p in read.picks:  # and where their image and ground truth are
        assert p.source == built["images"][p.image_id][1]
        assert p.gt_mask.endswith("/masks/" + p.image_id.split("/")[-1])


def test_images_are_read_from_the_inputs(tmp_path):
    from segray.report.segment import Pick

    built = make_segment(tmp_path, ok=8)
    wanted = ["shard-00000.tar/0002.png", "photos/0003.png", "shard-00000.tar/0006.png"]
    picks = [Pick("f", 0, i, i, source=built["images"][i][1]) for i in wanted]
    got = fetch_images(picks)
    assert got == {i: built["images"][i][0] for i in wanted}
    # Parquet inputs: ids are row indices (or an id column); only the picked rows come back.
    table = pa.table({"image": [built["images"][i][0] for i in wanted], "name": ["x", "y", "z"]})
    pq.write_table(table, tmp_path / "imgs.parquet", row_group_size=1)
    src = str(tmp_path / "imgs.parquet")
    by_row = fetch_images([Pick("f", 0, "imgs.parquet/2", "", source=src)])
    assert by_row == {"imgs.parquet/2": built["images"][wanted[2]][0]}
    by_id = fetch_images([Pick("f", 0, "imgs.parquet/y", "", source=src)], id_column="name")
    assert by_id == {"imgs.parquet/y": built["images"][wanted[1]][0]}


def test_error_colours_tell_false_positives_from_false_negatives():
    target = np.array([[1, 1, 0, 0, 255]])
    pred = np.array([[1, 0, 1, 0, 1]])
    rgba = error_rgba(pred, target)
    colour = {k: np.array(v) / 255 for k, v in ERROR_COLOURS.items()}
    assert np.allclose(rgba[0, 0, :3], colour["true positive"])
    assert np.allclose(rgba[0, 1, :3], colour["false negative"])
    assert np.allclose(rgba[0, 2, :3], colour["false positive"])
    assert rgba[0, 3, 3] == 0  # true background: transparent
    assert not np.allclose(colour["false positive"], colour["false negative"])


def test_evaluate_overlays_show_false_positives_and_negatives(tmp_path):
    from segray.evaluate import _plot_overlay

    black = np.zeros((SIZE, SIZE, 3), np.uint8)
    target, pred = np.zeros((SIZE, SIZE), int), np.zeros((SIZE, SIZE), int)
    target[:, :16], pred[:16, :] = 1, 1  # FP top right, FN bottom left
    _plot_overlay(black, target, pred, "t", 2, 255, tmp_path / "o.png")
    pixels = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).reshape(-1, 3).astype(int)
    for kind in ("false positive", "false negative"):
        expected = np.array(ERROR_COLOURS[kind]) * 0.7  # blended over black at alpha 0.7
        assert (np.abs(pixels - expected).max(axis=1) <= 12).sum() > 100, kind


def test_report_goes_to_run_dir_by_default(tmp_path):
    run = make_train(tmp_path / "t")
    path = write_report(run)
    assert Path(path) == run / "report.html"
    text = (run / "report.html").read_text()
    assert "Training run" in text and "val_dice" in text and "<img" in text


# --------------------------------------------------------------------------- in Chromium
@pytest.fixture(scope="module")
def browser():
    from tests.browser import Browser

    with Browser() as b:
        yield b


def _check_page(browser, html: Path, shots: Path, *, min_images: int):
    opened = browser.open(html)
    assert opened.errors == []
    assert opened.image_count() >= min_images
    assert opened.broken_images() == []
    external = [u for u in opened.requests if not u.startswith(("file:", "data:"))]
    assert external == []  # self-contained: nothing from the network
    opened.screenshot(shots / f"{html.stem}.png")
    return opened


def test_search_report_in_chromium(tmp_path, browser):
    run = make_search(tmp_path / "tune")
    html = Path(write_report(run, tmp_path / "search.html"))
    page = _check_page(browser, html, tmp_path, min_images=3)
    assert page.page.locator("#trials tbody tr").count() == 4
    text = page.page.inner_text("#search")
    assert (
        "Stopped early by ASHA" in text
        and "2 of 4 trials: b2 after 2 epochs, c3 after 1 epoch" in text
    )

    def scores() -> list[float]:
        return [float(v) if v != "–" else None for v in page.column("#trials", "best_val_dice")]

    assert scores() == [0.643, 0.488, 0.267, None]
    page.click_header("#trials", "best_val_dice")
    assert scores() == [0.267, 0.488, 0.643, None]  # ascending, missing last
    page.click_header("#trials", "best_val_dice")
    assert scores() == [0.643, 0.488, 0.267, None]  # descending
    page.click_header("#trials", "optim.lr")
    lrs = [float(v) for v in page.column("#trials", "optim.lr")]
    assert lrs == sorted(lrs)
    page.click_header("#trials", "status")
    assert page.column("#trials", "status") == ["ERROR", "TERMINATED", "TERMINATED", "TERMINATED"]


def test_search_without_plots_redraws_the_history(tmp_path, browser):
    run = make_search(tmp_path / "tune", plots=False)
    html = Path(write_report(run, tmp_path / "search.html"))
    page = _check_page(browser, html, tmp_path, min_images=2)
    assert page.page.locator("img[alt='optimisation history']").count() == 1


def test_train_and_evaluation_reports_in_chromium(tmp_path, browser):
    train = Path(write_report(make_train(tmp_path / "train"), tmp_path / "train.html"))
    page = _check_page(browser, train, tmp_path, min_images=1)
    page.click_header("#epochs", "val_loss")
    losses = [float(v) for v in page.column("#epochs", "val_loss")]
    assert losses == sorted(losses)
    evaluation = Path(write_report(make_evaluation(tmp_path / "eval"), tmp_path / "eval.html"))
    page = _check_page(browser, evaluation, tmp_path, min_images=2)
    legend = page.page.inner_text("#evaluation .legend")
    assert "false positive" in legend and "false negative" in legend


def test_segment_report_in_chromium(tmp_path, browser, capsys):
    built = make_segment(tmp_path, ok=20)
    html = Path(write_report(built["out"], tmp_path / "segment.html", gallery=3, seed=1))
    assert "segray report: segment" in capsys.readouterr().err  # progress on stderr
    page = _check_page(browser, html, tmp_path, min_images=10)
    assert page.page.locator(".gallery img.tile").count() == 9  # 3 galleries of 3
    reasons = page.column("#errors", "reason")
    assert reasons == ["empty file (0 bytes)", "cannot decode image (truncated file)"]


def test_demo_report_in_chromium(tmp_path, browser):
    demo = make_demo(tmp_path / "demo")
    html = Path(write_report(demo))
    assert html == demo / "report.html"
    page = _check_page(browser, html, tmp_path, min_images=15)
    sections = page.page.evaluate(
        "() => Array.from(document.querySelectorAll('section')).map(s => s.id)"
    )
    assert sections == ["overview", "search", "evaluation", "segment"]
    for section in sections:
        page.screenshot(tmp_path / f"demo-{section}.png", selector=f"section#{section}")


def test_auto_report_shows_the_overview_and_why_each_setting(tmp_path):
    root = make_demo(tmp_path / "auto")
    (root / "demo_summary.json").unlink()
    (root / "auto_summary.json").write_text(
        json.dumps(
            {
                "search": {
                    "trials": 7,
                    "stopped_early": 5,
                    "metric": "val_dice",
                    "best_val": 0.9,
                    "best_params": {"optim.lr": 0.002},
                },
                "test": {"num_images": 27, "dice": 0.8765},
                "model": {"kind": "best trial"},
                "wall_time_s": {"search": 240.0, "total": 262.0},
            }
        )
    )
    (root / "plan.json").write_text(
        json.dumps(
            {
                "time_budget_s": 240,
                "reasons": {"data.image_size": "median image 64x64: the largest multiple of 32"},
                "values": {"data.image_size": 4242},
                "plan": {"epochs": 44, "folds": 0, "probe": {"step_s": 0.112}, "notes": ["a note"]},
            }
        )
    )
    html = Path(write_report(root)).read_text()
    assert html.index('id="overview"') < html.index('id="plan"') < html.index('id="search"')
    assert "0.8765" in html and "median image 64x64: the largest multiple of 32" in html
    assert "test Dice (27 images)" in html and "a note" in html and ">112<" in html
    assert ">4242<" in html  # the derived value beside its reason


def test_segment_report_on_object_storage(tmp_path, s3_bucket, capsys):
    """Output, inputs and ground truth in a bucket: the galleries still show every image and
    the report is written beside the output, through `segray.storage`."""
    built = make_segment(tmp_path / "run", ok=12, base=f"{s3_bucket}/run")
    root = Location.parse(f"{s3_bucket}/run")
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            root.join(path.relative_to(tmp_path / "run").as_posix()).write(path.read_bytes())
    where = write_report(f"{s3_bucket}/run/out", gallery=2)
    assert where == f"{s3_bucket}/run/out/report.html"
    text = Location.parse(where).read_bytes().decode()
    assert text.count('class="tile"') == 6  # 3 galleries of 2, none left out
    assert "cannot read" not in capsys.readouterr().err
    assert built["rows"] == 15


def test_gallery_tiles_colour_errors_against_the_ground_truth():
    from segray.report.segment import _tile

    black = _png(np.zeros((SIZE, SIZE, 3), np.uint8))
    target, pred = np.zeros((SIZE, SIZE), int), np.zeros((SIZE, SIZE), np.uint8)
    target[:, :16], pred[:16, :] = 1, 1
    tile = np.asarray(Image.open(io.BytesIO(_tile(black, encode_png(pred), target, 255))))
    overlay = tile[:, SIZE + 2 :].reshape(-1, 3).astype(int)  # image | overlay
    for kind in ("false positive", "false negative"):
        expected = np.array(ERROR_COLOURS[kind]) * 0.7
        assert (np.abs(overlay - expected).max(axis=1) <= 2).sum() == SIZE * SIZE // 4, kind
    plain = np.asarray(Image.open(io.BytesIO(_tile(black, encode_png(pred), None, 255))))
    assert not (np.abs(plain[:, SIZE + 2 :].reshape(-1, 3) - expected).max(axis=1) <= 2).any()


def test_evaluation_report_says_how_many_images_the_boundary_means_penalised(tmp_path):
    root = make_evaluation(tmp_path / "eval")
    metrics = json.loads((root / "metrics.json").read_text())
    metrics |= {"hd95": 40.0, "num_images_boundary_penalised": 1, "num_images_boundary_empty": 1}
    (root / "metrics.json").write_text(json.dumps(metrics))
    text = Path(write_report(root, tmp_path / "eval.html")).read_text()
    assert "boundary metrics: 1 images with foreground in only one of target and" in text
    assert "1 with foreground in neither are undefined and left out" in text
