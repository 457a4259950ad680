"""K-fold cross-validation: fold assignment (unit) and `segray cv` on a real local Ray."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from segray.config import ConfigError, load_config
from segray.data.folder import DatasetError, Sample
from segray.data.split import assign_folds, data_splits, group_key, split_samples
from segray.search.cv import cv_config
from tests.conftest import TINY


def _samples(keys):
    return [Sample(key=k, image=f"/x/{k}.png", mask=f"/y/{k}.png") for k in keys]


def _data(**kw):
    base = dict(
        split=[0.6, 0.2, 0.2], split_seed=0, split_ids=None, folds=None, fold=None, group_by=None
    )
    return SimpleNamespace(**(base | kw))


# --------------------------------------------------------------------------- unit
def test_folds_are_balanced_and_keep_groups_whole():
    keys = [f"case{c:02d}_z{z}" for c in range(11) for z in range(3)]
    fold_of = assign_folds(keys, 5, seed=0, group_by=r"^(case\d+)_")
    for c in range(11):
        assert len({fold_of[f"case{c:02d}_z{z}"] for z in range(3)}) == 1
    sizes = np.bincount(list(fold_of.values()), minlength=5) // 3  # in groups
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 11


def test_folds_depend_on_the_keys_not_their_order():
    keys = [f"{i:04d}" for i in range(40)]
    a = assign_folds(keys, 4, seed=3)
    b = assign_folds(list(reversed(keys)), 4, seed=3)
    assert a == b
    assert assign_folds(keys, 4, seed=4) != a  # the seed reshuffles


def test_group_key_uses_the_first_group_or_the_match():
    assert group_key("case_7_slice3", r"^(case_\d+)") == "case_7"
    assert group_key("case_7_slice3", r"^case_\d+") == "case_7"
    assert group_key("other", r"^(case_\d+)") == "other"  # no match: its own group
    assert group_key("x", None) == "x"


def test_too_few_groups_for_the_folds_is_one_clear_error():
    with pytest.raises(DatasetError, match=r"5-fold .* at least 5 groups.*found 2"):
        assign_folds(["a_1", "a_2", "b_1"], 5, group_by=r"^(\w)_")


def test_a_fold_validates_on_its_own_members_and_keeps_test_held_out():
    samples = _samples([f"{i:04d}" for i in range(50)])
    base = split_samples(samples, [0.6, 0.2, 0.2], 0)
    pool = {s.key for s in base["train"] + base["val"]}
    seen_val: list[str] = []
    for fold in range(3):
        s = data_splits(samples, _data(folds=3, fold=fold))
        train, val = {x.key for x in s["train"]}, {x.key for x in s["val"]}
        assert train | val == pool and not train & val
        assert [x.key for x in s["test"]] == [x.key for x in base["test"]]
        seen_val += val
    assert sorted(seen_val) == sorted(pool)  # every pooled image validates exactly once


def test_fold_settings_are_validated():
    with pytest.raises(ConfigError, match="data.fold 2 needs data.folds > 2"):
        load_config(None, ["data.folds=2", "data.fold=2"])
    with pytest.raises(ConfigError, match="not a regex"):
        load_config(None, ["data.group_by=(unclosed"])


def test_cv_config_is_a_full_grid_over_folds():
    searched = ["tune.scheduler=asha", "data.fold=1", "data.folds=3"]
    # A search's budget and plateau stop (segray auto sets them) must not cut folds short.
    searched += ["tune.time_budget_s=60", "tune.plateau_trials=2"]
    cfg = cv_config(load_config(None, searched), 4)
    assert cfg.data.folds == 4 and cfg.data.fold is None
    assert cfg.tune.space == {"data.fold": {"grid": [0, 1, 2, 3]}}
    assert cfg.tune.scheduler == "none"
    assert cfg.tune.time_budget_s is None and cfg.tune.plateau_trials is None
    with pytest.raises(ValueError, match="folds must be >= 2"):
        cv_config(cfg, 1)


# --------------------------------------------------------------------------- on a real Ray
CV = [
    *(o for o in TINY if not o.startswith("data.split_ids")),
    "data.synthetic.num=24",
    "data.split=[0.75,0.0,0.25]",
    r"data.group_by=(\d)$",  # stems 0000-0023: 10 groups by the last digit, 2 or 3 images
    "train.epochs=2",
    "train.max_failures=0",
]


@pytest.fixture(scope="module")
def cv_run(ray_local, tmp_path_factory):
    from segray.search.cv import run_cv

    out = tmp_path_factory.mktemp("cv") / "cv"
    return run_cv(load_config(None, CV), out, folds=2)


@pytest.mark.integration
@pytest.mark.slow
def test_cv_trains_every_fold_and_predicts_every_pooled_image_once(cv_run):
    from segray.data import list_samples, prepare_data

    out = Path(cv_run.output)
    folds = pd.read_parquet(out / "cv.parquet")
    assert folds["fold"].tolist() == ["0", "1", "mean", "std"]
    per_fold = folds.iloc[:2]
    assert folds.loc[2, "val_dice"] == pytest.approx(per_fold["val_dice"].mean())
    assert folds.loc[3, "val_dice"] == pytest.approx(per_fold["val_dice"].std())

    oof = pd.read_parquet(out / "oof.parquet")
    cfg = prepare_data(load_config(None, CV)).data
    base = split_samples(
        list_samples(cfg, check=False), cfg.split, cfg.split_seed, None, cfg.group_by
    )
    pool = {s.key for s in base["train"] + base["val"]}
    assert base["test"] and sorted(oof["key"]) == sorted(pool)  # test never predicted
    # Folds follow group_by: every group's images were validated by one fold.
    group_folds = oof.groupby(oof["key"].map(lambda k: k[-1]))["fold"].nunique()
    assert (group_folds == 1).all()
    assert (per_fold["num_val_images"].to_numpy() == oof.groupby("fold").size().to_numpy()).all()
    # splits.json beside config.yaml: the pool, test and each fold's keys, as the folds ran
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"]) == sorted(pool)
    assert splits["test"] == [s.key for s in base["test"]]
    assert [sorted(f["val"]) for f in splits["folds"]] == [
        sorted(oof[oof["fold"] == f]["key"]) for f in (0, 1)
    ]

    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == 2 and summary["oof_dice_postprocessed"] >= summary["oof_dice"] - 1e-9


@pytest.mark.integration
@pytest.mark.slow
def test_the_cv_ensemble_loads_and_averages_its_fold_models(cv_run):
    from segray.inference.segmenter import load_segmenter

    ensemble = load_segmenter(cv_run.ensemble, device="cpu", precision="fp32")
    members = [
        load_segmenter(c, device="cpu", precision="fp32") for c in cv_run.folds["checkpoint"][:2]
    ]
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    expected = np.mean([m.predict_proba(image) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(image), expected, atol=1e-5)
    assert ensemble.predict(image).shape == (40, 56)
    # Trained on every fold, the ensemble validates on none; the test split stays its own.
    assert ensemble.config.data.fold is None and ensemble.config.data.folds == 2
    assert [m.config.data.fold for m in members] == [0, 1]


@pytest.mark.integration
@pytest.mark.slow
def test_the_report_of_a_cv_run_shows_its_folds(cv_run, tmp_path):
    from segray.report import write_report

    page = Path(write_report(cv_run.output, tmp_path / "report.html")).read_text()
    assert 'id="folds"' in page and "Cross-validation" in page
    table = page[page.index('id="folds"') : page.index("</table>", page.index('id="folds"'))]
    assert table.count("<tr") == 1 + 4  # header, 2 folds, mean, std
    assert "out-of-fold Dice" in page
