"""`segray auto`: from a folder of images and masks to a tuned model and a segmented archive.

    fingerprint (`segray inspect`) -> derived config (`derive`) -> one-batch probe and plan
    (`plan`) -> search within the budget (Tune ``time_budget_s`` + plateau stop) -> K-fold CV
    of the best config and its fold ensemble (`segray cv`), when the budget holds it -> the
    held-out test split, which nothing was selected on -> bulk segmentation of ``--unlabelled``
    -> the report.

    OUT/fingerprint.json   the dataset's fingerprint
    OUT/config.yaml        the derived config (the search space included)
    OUT/splits.json        the keys of train, val and test (`segray.data.split`)
    OUT/plan.json          why each setting has its value, the probe and the plan
    OUT/tune/              the search (`segray tune`'s outputs)
    OUT/cv/                the cross-validation and OUT/cv/ensemble (`segray cv`'s outputs)
    OUT/eval/              the final model on the test split (`segray evaluate`'s outputs)
    OUT/segment/           the bulk segmentation of --unlabelled (`segray segment`'s outputs)
    OUT/auto_summary.json  the winning params, the scores, the wall times and these paths
    OUT/report.html        all of it on one page

The test split is fixed before anything trains (``data.split``, stable per file stem): the
search ranks trials on val, the CV deals folds from train + val only, so the test score is the
first the final model has seen of those images.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from segray.auto.derive import AutoOptions, Derived, Resources, derive_config, find_layout
from segray.auto.plan import Plan, cluster, make_plan, probe_on_worker
from segray.auto.progress import (
    STATE,
    check_inputs,
    check_splits,
    configured,
    load_state,
    save_state,
)
from segray.auto.result import SUMMARY, AutoResult
from segray.auto.stages import run_stages, stage
from segray.config import Config, ConfigError, apply_overrides
from segray.data.samples import listed_once

__all__ = ["AutoResult", "parse_duration", "prepare_auto", "run_auto"]

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float) -> float:
    """Seconds of ``"90"``, ``"90s"``, ``"15m"``, ``"1h30m"``; a clear error otherwise."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        parts = re.fullmatch(
            r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
        )
        if not text.strip() or parts is None or not any(parts.groups()):
            raise ConfigError(
                f"--time-budget {text!r}: expected a duration like 300, 90s, 15m or 1h30m"
            )
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ConfigError(f"--time-budget must be > 0, got {text!r}")
    return seconds


def _base_config(data: str, overrides: Sequence[str]) -> Config:
    """The data layout of ``data``: its image and mask folders (found by name), as a folder
    source; ``data.*`` overrides (folders, classes, explicit splits) apply here already."""
    from segray.data.remote import is_remote

    tree: dict[str, Any] = {"data.source": "folder", "data.root": data}
    if not is_remote(data):
        root = Path(data).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"--data {data}: not a folder")
        tree["data.root"] = str(root)
        layout = find_layout([p.name for p in root.iterdir() if p.is_dir()])
        if layout is not None:
            tree["data.images_dir"], tree["data.masks_dir"] = layout
    data_overrides = [o for o in overrides if o.startswith("data.")]
    return apply_overrides(apply_overrides(Config(), tree), data_overrides)


def _fingerprint(cfg: Config, options: AutoOptions):
    """inspect's fingerprint, as `segray inspect` takes it: ``data.mask_mode: auto`` resolved
    (`segray.data.inspect.resolve_mask_mode`; masks whose values are class indices 0..K-1
    with K > 2 get K classes, named class_1 ... unless --classes names them)."""
    from segray.data import inspect_data

    prepared, fp = inspect_data(cfg, strict=False)
    fp.raise_if_unusable()
    print(fp.summary(), flush=True)
    return prepared, fp


def derive_for(
    data: str, resources: Resources, options: AutoOptions, overrides: Sequence[str] = ()
) -> tuple[Derived, dict[str, Any]]:
    """The fingerprint of ``data``, with the hints of its ``dataset.yaml`` (``fp["hints"]``),
    and the config derived from them (no Ray needed). Class names come from --classes, a
    ``data.classes`` override or dataset.yaml, in that order, before the masks are read."""
    from segray.data.folder import DatasetError
    from segray.data.hints import HINTS_FILE, load_hints

    base = _base_config(data, overrides)
    hints = load_hints(base.data.root)
    if hints is not None and (options.classes or _given(overrides) & {"data.classes"}):
        hints = hints.model_copy(update={"class_names": None})  # the user's names win
    classes = options.classes or (hints.class_names if hints else None)
    if classes:
        base = apply_overrides(base, {"data.classes": classes})
    try:
        prepared, fp = _fingerprint(base, options)
    except DatasetError as e:
        if hints is None or not hints.class_names:
            raise
        where = f"{data.rstrip('/')}/{HINTS_FILE}"
        raise DatasetError(f"{where}: class_names do not fit the masks: {e}") from None
    fpd = fp.to_dict()
    if hints is not None:
        fpd["hints"] = hints.to_dict()
    derived = derive_config(fpd, resources, root=data, options=options, base=prepared)
    derived.fingerprint = fp
    return derived, fpd


