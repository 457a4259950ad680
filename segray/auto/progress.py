"""`segray auto`'s inputs checked before Ray starts, and its progress, which a resume reads.

    OUT/auto_state.json   the run's inputs (data, budget, folds, overrides, --unlabelled) and,
                          after each finished stage, what the later stages need from it

A rerun with ``--resume OUT`` (or ``--resume-or-start`` for a job that may be resubmitted)
continues after the last finished stage: the search and the CV resume their own Tune state in
OUT/tune and OUT/cv, and a finished search is read back, not run again.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segray.auto.derive import SMALL_SET  # fewer pairs get a 0.6 / 0.2 / 0.2 split
from segray.config import Config, ConfigError

__all__ = [
    "STATE",
    "check_inputs",
    "check_splits",
    "configured",
    "finished_search",
    "load_state",
    "save_state",
]

STATE = "auto_state.json"


def check_inputs(
    base: Config, overrides: Sequence[str], folds: int, unlabelled: Sequence[str] = ()
) -> None:
    """What can be refused from the files alone, before Ray, the probe or the search: every
    override key, every ``--unlabelled`` source, a test split with images and enough groups of
    images for ``folds`` folds. ``base``: the data layout with its ``data.*`` overrides."""
    from segray.data import list_samples
    from segray.data.remote import is_remote
    from segray.data.split import split_samples

    _check_keys(overrides)  # values are checked with the derived config they override
    for source in unlabelled:
        _check_source(str(source))
    if is_remote(base.data.root or ""):
        return  # listing needs the mirror: checked after it, before the search
    samples = list_samples(base.data, check=False)
    data = base.data
    given = {o.split("=", 1)[0].strip() for o in overrides}
    split = data.split if "data.split" in given or len(samples) >= SMALL_SET else (0.6, 0.2, 0.2)
    splits = split_samples(samples, split, data.split_seed, data.split_ids, data.group_by)
    check_splits(splits, data, folds)


def _check_keys(overrides: Sequence[str]) -> None:
    """Every override names a config key (a misspelt one would otherwise fail after Ray, the
    fingerprint and the probe); one line naming the key and the valid ones beside it. Values
    are checked later, with the derived config they override."""
    from pydantic import BaseModel

    from segray.config import parse_overrides

    for key in parse_overrides(overrides):
        model: Any = Config
        parts = key.split(".")
        for i, part in enumerate(parts):
            fields = model.model_fields
            if part not in fields:
                where = ".".join(parts[:i]) or "the top level"
                raise ConfigError(
                    f"override {key}: unknown key {part!r} in {where}; valid: {', '.join(fields)}"
                )
            ann = fields[part].annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
            elif i < len(parts) - 1 and not _is_mapping(ann):
                raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} has no keys")
            else:
                break  # the last part, or free keys of a mapping (tune.space ...)


def _is_mapping(annotation: Any) -> bool:
    import typing

    return any(
        a is dict or typing.get_origin(a) is dict
        for a in (annotation, *typing.get_args(annotation))
    )


def check_splits(splits: dict[str, list[Any]], data: Any, folds: int) -> None:
    """A test split with images (the final score) and, for ``folds`` >= 2, at least ``folds``
    groups of images in train + val: one line naming the setting that fixes it."""
    from segray.data.folder import DatasetError
    from segray.data.split import assign_folds

    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    if not splits.get("test"):
        raise DatasetError(
            f"{data.root}: the test split is empty ({counts}): segray auto scores the final "
            "model on it; set data.split (e.g. data.split=[0.6,0.2,0.2]) or data.split_ids"
        )
    if folds >= 2:
        keys = [s.key for s in (*splits["train"], *splits["val"])]
        try:
            assign_folds(keys, folds, data.split_seed, data.group_by)
        except DatasetError as e:
            raise DatasetError(
                f"{e}: use --folds {min(folds - 1, len(keys))} or --folds 0"
            ) from None


def _check_source(source: str) -> None:
    from segray.data.remote import is_remote

    if is_remote(source):
        from segray.storage import Location, list_entries

        loc = Location.parse(source.rstrip("/"))
        if any(c in source for c in "*?[") or loc.exists() or list_entries(loc, recursive=True):
            return
        raise FileNotFoundError(f"--unlabelled {source}: nothing there")
    path = Path(source).expanduser()
    if any(c in source for c in "*?["):
        if not glob.glob(str(path), recursive=True):
            raise FileNotFoundError(f"--unlabelled {source}: the pattern matches no file")
    elif not path.exists():
        raise FileNotFoundError(f"--unlabelled {source}: no such file or folder")


# --------------------------------------------------------------------------- progress
def configured(out: str, data: str):
    """The configure stage's outputs, read back: the config, the plan and the fingerprint."""
    from segray.auto.derive import Derived
    from segray.auto.plan import Plan, Probe
    from segray.auto.result import AutoResult
    from segray.search.results import config_from_yaml
    from segray.storage import read_json, read_text

    cfg = config_from_yaml(read_text(f"{out}/config.yaml") or "")
    saved = read_json(f"{out}/plan.json") or {}
    p = dict(saved["plan"])
    plan = Plan(**{**p, "probe": Probe(**p["probe"])})
    fpd = read_json(f"{out}/fingerprint.json") or {}
    derived = Derived(cfg, saved.get("reasons", {}))
    return AutoResult(data, cfg, derived, plan, {"fingerprint": fpd})


def load_state(out: str) -> dict[str, Any] | None:
    from segray.storage import read_json

    return read_json(f"{out}/{STATE}")


def save_state(out: str, state: dict[str, Any]) -> None:
    from segray.storage import write_json

    write_json(f"{out}/{STATE}", state)


def finished_search(tune_out: str):
    """The `TuneResult` of the finished search in ``tune_out``, read from its outputs."""
    import pandas as pd

    from segray.search.run import TuneResult
    from segray.storage import Location, read_json

    summary = read_json(f"{tune_out}/summary.json")
    if summary is None:
        raise FileNotFoundError(f"{tune_out}: no summary.json: the search did not finish")
    loc = Location.parse(f"{tune_out}/trials.parquet")
    trials = pd.read_parquet(loc.path, filesystem=loc.fs)
    best = f"{tune_out}/best" if summary.get("best") else None
    return TuneResult(tune_out, trials, pd.DataFrame(), summary, best)
