"""The driver side of training: the TorchTrainer around the worker loop, and `run_training`,
the one entry point (`segray train`, `jobs/train.py` and every Tune trial call it).

Outputs and Ray's run state go to a local path or any URI `segray.storage` reads; the results
are read from the checkpoints' small files (metrics, history), never their optimizer state.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import ray.train
import ray.train.torch
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)

from segray.checkpoint import (
    HISTORY_FILE,
    INFERENCE_FILES,
    METRICS_FILE,
    load_history,
)
from segray.cluster import check_cuda, check_fits, ensure_ray, heap_env, total_resources
from segray.config import Config, ConfigError, load_config
from segray.data import Listing, build_datasets, inspect_data
from segray.data.folder import DatasetError
from segray.data.split import write_splits
from segray.engine import (
    NonFiniteLossError,
)
from segray.storage import Location, publish_folder, with_retries
from segray.timeline import mark
from segray.tracking import (
    CLIENT_ENV,
    Tracker,
    TrackingSettings,
    flatten_params,
    save_run_id,
    saved_run_id,
)
from segray.tracking import settings_from_config as tracking_settings
from segray.train.entry import train_loop_per_worker

__all__ = [
    "RUN_NAME",
    "TrainResult",
    "build_trainer",
    "check_resume_config",
    "run_training",
    "worker_env",
    "worker_resources",
]

RUN_NAME = "train"


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    output: Path | None
    best: Path | None  # exported best checkpoint dir (by val Dice)
    last: Path | None
    best_metrics: dict[str, Any]
    history: pd.DataFrame


# --------------------------------------------------------------------------- driver side
# Keys a resumed run may change: they cannot alter the weights, the data order or the LR
# schedule (augmentations are seeded per sample, so loader processes do not matter; the val
# batch size changes only how the reported val loss's soft-Dice part is batched).
RESUME_MUTABLE = (
    "data.loader_workers",
    "data.eval_batch_size",
    "train.max_failures",
    "train.heap_reuse",
    "tracking.",
    "tune.",
    "segment.",
)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and key not in ("space", "split_ids"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(
    saved: Config,
    cfg: Config,
    where: str | Path,
    *,
    mutable: tuple[str, ...] = RESUME_MUTABLE,
    what: str = "run",
) -> list[str]:
    """Refuse, in one line, settings that would bend a resumed run's trajectory.

    Every key outside ``mutable`` (default `RESUME_MUTABLE`: epochs, lr, schedule, batch size,
    data, model, loss, seed, worker count... may not change) must equal the run's saved
    ``config.yaml``. Returns the changed keys that ``mutable`` allows, as ``key (old -> new)``.
    """
    old, new = _flat(saved.to_dict()), _flat(cfg.to_dict())
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    changed = [k for k in differ if not k.startswith(mutable)]
    if changed:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(
            f"--resume {where}: cannot change {shown}{more}: they change the {what}'s "
            f"trajectory (a resumed {what} may change only "
            f"{', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in mutable)})"
        )
    return [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in differ]


def worker_resources(cfg: Config) -> dict[str, float]:
    res = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        res["GPU"] = cfg.train.gpus_per_worker
    return res


# glibc serves every allocation above 32 MiB (a ResNet-U-Net's full-resolution activations)
# with a fresh mmap and returns it on free, so each step faults in and zeroes gigabytes of
# pages; in Ray's worker processes that made CPU epochs ~12% slower than the same loop in a
# plain process (benchmarks/isbi_membrane.py). Heap-only allocation with a high trim threshold
# keeps those pages for the next step. The variables are read when a worker process starts.
def worker_env(cfg: Config) -> dict[str, str]:
    """Environment variables of the training workers (``train.heap_reuse``)."""
    return heap_env(cfg.train.heap_reuse)


def build_trainer(
    cfg: Config,
    *,
    storage_path: str,
    name: str,
    callbacks: Sequence[Any] = (),
    expect: Mapping[str, Any] | None = None,
    monitor: tuple[str, str] = ("val_dice", "max"),
    tracking: Mapping[str, Any] | None = None,
    listing: Listing | None = None,
) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer for ``cfg`` persisting to ``storage_path/name`` (same name = resume);
    ``storage_path`` is a local path or any URI `segray.storage` reads (s3://, gs://, ...).

    Ray keeps the latest checkpoint and the best one by ``monitor`` (metric, mode).
    ``tracking`` (`segray.tracking.Tracker.worker_spec`): the MLflow run rank 0 logs to.
    ``listing``: the dataset as the driver listed it, so that the workers do not list it again.
    """
    storage = Location.parse(storage_path)
    env = worker_env(cfg)
    if tracking:  # the MLflow client's short retries, unless this process sets its own
        env.update({k: os.environ.get(k, v) for k, v in CLIENT_ENV.items()})
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "expect": dict(expect or {}),
            "tracking": dict(tracking) if tracking else None,
            # plain tuples: Train's controller unpickles this too, and needs no segray.data
            "listing": listing.samples if listing is not None else None,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker=worker_resources(cfg),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.fs,
            # controller_failure_limit: fail instead of retrying worker start-up forever.
            failure_config=FailureConfig(
                max_failures=cfg.train.max_failures, controller_failure_limit=3
            ),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=monitor[0],
                checkpoint_score_order=monitor[1],
            ),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),  # epochs print their own line
            worker_runtime_env={"env_vars": env},
        ),
    )


