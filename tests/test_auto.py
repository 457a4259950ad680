"""`segray auto`: the config derived from fingerprints of generated datasets, the plan, the
plateau stop, and (integration) a short budgeted run on a real local Ray."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segray.auto import AutoOptions, Resources, derive_config, make_plan, parse_duration
from segray.auto.derive import DILATION_CHOICES, find_layout
from segray.auto.plan import Probe, probe_step
from segray.auto.run import _base_config, derive_for
from segray.config import Config, DataConfig
from segray.data import DatasetError
from segray.data.inspect import fingerprint
from segray.search.searcher import BestPlateauStopper

LAPTOP = Resources(cpus=2)


def make_set(root, *, n=24, size=(48, 48), mode="RGB", values=(0, 255), seed=0, images="images"):
    """``n`` pairs: images of ``mode`` and ``size`` (w, h); masks whose pixels take ``values``."""
    rng = np.random.default_rng(seed)
    (root / images).mkdir(parents=True)
    (root / "masks").mkdir()
    w, h = size
    for i in range(n):
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
            root / images / f"{i:03d}.png"
        )
        mask = np.full((h, w), values[0], np.uint8)
        for k, v in enumerate(values[1:], 1):  # a band of each class
            mask[:, (k - 1) * w // len(values) : k * w // len(values)] = v
        Image.fromarray(mask, "L").save(root / "masks" / f"{i:03d}.png")
    return root


def derived_for(root, resources=LAPTOP, options=None):
    return derive_for(str(root), resources, options or AutoOptions())[0]


# --------------------------------------------------------------------------- derivation
def test_grayscale_01_masks_small_set(tmp_path):
    d = derived_for(make_set(tmp_path, n=12, size=(40, 40), mode="L", values=(0, 1)))
    c = d.config
    assert c.model.in_channels == 1 and len(c.data.mean) == 1 and len(c.data.std) == 1
    assert c.data.mask_mode == "index" and c.data.classes == ["background", "foreground"]
    assert c.data.image_size == 32  # the largest multiple of 32 within 40 px
    assert c.data.rotate90 == 0.5 and c.data.vflip == 0.5  # microscopy-like: no orientation
    assert c.data.split == [0.6, 0.2, 0.2]  # 12 pairs: larger val and test
    assert DILATION_CHOICES[3] not in c.tune.space["model.dilation_rates"]["choice"]
    assert all(max(r) <= 16 for r in c.tune.space["model.dilation_rates"]["choice"])
    assert "grayscale" in d.reasons["model.in_channels"] and "data.split" in d.reasons


def test_rgb_photos_0_255_masks(tmp_path):
    d = derived_for(make_set(tmp_path, n=30, size=(300, 200)))
    c = d.config
    assert c.model.in_channels == 3 and len(c.data.mean) == 3
    assert c.data.mask_mode == "threshold" and c.data.mask_threshold == 127
    assert c.data.image_size == 192  # min(median w, median h) = 200 -> 192
    assert (c.data.hflip, c.data.vflip, c.data.rotate90) == (0.5, 0.0, 0.0)  # up stays up
    assert c.data.split == [0.7, 0.15, 0.15]
    # Means are the data's own (uniform noise: ~0.5), not ImageNet's.
    assert all(abs(m - 0.5) < 0.05 for m in c.data.mean)
    assert c.model.encoder == "resnet18" and not c.train.use_gpu
    assert c.train.num_workers == 2 and c.train.cpus_per_worker == 1
    assert len(c.tune.space["model.dilation_rates"]["choice"]) == 4  # all fit a 192 px patch


def test_restrictions_win(tmp_path):
    root = make_set(tmp_path, n=24)
    no_flip = derived_for(root, options=AutoOptions(flip=False)).config.data
    assert (no_flip.hflip, no_flip.vflip, no_flip.rotate90) == (0.0, 0.0, 0.0)
    rotate = derived_for(root, options=AutoOptions(rotate=True)).config.data
    assert (rotate.hflip, rotate.vflip, rotate.rotate90) == (0.5, 0.5, 0.5)


def test_dataset_yaml_hints_decide_orientation_and_class_names(tmp_path):
    photos = make_set(tmp_path / "photos", n=24)  # colour: up stays up, unless the data says
    (photos / "dataset.yaml").write_text("orientation: free\nclass_names: [background, cell]\n")
    d, fpd = derive_for(str(photos), LAPTOP, AutoOptions())
    assert (d.config.data.vflip, d.config.data.rotate90) == (0.5, 0.5)
    assert "dataset.yaml" in d.reasons["data.rotate90"]
    assert d.config.data.classes == ["background", "cell"]
    assert "dataset.yaml" in d.reasons["data.classes"]
    assert fpd["hints"]["orientation"] == "free"  # recorded with the fingerprint
    assert derived_for(photos, options=AutoOptions(rotate=False)).config.data.rotate90 == 0.0
    gray = make_set(tmp_path / "gray", n=12, mode="L", values=(0, 1))  # rotations, unless ...
    (gray / "dataset.yaml").write_text("orientation: fixed\n")
    assert derived_for(gray).config.data.rotate90 == 0.0
    index = make_set(tmp_path / "index", n=24, values=(0, 1, 2, 3))  # 4 classes, 2 names
    (index / "dataset.yaml").write_text("class_names: [background, cell]\n")
    with pytest.raises(DatasetError, match="dataset.yaml: class_names"):
        derived_for(index)


def test_multi_class_index_masks_get_k_classes(tmp_path):
    d = derived_for(make_set(tmp_path, n=24, values=(0, 1, 2, 3)))
    c = d.config
    assert c.data.classes == ["background", "class_1", "class_2", "class_3"]
    assert c.data.mask_mode == "index" and c.num_classes == 4
    named = derived_for(tmp_path, options=AutoOptions(classes=["bg", "a", "b", "c"]))
    assert named.config.data.classes == ["bg", "a", "b", "c"]


def test_large_images_patch_and_batch_follow_the_devices(tmp_path):
    root = make_set(tmp_path, n=16, size=(1024, 768), mode="L")
    cpu = derived_for(root).config
    assert cpu.data.image_size == 256 and cpu.data.batch_size == 4
    assert cpu.data.samples_per_image >= 8  # 12 crops of 256 in a 1024x768 image, capped at 8
    gpu = derived_for(root, Resources(cpus=32, gpus=4)).config
    assert gpu.data.image_size == 512 and gpu.train.use_gpu and gpu.train.num_workers == 2
    assert gpu.model.encoder == "resnet34" and gpu.data.batch_size > cpu.data.batch_size // 4
    big_cpu = derived_for(root, Resources(cpus=64)).config
    assert big_cpu.train.cpus_per_worker == 4  # 8 trials of 2 workers x 4 CPUs


def test_small_images_are_padded_not_upscaled(tmp_path):
    d = derived_for(make_set(tmp_path, n=20, size=(24, 24)))
    assert d.config.data.image_size == 32 and "padded" in d.reasons["data.train_transform"]


def test_layout_is_found_by_folder_names(tmp_path):
    assert find_layout(["image", "label", "notes"]) == ("image", "label")
    assert find_layout(["Images", "Masks"]) == ("Images", "Masks")
    assert find_layout(["photos", "masks"]) is None
    c = _base_config(str(make_set(tmp_path, n=4, images="imgs")), [])
    assert (c.data.images_dir, c.data.masks_dir) == ("imgs", "masks")


def test_every_fingerprint_field_used_is_in_a_real_fingerprint(tmp_path):
    root = make_set(tmp_path, n=8)
    fp = fingerprint(DataConfig(source="folder", root=str(root))).to_dict()
    derived = derive_config(fp, LAPTOP, root=str(root))
    assert isinstance(derived.config, Config)
    with pytest.raises(ValueError, match="no readable image"):
        derive_config({**fp, "images": {"count": 0}}, LAPTOP, root=str(root))


# --------------------------------------------------------------------------- plan
def probe(step_s=0.1):
    return Probe(step_s=step_s, batch=8, patch=64, device="cpu", precision="bf16")


def plan_for(budget_s, *, folds=0, resources=LAPTOP, step_s=0.1, epochs=None):
    cfg = Config.from_dict(
        {"data": {"image_size": 64, "batch_size": 8, "samples_per_image": 2}, "train": {}}
    )
    return make_plan(
        cfg,
        resources,
        budget_s=budget_s,
        probe=probe(step_s),
        train_images=90,
        val_pixels=22 * 64 * 64,
        folds=folds,
        epochs=epochs,
    )


def test_plan_sizes_trials_to_the_budget():
    short, long = plan_for(240), plan_for(1800)
    assert short.concurrency == 1 and short.workers == 2
    assert long.epochs > short.epochs >= 4
    # A full trial is about half of the search's budget per slot.
    assert short.trial_s == pytest.approx(240 / 2, rel=0.15)
    assert plan_for(1800, resources=Resources(cpus=16)).concurrency == 8
    cfg = short.apply(Config())
    assert cfg.tune.time_budget_s == short.search_s and cfg.tune.plateau_trials == 3
    assert cfg.train.epochs == cfg.tune.max_epochs == short.epochs


def test_plan_keeps_cv_when_it_fits_and_says_why_when_not():
    roomy = plan_for(1800, folds=5)
    assert roomy.folds == 5 and roomy.search_s < 1800 and roomy.cv_s <= 1800 - roomy.search_s
    fewer = plan_for(3600, folds=5, step_s=0.5)  # 5 folds would see < 50 Mpx each
    assert 2 <= fewer.folds < 5 and any("folds instead of 5" in n for n in fewer.notes)
    none = plan_for(60, folds=5)
    assert none.folds == 0 and none.search_s == 60
    assert any("no cross-validation" in n for n in none.notes)
    assert "budget 1m00s" in none.text() and "no CV" in none.text()


def test_pinned_epochs_make_the_plan_independent_of_the_machine_speed():
    """Fixed work (the demo's accuracy test): epochs pinned by the config, not by the probe."""
    fast, slow = plan_for(100, folds=2, epochs=12), plan_for(100, folds=2, step_s=5.0, epochs=12)
    for plan in (fast, slow):
        assert plan.epochs == 12 and any("pinned" in n for n in plan.notes), plan.notes
        cfg = plan.apply(Config())
        assert (cfg.train.epochs, cfg.tune.max_epochs, cfg.tune.grace_period) == (12, 12, 2)
    # MIN_CV_PIXELS: 12 epochs of 180 crops of 64 px are 8.8 Mpx, too few for a fold either way.
    assert fast.folds == slow.folds == 0
    # Unpinned, the probe decides: a slow machine trains fewer epochs in the same budget.
    assert plan_for(100, step_s=0.05).epochs > plan_for(100, step_s=0.5).epochs


def test_fixed_work_overrides_pin_the_search(tmp_path, monkeypatch):
    """`segray auto` with ``train.epochs``, ``tune.num_samples`` and no time budget: the
    config has exactly that search, whatever the probe measured."""
    from segray.auto import run as auto_run
    from segray.data.synth import generate

    data = generate(tmp_path / "data", num=12, size=32, seed=0)
    fixed = ["tune.num_samples=3", "train.epochs=6", "tune.time_budget_s=null"]
    configs = []
    for step_s in (0.01, 3.0):  # a fast and a slow machine, as the probe would see them
        monkeypatch.setattr("segray.cluster.ensure_ray", lambda address: "no Ray")
        monkeypatch.setattr(auto_run, "cluster", lambda: LAPTOP)
        monkeypatch.setattr(auto_run, "probe_on_worker", lambda cfg, s=step_s: probe(s))
        prep = auto_run.prepare_auto(str(data), time_budget_s=100, folds=0, overrides=fixed)
        t = prep.config.tune
        assert (t.num_samples, t.max_epochs, t.time_budget_s, t.startup_trials) == (
            3,
            6,
            None,
            None,
        )
        assert prep.config.train.epochs == 6 and t.grace_period == 2
        assert "fixed work, no time budget" in prep.plan.text()
        configs.append(prep.config.to_yaml())
    assert configs[0] == configs[1]


def test_probe_times_a_real_step():
    cfg = Config.from_dict(
        {
            "data": {"image_size": 32, "batch_size": 2},
            "model": {"encoder": "resnet18", "decoder_channels": [16, 8, 8, 8]},
        }
    )
    p = probe_step(cfg, steps=1)
    assert 0 < p.step_s < 30 and (p.batch, p.patch, p.device) == (2, 32, "cpu")


def test_cv_folds_are_refit_from_the_measured_trial_cost():
    from segray.auto.plan import TRIAL_STARTUP_S
    from segray.auto.stages import _cv_s, _folds_that_fit, measured_cost

    plan = plan_for(1800, folds=5)
    assert plan.concurrency == 1
    trials = pd.DataFrame(
        {"epochs_run": [10, 2, 2, 0], "train_time_s": [100.0, 20.0, 22.0, math.nan]}
    )
    # epochs: 10 s each (the median per trial); start-up: all the search's wall clock that
    # was not an epoch (its 142 s of epochs in 222 s), shared by its 4 trials.
    assert measured_cost(trials, plan, 222.0) == pytest.approx((20.0, 10.0))
    assert measured_cost(trials.iloc[:0], plan, 222.0) == (TRIAL_STARTUP_S, plan.epoch_s)
    cost = (20.0, 10.0)
    fold = 20.0 + plan.epochs * 10.0 * 1.1
    assert _cv_s(5, cost, plan) == pytest.approx(5 * fold)  # one fold at a time
    wide = plan_for(1800, folds=5, resources=Resources(cpus=8))
    assert _cv_s(5, cost, wide) == pytest.approx(2 * fold)  # 4 folds at once, then 1
    # The folds that fit what is left, with no slack beyond it (the budget is a promise).
    cfg = Config.from_dict({"tune": {"time_budget_s": 1000}})
    assert _folds_that_fit(cfg, plan, cost, left=5 * fold) == 5
    assert _folds_that_fit(cfg, plan, cost, left=5 * fold - 1) == 4
    assert _folds_that_fit(cfg, plan, cost, left=2 * fold - 1) == 1


@pytest.mark.parametrize(
    "text, seconds", [("300", 300), ("90s", 90), ("15m", 900), ("1h30m", 5400), (45, 45)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10 minutes", "0", "-5m"])
def test_parse_duration_errors_name_the_value(text):
    with pytest.raises(ValueError, match="time-budget"):
        parse_duration(text)


# --------------------------------------------------------------------------- plateau stop
def test_plateau_stopper_counts_epochs_without_a_better_best():
    stop = BestPlateauStopper("val_dice", "max", patience=1, max_epochs=3)
    for v in (0.5, 0.6, 0.6):  # improves twice, then one flat epoch
        assert stop("t1", {"val_dice": v}) is False
    assert not stop.stop_all()
    stop("t2", {"val_dice": 0.59})
    assert not stop.stop_all()  # 2 epochs without a better best, budget 3
    stop("t2", {"val_dice": math.nan})
    assert stop.stop_all()
    stop("t3", {"val_dice": 0.7})  # a better best resets it
    assert not stop.stop_all()
    low = BestPlateauStopper("val_loss", "min", patience=1, max_epochs=1)
    low("t", {"val_loss": 0.5})
    low("t", {"val_loss": 0.4})
    assert not low.stop_all()
    low("t", {"val_loss": 0.45})
    assert low.stop_all()


# --------------------------------------------------------------------------- integration
@pytest.mark.integration
@pytest.mark.slow
def test_auto_on_tiny_data_within_its_budget(ray_local, tmp_path, capsys, monkeypatch):
    from segray.auto import run_auto
    from segray.cli import main
    from segray.data import list_samples
    from segray.data.split import data_splits
    from segray.data.synth import generate
    from segray.search.results import config_from_yaml

    data = generate(tmp_path / "data", num=40, size=32, seed=3)
    out = tmp_path / "auto"
    # 32 px crops never add up to the pixels a real fold needs: let these tiny folds run, so
    # that the CV and the ensemble as final model are exercised within two minutes.
    monkeypatch.setattr("segray.auto.plan.MIN_CV_PIXELS", 0)
    # --dry-run: the derived config and the plan, from a probe on a worker; nothing written.
    assert (
        main(
            ["auto", "--data", str(data), "--output", str(out), "--time-budget", "2m", "--dry-run"]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert "data.image_size" in shown and "full trial:" in shown and "probe:" in shown
    assert "# the derived config" in shown and "dilation_rates" in shown and not out.exists()
    result = run_auto(
        str(data),
        out,
        time_budget_s=110,
        unlabelled=[str(data / "images")],
        folds=2,
        overrides=["tune.plateau_trials=2"],
    )
    s = result.summary
    printed = capsys.readouterr().out
    for name in (
        "config.yaml",
        "fingerprint.json",
        "plan.json",
        "splits.json",
        "auto_summary.json",
        "report.html",
    ):
        assert (out / name).is_file(), name
    assert (out / "tune" / "trials.parquet").is_file() and (out / "eval" / "metrics.json").is_file()
    assert (out / "segment" / "summary.json").is_file()
    # What the budget promises, not what it happened to buy on this machine: the trainings
    # (configure, search, CV) end within it, with a slack of 25% + 30 s for stopping the last
    # trial and for the CV sized from the search's measured trials (it may run 15% + 30 s over
    # what is left). The scores depend on the machine's speed and are not asserted here
    # (tests/test_demo.py asserts learning on a fixed plan).
    t = s["wall_time_s"]
    trainings = t["configure"] + t["search"] + t.get("cv", 0.0)
    assert trainings <= 1.25 * 110 + 30, t
    assert t["total"] >= trainings and s["within_budget"] == (t["total"] <= 110)
    trials = pd.read_parquet(out / "tune" / "trials.parquet")
    assert s["search"]["trials"] == len(trials) >= 1
    assert 0.0 <= s["test"]["dice"] <= 1.0
    assert f"report -> {out / 'report.html'}" in printed and "segray auto summary" in printed
    plan = json.loads((out / "plan.json").read_text())
    assert plan["reasons"]["data.image_size"] and plan["plan"]["probe"]["step_s"] > 0
    # The test split is disjoint from everything the search and the CV saw.
    cfg = config_from_yaml((out / "config.yaml").read_text())
    assert cfg.tune.time_budget_s == plan["plan"]["search_s"]
    splits = data_splits(list_samples(cfg.data, check=False), cfg.data)
    seen = {x.key for x in [*splits["train"], *splits["val"]]}
    test = {x.key for x in splits["test"]}
    evaluated = set(pd.read_parquet(out / "eval" / "per_image.parquet")["key"])
    assert evaluated == test and not (test & seen) and len(test) >= 1
    # The folds the plan kept depend on the probe (this machine's speed); whatever it kept,
    # the CV ran them and the ensemble is the model, or the summary and the output say why not.
    if s["plan"]["folds"] < 2:
        assert "cv" not in s and any("cross-validation" in n for n in s["plan"]["notes"])
        assert s["model"]["kind"] == "best trial"
    elif "skipped" not in s["cv"]:
        oof = set(pd.read_parquet(out / "cv" / "oof.parquet")["key"])
        folds = s["cv"]["folds"]
        assert oof == seen and s["model"]["kind"] == f"{folds}-fold ensemble"
        assert (out / "cv" / "ensemble").is_dir()
    else:
        assert "cross-validation skipped" in printed and s["model"]["kind"] == "best trial"
    seg = s["segment"]
    assert (seg["ok"], seg["error"]) == (40, 0)
    # The same output again: one line naming it, nothing overwritten.
    assert main(["auto", "--data", str(data), "--output", str(out), "--time-budget", "2m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("segray: error: ") and "holds a finished segray auto run" in err


def test_small_splits_are_exact_and_warned_of(ray_local, tmp_path, capsys):
    """8 pairs at the small-set split 0.6 / 0.2 / 0.2: 5 / 2 / 1, never lopsided, and a
    warning that says how the images were split and which splits are small."""
    from segray.cli import main

    data = make_set(tmp_path / "data", n=8, size=(32, 32))
    args = ["auto", "--data", str(data), "--output", str(tmp_path / "out"), "--dry-run"]
    assert main([*args, "--time-budget", "2m"]) == 0
    shown = capsys.readouterr().out
    assert "warning: small splits: 8 pairs split train 5 / val 2 / test 1 (cut exactly" in shown
    assert "val 2 and test 1 (< 3 images each)" in shown
    assert "stable per stem: train 5, val 2, test 1" in shown


def test_bad_budget_and_missing_folder_are_one_line(tmp_path, capsys):
    from segray.cli import main

    assert main(["auto", "--data", str(tmp_path), "--time-budget", "soon"]) == 2
    assert "--time-budget 'soon'" in capsys.readouterr().err
    assert main(["auto", "--data", str(tmp_path / "missing"), "--dry-run"]) == 2
    assert "missing: not a folder" in capsys.readouterr().err


def test_a_bad_dataset_yaml_is_one_line_before_ray(tmp_path, capsys, monkeypatch):
    from segray.cli import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before dataset.yaml was checked")

    monkeypatch.setattr("segray.cluster.ensure_ray", no_ray)
    data = make_set(tmp_path / "data", n=24)
    (data / "dataset.yaml").write_text("orientation: free\nupright: no\n")
    assert main(["auto", "--data", str(data), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segray: error: ") and "\n" not in err
    assert f"{data / 'dataset.yaml'}: unknown key 'upright'" in err


@pytest.mark.parametrize("encoding", ["anti-aliased", "jpeg"])
def test_dry_run_reads_near_binary_masks_as_threshold(ray_local, tmp_path, capsys, encoding):
    """Masks resized with interpolation, or saved as JPEG: 0/255 but for a few edge values;
    `auto` reads them as binary at 127 and says so (as `segray inspect` does)."""
    from segray.cli import main
    from tests.data.test_inspect import anti_aliased, disc_mask

    data = make_set(tmp_path / "data", n=8, size=(192, 192))
    for i, path in enumerate(sorted((data / "masks").iterdir())):
        path.unlink()
        if encoding == "jpeg":
            Image.fromarray(disc_mask(192, i)).save(path.with_suffix(".jpg"), quality=75)
        else:
            Image.fromarray(anti_aliased(192, i)).save(path)
    args = ["auto", "--data", str(data), "--output", str(tmp_path / "out"), "--dry-run"]
    assert main([*args, "--time-budget", "2m"]) == 0
    shown = capsys.readouterr().out
    blur = "JPEG artefacts" if encoding == "jpeg" else "anti-aliased edges"
    assert "mask_mode threshold (auto;" in shown and "warning: masks are near-binary 0/255" in shown
    assert blur in shown
    assert re.search(r"data\.mask_mode\s+threshold\s+\(near-binary 0/255", shown)
    assert re.search(r"data\.mask_threshold\s+127", shown)