@listed_once()
def prepare_auto(
    data: str,
    *,
    time_budget_s: float,
    folds: int = 5,
    options: AutoOptions | None = None,
    overrides: Sequence[str] = (),
    address: str | None = None,
) -> AutoResult:
    """Fingerprint, derive, probe and plan (what ``--dry-run`` prints); trains nothing."""
    from segray.cluster import ensure_ray
    from segray.data import list_samples
    from segray.data.split import data_splits, small_split_warning

    _base_config(data, overrides)  # a missing folder or a bad data.* override: before Ray starts
    print(f"Ray: {ensure_ray(address)}", flush=True)
    resources = cluster()
    derived, fpd = derive_for(data, resources, options or AutoOptions(), overrides)
    cfg = apply_overrides(derived.config, list(overrides))  # the user's key=value win
    fp = derived.fingerprint
    splits = data_splits(list_samples(cfg.data, check=False, listing=fp.listing), cfg.data)
    check_splits(splits, cfg.data, folds)  # the derived split: before the probe and the search
    given = _given(overrides)
    plan = make_plan(
        cfg,
        resources,
        budget_s=time_budget_s,
        probe=probe_on_worker(cfg),
        train_images=len(splits["train"]),
        val_pixels=len(splits["val"]) * _pixels(fpd),
        folds=folds,
        epochs=_pinned_epochs(cfg, given),
    )
    cfg = _planned_config(cfg, plan, overrides, given)
    _explain_split(derived, cfg, splits)
    small = small_split_warning(splits, cfg.data)
    if small:
        print(f"warning: {small}", flush=True)
        plan.notes.append(small)
    derived = replace(derived, config=cfg)
    return AutoResult(str(data), cfg, derived, plan, {"fingerprint": fpd}, fingerprint=fp)


def _planned_config(cfg: Config, plan: Plan, overrides: Sequence[str], given: set[str]) -> Config:
    """``cfg`` with the plan's epochs, trials and budget, under the user's overrides."""
    cfg = plan.apply(cfg)
    if "tune.num_samples" in given:  # TPE's random start follows the pinned trial count
        cfg = apply_overrides(cfg, {"tune.startup_trials": None})
    for key in overrides:  # an explicit train.epochs (or other planned key) still wins
        cfg = apply_overrides(cfg, [key])
    if cfg.tune.time_budget_s is None:
        plan.notes.append(
            f"fixed work, no time budget (tune.time_budget_s is null): the search runs "
            f"{cfg.tune.num_samples} trials"
            + (f" and the CV its {plan.folds} folds" if plan.folds else "")
            + ", however long they take"
        )
    return cfg


def _explain_split(derived: Derived, cfg: Config, splits: dict[str, list[Any]]) -> None:
    """The split's reason, with the images each part got."""
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    if cfg.data.split_ids:
        derived.reasons.pop("data.split", None)
        derived.reasons["data.split_ids"] = f"given: {counts}"
    else:
        why = derived.reasons.get("data.split")
        derived.reasons["data.split"] = f"{why + '; ' if why else ''}stable per stem: {counts}"


@listed_once()  # one listing of the dataset for the whole run (a resume lists it again)
def run_auto(
    data: str | None,
    output: str | Path = "segray-auto",
    *,
    time_budget_s: float = 1800.0,
    unlabelled: Sequence[str] = (),
    unlabelled_masks: str | None = None,
    folds: int = 5,
    options: AutoOptions | None = None,
    overrides: Sequence[str] = (),
    dry_run: bool = False,
    address: str | None = None,
    resume: bool = False,
) -> AutoResult:
    """Configure, search, cross-validate, test and segment (module docstring).

    ``unlabelled``: folders, globs, tar shards or Parquet files to bulk-segment with the final
    model (``unlabelled_masks``: their ground truth, when some exists, for per-image scores).
    Override keys, ``unlabelled``, the test split and the folds are checked before Ray starts.

    ``resume=True`` continues the unfinished run in ``output`` with the inputs it started with
    (`segray.auto.progress`): after the last finished stage, the search and the CV from their
    own saved state. Interrupted (Ctrl-C), it raises `RunInterrupted`, which says so.
    """
    from segray.cluster import interruptible
    from segray.storage import where

    out = where(output)
    inputs = {
        "data": None if data is None else str(data),
        "time_budget_s": time_budget_s,
        "folds": folds,
        "unlabelled": [str(u) for u in unlabelled],
        "unlabelled_masks": unlabelled_masks,
        "overrides": list(overrides),
        "options": asdict(options or AutoOptions()),
    }
    state = _state(out, inputs, resume=resume, dry_run=dry_run)
    with interruptible(f"segray auto in {out}", f"segray auto --resume {out}"):
        if "summary" in state:  # configured before: the config, plan and progress it wrote
            prep = configured(out, state["inputs"]["data"])
            started = time.time() - sum(state["times"].values())
            return run_stages(prep, out, state, started, address=address)
        return _configure(out, state, dry_run=dry_run, address=address)