def run_training(
    cfg: Config,
    output: str | Path | None = None,
    *,
    resume: bool = False,
    storage_path: str | None = None,
    name: str = RUN_NAME,
    callbacks: Sequence[Any] = (),
    address: str | None = None,
    expect: Mapping[str, Any] | None = None,
    monitor: tuple[str, str] = ("val_dice", "max"),
    tracker: Tracker | None = None,
    listing: Listing | None = None,
) -> TrainResult:
    """Train ``cfg`` with DDP on Ray Train.

    ``output`` (a local folder or a URI: ``s3://bucket/runs/a``) receives ``config.yaml``,
    ``fingerprint.json``, ``splits.json``, ``history.parquet`` and ``checkpoints/{last,best}`` (best by
    ``monitor``, default val Dice); Ray's run state lives in ``storage_path`` (default
    ``output/ray``, on the same storage). Running again with the same storage and ``name``
    continues from the latest checkpoint; ``resume=False`` refuses to do so silently.
    Reading the results fetches only the small files (metrics, history), never the optimizer
    state, unless ``output`` asks for the checkpoints to be copied there.

    MLflow (``cfg.tracking``): with an ``output`` and no ``tracker``, the run is tracked as one
    MLflow run (kept in ``output/tracking.json``, so ``resume`` continues it): the resolved
    config as params, every epoch's metrics (logged by rank 0), and as artefacts the config,
    the history and the best checkpoint's inference files (on object storage: its URI as the
    tag ``segray.best_checkpoint``). A ``tracker`` opened by the caller (a search trial) only
    receives the epochs' metrics.

    ``listing`` (a search trial, `segray.data.samples.Listing`): ``cfg`` was prepared, and its
    dataset fingerprinted and listed, by the caller once for the whole run; neither is redone.
    """
    own = tracker is None and output is not None  # this call opens, fills and closes the run
    settings = tracking_settings(cfg) if own else None  # no mlflow for a URI: fail before Ray
    ensure_ray(address)
    out = Location.parse(output) if output is not None else None
    storage_path = _run_storage(out, storage_path, name, resume)
    _speed_up_polling()
    if listing is None:
        cfg, listing = _prepare(cfg, out, resume)
    else:
        _check_trainable(cfg, listing)
    if own and out is not None:
        tracker = _open_train_run(settings, cfg, out, resume)
    trainer = build_trainer(
        cfg,
        storage_path=storage_path,
        name=name,
        callbacks=callbacks,
        expect=expect,
        monitor=monitor,
        tracking=tracker.worker_spec() if tracker is not None else None,
        listing=listing,
    )
    mark("fit_start", run=name)
    result = _fit(trainer, tracker if own else None)
    mark("fit_end", run=name)
    best_ckpt = _best_checkpoint(result, monitor)
    history = pd.DataFrame(_checkpoint_history(result.checkpoint))
    best_metrics = json.loads(_read_ckpt_file(best_ckpt, METRICS_FILE) or b"{}")
    best = last = None
    if out is not None:
        last = _publish_checkpoint(result.checkpoint, out.join("checkpoints", "last"))
        best = _publish_checkpoint(best_ckpt, out.join("checkpoints", "best"))
        table = pa.Table.from_pandas(history, preserve_index=False)
        with_retries(out.join("history.parquet").write, table, what="write")
    if own and tracker is not None and out is not None:
        _log_train_outputs(tracker, cfg, out, history, best)
        tracker.end("FINISHED")
    mark("results_read", run=name)
    return TrainResult(_shown(out), best, last, best_metrics, history)


def _run_storage(out: Location | None, storage_path: str | None, name: str, resume: bool) -> str:
    """Where Ray keeps the run's state (default ``output/ray``); a run already there is
    continued only with ``resume``."""
    if storage_path is None:
        if out is None:
            raise ValueError("run_training needs an output folder or a storage_path")
        storage_path = out.join("ray").uri
    run_dir = Location.parse(storage_path).join(name)
    if out is not None and not resume and with_retries(run_dir.list, what="list"):
        raise FileExistsError(
            f"{out.uri} already holds a training run: continue it with --resume {out.uri} or "
            "choose another --output"
        )
    return storage_path


def _prepare(cfg: Config, out: Location | None, resume: bool) -> tuple[Config, Listing]:
    """The config as the data makes it (``mask_mode: auto`` resolved; one summary line) and
    the dataset's listing, checked against a resumed run's and the cluster, and written into
    ``out`` with the dataset's fingerprint and splits."""
    cfg, fingerprint = inspect_data(cfg, echo=True)
    saved = out.join("config.yaml") if resume and out is not None else None
    if saved is not None and with_retries(saved.exists, what="stat"):
        check_resume_config(load_config(saved.uri), cfg, out.uri)
    _check_trainable(cfg, fingerprint.listing)
    if out is not None:
        with_retries(out.join("config.yaml").write, cfg.to_yaml().encode(), what="write")
        # fingerprint.json: what the dataset holds, the mapping chosen
        with_retries(
            out.join("fingerprint.json").write, fingerprint.to_json().encode(), what="write"
        )
        write_splits(cfg, out.uri, listing=fingerprint.listing)  # splits.json: split keys
    return cfg, fingerprint.listing


# The Train controller checks its workers this often (Ray's default: 2 s), and so also notices
# that they started or finished up to that late: on a short trial, seconds of every trial.
# A check is one small call per worker. Ray Train passes the variable on to its controller.
POLL_INTERVAL_S = "0.25"


def _speed_up_polling() -> None:
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", POLL_INTERVAL_S)


def _check_trainable(cfg: Config, listing: Listing | None) -> None:
    """Refuse, before any worker starts, an empty training split and workers the cluster
    cannot hold (CPUs, GPUs, a CUDA build of torch where they run)."""
    if not len(build_datasets(cfg, listing)["train"]):
        raise DatasetError(
            f"{cfg.data.root}: the training split is empty: check data.split / data.split_ids"
        )
    if cfg.train.use_gpu and total_resources().get("GPU", 0) == 0:
        raise ConfigError(
            "train.use_gpu=true but the Ray cluster has no GPU: set train.use_gpu=false "
            "(CPU workers, gloo) or join a cluster with GPUs"
        )
    check_fits(
        worker_resources(cfg),
        cfg.train.num_workers,
        f"training with {cfg.train.num_workers} workers",
    )
    if cfg.train.use_gpu:
        check_cuda(
            cfg.train.gpus_per_worker,
            "train.use_gpu=true but CUDA is not available where the workers run (no GPU, or a "
            "CPU-only torch): set train.use_gpu=false, or run on nodes with GPUs and a CUDA "
            "build of torch",
        )