def _state(out: str, inputs: dict[str, Any], *, resume: bool, dry_run: bool) -> dict[str, Any]:
    """The run's state: with ``resume``, the one saved in ``out`` (its inputs replace
    ``inputs``); else a new one holding ``inputs``, checked before Ray starts. An ``out``
    that holds a run, finished or not, is refused unless resumed."""
    from segray.storage import read_text

    if read_text(f"{out}/{SUMMARY}") is not None:
        raise FileExistsError(f"{out} holds a finished segray auto run: choose another --output")
    state = None if dry_run else load_state(out)
    if resume:
        if state is None:
            raise FileNotFoundError(f"--resume {out}: no {STATE}: not a segray auto run")
        print(f"resuming the segray auto run in {out} (data {state['inputs']['data']})", flush=True)
        return state
    if state is not None or (not dry_run and read_text(f"{out}/config.yaml") is not None):
        raise FileExistsError(
            f"{out} already holds a segray auto run: continue it with segray auto --resume "
            f"{out}, or choose another --output"
        )
    if inputs["data"] is None:
        raise ConfigError("segray auto needs --data (or --resume OUT)")
    from segray.data.hints import load_hints

    overrides = inputs["overrides"]
    base = _base_config(inputs["data"], overrides)
    check_inputs(base, overrides, inputs["folds"], inputs["unlabelled"])
    load_hints(base.data.root)  # a bad dataset.yaml: refused before Ray starts
    return {"inputs": inputs}


def _configure(out: str, state: dict[str, Any], *, dry_run: bool, address: str | None):
    """`run_auto` from the start: fingerprint, derive, probe and plan, write the configure
    stage's files (none with ``dry_run``), then `run_stages`."""
    inputs = state["inputs"]
    started = time.time()
    stage("configure", f"fingerprint {inputs['data']}, derive the config, probe one batch")
    prep = prepare_auto(
        inputs["data"],
        time_budget_s=inputs["time_budget_s"],
        folds=inputs["folds"],
        options=AutoOptions(**inputs["options"]),
        overrides=inputs["overrides"],
        address=address,
    )
    print(prep.derived.table())
    print(prep.plan.text(), flush=True)
    if dry_run:
        print("\n# the derived config (segray train/tune --config takes it as it is)")
        print(prep.config.to_yaml(), flush=True)
        return prep
    save_state(out, state)  # the inputs first: from here on, --resume continues the run
    _write_configuration(out, prep, inputs["time_budget_s"])
    summary = {"output": out, "data": inputs["data"], "plan": prep.plan.to_dict()}
    state = {**state, "summary": summary, "times": {"configure": round(time.time() - started, 1)}}
    save_state(out, state)
    return run_stages(prep, out, state, started, address=address)


def _write_configuration(out: str, prep: AutoResult, time_budget_s: float) -> None:
    """OUT/config.yaml, fingerprint.json, splits.json and plan.json."""
    from segray.data.split import write_splits
    from segray.storage import write_json, write_text

    fingerprint = prep.summary["fingerprint"]
    write_text(f"{out}/config.yaml", prep.config.to_yaml())
    write_text(f"{out}/fingerprint.json", json.dumps(fingerprint, indent=2))
    write_splits(prep.config, out)  # splits.json: the keys of train, val and test
    write_json(
        f"{out}/plan.json",
        {
            "reasons": prep.derived.reasons,
            "values": prep.derived.values(),
            "hints": fingerprint.get("hints", {}),  # the keys of dataset.yaml
            "plan": prep.plan.to_dict(),
            "time_budget_s": time_budget_s,
        },
    )


def _given(overrides: Sequence[str]) -> set[str]:
    """The keys the user's overrides set."""
    return {o.split("=", 1)[0].strip() for o in overrides}


def _pinned_epochs(cfg: Config, given: set[str]) -> int | None:
    """A full trial's epochs when the user's overrides pin them, else None (the plan sizes
    them to the budget)."""
    if "tune.max_epochs" in given and cfg.tune.max_epochs is not None:
        return cfg.tune.max_epochs
    return cfg.train.epochs if "train.epochs" in given else None


def _pixels(fp: dict[str, Any]) -> float:
    im = fp["images"]
    return float(im["width"]["median"] * im["height"]["median"])