def _fit(trainer: ray.train.torch.TorchTrainer, tracker: Tracker | None) -> Any:
    """``trainer.fit()``'s result, with a checkpoint. A failure ends ``tracker``'s run as
    FAILED; a diverged run raises the workers' own one-line message, without a traceback."""
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    except Exception as e:
        if tracker is not None:
            tracker.end("FAILED")
        for failure in getattr(e, "worker_failures", {}).values():
            if isinstance(failure, NonFiniteLossError):
                raise NonFiniteLossError(str(failure)) from None
        raise
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return result


def _best_checkpoint(result: Any, monitor: tuple[str, str]) -> ray.train.Checkpoint:
    """The kept checkpoint best by ``monitor`` (metric, mode); NaN is never the best. The
    latest where none scored."""
    metric, sign = monitor[0], (1.0 if monitor[1] == "max" else -1.0)
    scored = [(c, m) for c, m in result.best_checkpoints if metric in m]
    scored = [(c, m) for c, m in scored if math.isfinite(m[metric])]
    return max(scored, key=lambda cm: sign * cm[1][metric])[0] if scored else result.checkpoint


def _open_train_run(
    settings: TrackingSettings | None, cfg: Config, out: Location, resume: bool
) -> Tracker:
    """The MLflow run of a `segray train` output: the one in ``out/tracking.json`` when
    resuming, else a new one; its params are the resolved config, flattened."""
    tracker = Tracker(settings)
    if settings is None:
        return tracker
    tracker.start(
        run_name=RUN_NAME,
        tags={"segray.kind": "train", "segray.output": out.uri},
        run_id=saved_run_id(out.uri, settings) if resume else None,
    )
    tracker.log_params(flatten_params(cfg.to_dict()))
    save_run_id(out.uri, tracker)
    return tracker


def _log_train_outputs(
    tracker: Tracker, cfg: Config, out: Location, history: pd.DataFrame, best: Path | str | None
) -> None:
    """The artefacts of a finished train run: config, history, the best checkpoint's files
    (uploaded from a local output; from object storage only linked, by a tag)."""
    if not tracker.active:
        return
    tracker.log_bytes("config.yaml", cfg.to_yaml().encode())
    with tempfile.TemporaryDirectory(prefix="segray-history-") as tmp:
        history.to_parquet(Path(tmp) / "history.parquet", index=False)
        tracker.log_artifact(Path(tmp) / "history.parquet")
    plots = Path(out.path, "plots") if out.is_local else None
    if plots is not None and plots.is_dir():
        tracker.log_artifact(plots, "plots")
    if best is None:
        return
    if out.is_local:
        for file in INFERENCE_FILES:
            tracker.log_artifact(Path(best, file), "checkpoints/best")
    else:
        tracker.set_tags({"segray.best_checkpoint": str(best)})


def _shown(loc: Location | None) -> Path | str | None:
    """A local output as a Path (as callers have always had it), a URI as its string."""
    if loc is None:
        return None
    return Path(loc.path) if loc.is_local else loc.uri


def _read_ckpt_file(ckpt: ray.train.Checkpoint, name: str) -> bytes | None:
    """One small file of a Ray checkpoint, wherever it is stored (nothing else is fetched)."""
    loc = Location(ckpt.filesystem, f"{ckpt.path}/{name}", f"{ckpt.path}/{name}")
    try:
        return with_retries(loc.read_bytes, what="read checkpoint file")
    except FileNotFoundError:
        return None


def _checkpoint_history(ckpt: ray.train.Checkpoint) -> list[dict[str, Any]]:
    data = _read_ckpt_file(ckpt, HISTORY_FILE)
    if data is not None:
        return json.loads(data)
    with ckpt.as_directory() as directory:  # written by an older segray: in the train state
        return load_history(directory)


def _publish_checkpoint(ckpt: ray.train.Checkpoint, dst: Location) -> Path | str:
    """Copy a Ray checkpoint to ``dst``, replacing it whole (`segray.storage.publish_folder`:
    local: atomically renamed into place; object storage: a fresh version behind a pointer
    written last). Returns where it is."""
    publish_folder(Location(ckpt.filesystem, ckpt.path, ckpt.path), dst)
    return _shown(dst)
