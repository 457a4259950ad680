"""Bulk segmentation with Ray Data: folders, globs, tar shards and Parquet files of images in,
masks and per-image statistics out as Parquet; streaming, resumable, nothing lost or doubled.

    summary = run_segment("runs/a/checkpoints/best", ["photos/", "s3://b/shard-*.tar"], "out/")
    pandas.read_parquet("out/parquet")         # one row per input image, schema OUTPUT_SCHEMA

Pipeline (one streaming Ray Data dataset; nothing but per-file counts reaches the driver)::

    read shards (tasks: raw bytes + stable ids, then an end marker per shard)
      -> decode (tasks: PIL, EXIF, any mode -> the model's channels; ground truth -> classes)
      -> segment (actor pool: the model loads once per actor; tiles, masks, statistics, PNG)
      -> stage (tasks: rows -> OUTPUT/_staging/<shard>/<run>-<hash of ids>.parquet)
      -> driver: counts the rows staged per shard; a complete shard is committed by a task.

Output folder::

    OUTPUT/parquet/part-<shard>.parquet   one file per input shard, complete or absent
    OUTPUT/summary.json                   counts, aggregate metrics, images/s: written last
    OUTPUT/config.yaml                    the resolved config
    OUTPUT/_segray/run.json               model id and settings of the output (resume checks)
    OUTPUT/_staging/<shard>/*.parquet     rows of shards not committed yet (readers skip "_")

Nothing lost, nothing doubled: a shard's file appears only by renaming a complete temporary
(every image id of the shard exactly once, newest row winning), so a killed run leaves
committed shards and staged parts, never a partial file that looks complete. Staged part names
are a function of the run and the ids they hold, so a retried Ray task overwrites its own
part, and the commit de-duplicates by image id whatever happened. Rerunning the same command
resumes: committed shards are skipped, staged images are not segmented again (``error`` rows
are retried only with ``retry_errors``), and the driver re-validates the whole output
(rows == input images, unique ids) before it writes ``summary.json``.

Nothing here imports torch at module level (the model is loaded inside the actors): Ray's
read, decode and write tasks import this module in fresh worker processes, often, and torch
would add over a second of CPU to each.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import posixpath
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy, DataContext
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from segray import __version__
from segray.cluster import ResourceError, check_fits, ensure_ray, heap_env, onednn_cache_env
from segray.config import (
    Config,
    ConfigError,
    SegmentConfig,
    apply_overrides,
    file_overrides,
    parse_overrides,
)
from segray.data.io import ImageError, decode_image, read_mask
from segray.data.masks import MaskMapper
from segray.segment_io import (
    METRIC_COLUMNS,
    OUTPUT_SCHEMA,
    READ_SCHEMA,
    InputError,
    Location,
    MaskIndex,
    Shard,
    commit_shard,
    empty_row,
    encode_mask_png,
    ground_truth_metrics,
    mask_stats,
    metrics_summary,
    part_files,
    plan_inputs,
    read_columns,
    read_shard,
)

__all__ = [
    "OUTPUT_SCHEMA",
    "InputError",
    "SegmentError",
    "actor_options",
    "actor_precision",
    "run_segment",
    "summary_line",
]

# Settings that change what a row holds: a resumed run must use the same ones.
_ROW_SETTINGS = (
    "tile_size",
    "tile_overlap",
    "threshold",
    "max_pixels",
    "uncertain_low",
    "uncertain_high",
    "image_column",
    "id_column",
    "shard_size",
)
_OWNED = ("parquet", "_staging", "_segray", "summary.json", "config.yaml")
# The data.* keys a run may override: how --masks files map to classes.
_MASK_KEYS = (
    "data.mask_mode",
    "data.mask_threshold",
    "data.mask_values",
    "data.trimap_uncertain",
    "data.ignore_index",
)
_TRIM_EVERY_S = 30.0  # how often an actor returns freed heap memory to the OS
_IMAGE_ROW = -1  # the _total of image rows; a shard's end marker carries its image count


class SegmentError(RuntimeError):
    """The output failed its final validation (rows lost or doubled): it is not complete."""


# --------------------------------------------------------------------------- entry point
def run_segment(
    checkpoint: str | Path,
    inputs: Sequence[str],
    output: str | Path,
    *,
    masks: str | None = None,
    write_png: str | None = None,
    overrides: Iterable[str] = (),
    config: str | Path | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment every image of ``inputs`` with ``checkpoint`` into ``output``; returns the
    summary (also written to ``output/summary.json``).

    Args:
        checkpoint: a segray checkpoint directory (local path or URI).
        inputs: folders (recursive), globs, tar shards and Parquet files; paths or URIs.
        output: the output folder (path or URI); an earlier output of the same settings resumes.
        masks: ground-truth folder, matched to images by relative path or stem: adds metrics.
        write_png: also write each mask as ``write_png/<image id, extension .png>``.
        overrides: ``segment.*`` (and ``data.*`` mask-mapping) ``key=value`` overrides.
        config: a YAML file with a ``segment:`` section (e.g. ``configs/segment_cluster.yaml``),
            applied over the checkpoint's config and under ``overrides``.
        retry_errors: segment the images of earlier ``error`` rows again.
        overwrite: delete an earlier output in ``output`` and start over.
        address: Ray cluster address (default ``$RAY_ADDRESS``, else a local Ray).
        progress: Ray Data progress bars and a few status lines.
    """
    started = time.time()
    from segray.checkpoint import model_id

    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(3).hex()
    ckpt = _local_checkpoint(str(checkpoint))
    cfg = _segment_config(ckpt, overrides, config)
    mask_index = MaskIndex.build(masks) if masks else None
    if mask_index is not None and cfg.data.mask_mode == "auto":
        cfg = _resolve_mask_mode(cfg, mask_index)
    seg = cfg.segment
    precision = actor_precision(seg)  # printed below, recorded in summary.json
    out = _Output(Location.parse(output))
    settings = {
        "model_id": model_id(ckpt),
        **{k: getattr(seg, k) for k in _ROW_SETTINGS},
        "masks": Location.parse(masks).uri if masks else None,
        "mask_mapping": _mask_mapping(cfg) if masks else None,
    }
    shards = plan_inputs(
        list(inputs),
        shard_size=seg.shard_size,
        image_column=seg.image_column,
        id_column=seg.id_column,
    )
    png = Location.parse(write_png) if write_png else None
    # Everything that can refuse the run happens before the output folder is touched.
    previous = out.check(settings, shards, overwrite=overwrite)
    pending, kept = out.resume_plan(shards, retry_errors=retry_errors, fresh=overwrite)
    where = None
    if pending:
        where = ensure_ray(address)
        _check_resources(seg)
    out.prepare(
        previous,
        shards,
        settings,
        overwrite=overwrite,
        run_id=run_id,
        config=cfg,
        inputs=list(inputs),
    )
    _say(
        progress,
        f"segment: {len(shards)} shards, {len(shards) - len(pending)} already done, "
        f"{len(pending)} to segment -> {out.root.uri}",
    )

    totals: dict[str, int] = {}
    pipeline_start = time.time()
    if pending:
        _say(
            progress,
            f"segment: {where}; {seg.concurrency} actor(s) x {seg.cpus_per_actor:g} CPU "
            f"/ {seg.gpus_per_actor:g} GPU, batch {seg.batch_size}",
        )
        _say(progress, f"segment: precision {precision.pop('describe')}")
        totals = _run_pipeline(
            pending,
            kept,
            cfg=cfg,
            checkpoint=Location.parse(checkpoint).uri,
            model=settings["model_id"],
            run_id=run_id,
            out=out,
            masks=mask_index,
            png=png,
            progress=progress,
        )
    pipeline_s = time.time() - pipeline_start
    summary = out.validate_and_summarise(
        shards,
        totals,
        run_id=run_id,
        started=started,
        pipeline_s=pipeline_s,
        extra={
            "checkpoint": Location.parse(checkpoint).uri,
            "model_id": settings["model_id"],
            "inputs": list(inputs),
            "masks": settings["masks"],
            "write_png": png.uri if png else None,
            "ray": where,
            **{k: v for k, v in precision.items() if k != "describe"},
        },
    )
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """The one-line report: ok / error / skipped counts, images/s, where the Parquet is."""
    return (
        f"segmented {summary['processed']} images at {summary['images_per_s']:.1f} images/s: "
        f"{summary['ok']} ok, {summary['error']} error, {summary['skipped']} skipped "
        f"(already done) -> {summary['parquet']}"
    )


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)


# --------------------------------------------------------------------------- config / checkpoint
def _segment_config(
    ckpt: str, overrides: Iterable[str], config: str | Path | None = None
) -> Config:
    """The checkpoint's config with ``segment.*`` / ``data.*`` overrides (the model is fixed),
    from ``config`` (a YAML file) and then ``overrides``."""
    sources = [(str(config), file_overrides(config))] if config is not None else []
    sources.append(("override", parse_overrides(list(overrides))))
    parsed: dict[str, Any] = {}
    for where, items in sources:
        fixed = [k for k in items if not k.startswith("segment.") and k not in _MASK_KEYS]
        if fixed:
            raise ConfigError(
                f"{where}: {fixed[0]}: segment takes segment.* settings and, to map --masks, "
                f"{', '.join(_MASK_KEYS)}; the model and its preprocessing come from the "
                "checkpoint"
            )
        parsed.update(items)
    from segray.checkpoint import load_checkpoint_config

    return apply_overrides(load_checkpoint_config(ckpt), parsed)


def _mask_mapping(cfg: Config) -> dict[str, Any]:
    return {key: getattr(cfg.data, key.split(".", 1)[1]) for key in _MASK_KEYS}


@functools.cache
def _local_checkpoint(checkpoint: str) -> str:
    """A local checkpoint directory: the path itself, or a per-process copy of a URI's files."""
    from segray.checkpoint import CONFIG_FILE, MODEL_FILE

    loc = Location.parse(checkpoint)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        return loc.path
    local = tempfile.mkdtemp(prefix="segray-ckpt-")
    for name in (MODEL_FILE, CONFIG_FILE):
        try:
            Path(local, name).write_bytes(loc.join(name).read_bytes())
        except OSError as e:
            raise InputError(f"checkpoint {checkpoint}: cannot read {name} ({e})") from None
    return local


def _check_resources(seg: SegmentConfig) -> None:
    """Fail now for an actor pool the cluster can never hold, or one that starves the reads."""
    bundle = {"CPU": seg.cpus_per_actor, "GPU": seg.gpus_per_actor}
    check_fits(bundle, seg.concurrency, "segment actor pool (segment.concurrency actors)")
    cpus = ray.cluster_resources().get("CPU", 0.0)
    held = seg.concurrency * seg.cpus_per_actor
    if held + seg.io_cpus > cpus + 1e-9:
        raise ResourceError(
            f"segment actor pool takes {held:g} of the cluster's {cpus:g} CPUs "
            f"(segment.concurrency={seg.concurrency} x segment.cpus_per_actor="
            f"{seg.cpus_per_actor:g}), leaving less than segment.io_cpus={seg.io_cpus:g} for "
            "reading and writing: the pipeline would never read. Lower concurrency or "
            "cpus_per_actor"
        )


# --------------------------------------------------------------------------- output folder
@dataclasses.dataclass
class _Output:
    """The output folder: its layout, the resume state and the final validation."""

    root: Location

    @property
    def parquet(self) -> Location:
        return self.root.join("parquet")

    @property
    def staging(self) -> Location:
        return self.root.join("_staging")

    @property
    def run_json(self) -> Location:
        return self.root.join("_segray", "run.json")

    @property
    def summary(self) -> Location:
        return self.root.join("summary.json")

    def check(
        self, settings: dict[str, Any], shards: list[Shard], *, overwrite: bool
    ) -> dict[str, Any]:
        """Refuse, before touching anything, a folder that is not ours, or one made with other
        settings or other inputs (unless ``overwrite``). Returns its run record ({} if new)."""
        if self.root.info().type == pafs.FileType.File:
            raise InputError(f"--output {self.root.uri} is a file, not a folder")
        names = {e.base_name for e in self.root.list(recursive=False)}
        if names and not self.run_json.exists():
            raise InputError(
                f"--output {self.root.uri} exists and is not a segray segment output "
                "(no _segray/run.json): choose a new or empty folder"
            )
        if not names or overwrite:
            return {}
        previous = json.loads(self.run_json.read_bytes())
        for key, value in settings.items():
            old = previous.get("settings", {}).get(key)
            if old != value:
                raise InputError(
                    f"--output {self.root.uri} was written with {key}={old!r}, this run has "
                    f"{value!r}: resume with the same settings, or pass --overwrite to start over"
                )
        stray = sorted(set(self.committed()) - {s.key for s in shards})
        if stray:
            raise InputError(
                f"--output {self.root.uri} holds {len(stray)} shard(s) that are not part of these "
                f"inputs (e.g. part-{stray[0]}.parquet): the inputs changed since that run. Pass "
                "the same inputs to resume, or --overwrite to start over"
            )
        return previous

    def prepare(
        self,
        previous: dict[str, Any],
        shards: list[Shard],
        settings: dict[str, Any],
        *,
        overwrite: bool,
        run_id: str,
        config: Config,
        inputs: list[str],
    ) -> None:
        """Wipe an earlier output (``overwrite``), remove the summary (written only at the
        end), a killed run's temporaries and superseded staged parts; record this run."""
        if overwrite:
            for name in _OWNED:
                self.root.join(name).delete()
        self.summary.delete()
        keys, committed = {s.key for s in shards}, self.committed()
        for entry in self.staging.list(recursive=False):
            if entry.base_name not in keys or entry.base_name in committed:
                self.staging.join(entry.base_name).delete()  # superseded or foreign parts
        for folder in (self.parquet, self.staging):  # temporaries of a killed run
            for entry in folder.list():
                if entry.type == pafs.FileType.File and entry.base_name.startswith("."):
                    self.root.fs.delete_file(entry.path)
        runs = [
            *previous.get("runs", []),
            {"run_id": run_id, "inputs": inputs, "started": datetime.now(timezone.utc).isoformat()},
        ]
        record = {"segray_version": __version__, "settings": settings, "runs": runs}
        self.run_json.write_atomic(json.dumps(record, indent=2).encode())
        self.root.join("config.yaml").write_atomic(config.to_yaml().encode())

    def committed(self) -> dict[str, pafs.FileInfo]:
        """Committed shard files by shard key."""
        return {
            info.base_name[len("part-") : -len(".parquet")]: info
            for info in part_files(self.parquet)
            if info.base_name.startswith("part-")
        }

    def resume_plan(
        self, shards: list[Shard], *, retry_errors: bool, fresh: bool
    ) -> tuple[list[Shard], dict[str, int]]:
        """The shards with work left (``skip`` = ids already written and kept) and, per shard,
        how many such ids there are. Reads only; ``fresh``: as if the folder were empty."""
        if fresh:
            return list(shards), {}
        committed = self.committed()
        fs = self.root.fs
        pending: list[Shard] = []
        kept: dict[str, int] = {}
        for shard in shards:
            if shard.key in committed:
                if not retry_errors:
                    continue
                done = read_columns(fs, [committed[shard.key].path], ["image_id", "status"])
                keep = _ids(done, lambda status: status == "ok")
                if len(keep) == done.num_rows:
                    continue
            else:
                parts = [i.path for i in part_files(self.staging.join(shard.key))]
                done = read_columns(fs, parts, ["image_id", "status"])
                keep = _ids(done, lambda status: status == "ok" or not retry_errors)
            pending.append(dataclasses.replace(shard, skip=frozenset(keep)))
            kept[shard.key] = len(keep)
        return pending, kept

    def validate_and_summarise(
        self,
        shards: list[Shard],
        totals: dict[str, int],
        *,
        run_id: str,
        started: float,
        pipeline_s: float,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """Check the whole output (every shard committed with its exact image count, ids
        unique, schema), then write ``summary.json`` (atomically, last)."""
        committed = self.committed()
        missing = [s.key for s in shards if s.key not in committed]
        if missing:
            raise SegmentError(f"{len(missing)} shard(s) not committed, e.g. {missing[0]}")
        paths = [committed[s.key].path for s in shards]
        dataset = pads.dataset(paths, filesystem=self.root.fs, format="parquet")
        if not dataset.schema.equals(OUTPUT_SCHEMA):
            raise SegmentError(f"output schema differs from OUTPUT_SCHEMA: {dataset.schema}")
        rows_in = {f.path: f.metadata.num_rows for f in dataset.get_fragments()}
        for shard in shards:
            expected = totals.get(shard.key, shard.known_total)
            rows = rows_in[committed[shard.key].path]
            if expected is not None and rows != expected:
                raise SegmentError(f"shard {shard.key}: {rows} rows, {expected} input images")
        columns = [
            "image_id",
            "status",
            "error",
            "run_id",
            "foreground_fraction",
            "mean_confidence",
            "uncertain_fraction",
            "gt_foreground_fraction",
            *METRIC_COLUMNS,
        ]
        table = dataset.to_table(columns=columns)
        distinct = pc.count_distinct(table.column("image_id")).as_py()
        if distinct != table.num_rows:
            raise SegmentError(f"{table.num_rows} rows but {distinct} distinct image ids")
        summary = _summarise(table, run_id=run_id, pipeline_s=pipeline_s)
        summary.update(
            output=self.root.uri,
            parquet=self.parquet.uri,
            complete=True,
            run_id=run_id,
            segray_version=__version__,
            shards=len(shards),
            wall_time_s=round(time.time() - started, 2),
            **extra,
        )
        self.summary.write_atomic(json.dumps(summary, indent=2).encode())
        # Every shard is committed and checked: whatever is still staged is garbage (a part
        # rewritten by a Ray task retried after a node loss, a killed write's temporary).
        self.staging.delete()
        return summary


def _ids(table: pa.Table, keep_status) -> list[str]:
    ids, status = table.column("image_id").to_pylist(), table.column("status").to_pylist()
    return sorted({i for i, s in zip(ids, status, strict=True) if keep_status(s)})


def _summarise(table: pa.Table, *, run_id: str, pipeline_s: float) -> dict[str, Any]:
    status = table.column("status")
    ok_mask = pc.equal(status, "ok")
    ok = table.filter(ok_mask)
    processed = int(pc.sum(pc.equal(table.column("run_id"), run_id)).as_py() or 0)

    def mean(t: pa.Table, name: str) -> float | None:
        value = pc.mean(t.column(name)).as_py() if t.num_rows else None
        return None if value is None else round(float(value), 6)

    errors = table.filter(pc.invert(ok_mask))
    reasons = Counter(
        (e or "").split(": ", 1)[-1] if (e or "").startswith(i) else (e or "")
        for i, e in zip(
            errors.column("image_id").to_pylist(), errors.column("error").to_pylist(), strict=True
        )
    )
    return {
        "rows": table.num_rows,
        "ok": ok.num_rows,
        "error": table.num_rows - ok.num_rows,
        "processed": processed,
        "skipped": table.num_rows - processed,
        "images_per_s": round(processed / pipeline_s, 3) if pipeline_s > 0 else 0.0,
        "pipeline_s": round(pipeline_s, 2),
        "prediction": {
            k: mean(ok, k) for k in ("foreground_fraction", "mean_confidence", "uncertain_fraction")
        },
        "metrics": metrics_summary(ok),
        "error_reasons": dict(reasons.most_common(20)),
    }


# --------------------------------------------------------------------------- the pipeline
_MASK_CACHE: dict[str, MaskIndex] = {}


def _read_task(shard: Shard, masks_ref: Any) -> Iterable[pa.Table]:
    masks = None
    if masks_ref is not None:  # one copy of the (possibly large) index per worker process
        key = masks_ref.hex()
        if key not in _MASK_CACHE:
            _MASK_CACHE.clear()
            _MASK_CACHE[key] = ray.get(masks_ref)
        masks = _MASK_CACHE[key]
    return read_shard(shard, masks=masks)


class _ShardDatasource(Datasource):
    """One read task per shard, so every row's shard is known and each shard ends with a
    marker row carrying its image count (a tar's count is known only once it is read)."""

    def __init__(self, shards: list[Shard], masks_ref: Any) -> None:
        super().__init__()
        self.shards, self.masks_ref = shards, masks_ref

    def get_name(self) -> str:
        return "ReadShards"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        tasks = []
        for shard in self.shards:
            known = shard.known_total
            rows = None if known is None else known - len(shard.skip) + 1
            meta = BlockMetadata(
                num_rows=rows, size_bytes=None, exec_stats=None, input_files=[shard.source]
            )
            read = functools.partial(_read_task, shard, self.masks_ref)
            tasks.append(ReadTask(read, meta, schema=READ_SCHEMA))
        return tasks


DECODED_SCHEMA = pa.schema(
    [
        ("_shard", pa.string()),
        ("_total", pa.int64()),
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("pixels", pa.large_binary()),
        ("gt_mask", pa.string()),
        ("gt_target", pa.large_binary()),
        ("gt_error", pa.string()),
    ]
)
# The actor's output: the output columns plus the shard bookkeeping.
_STAGE_SCHEMA = pa.schema(
    [("_shard", pa.string()), ("_total", pa.int64())]
    + [f.with_nullable(True) for f in OUTPUT_SCHEMA]
)


def _decode(
    batch: pa.Table, *, channels: int, max_pixels: int, mapper: MaskMapper | None
) -> pa.Table:
    """Raw bytes -> (H, W, channels) uint8 pixels (bytes + size); ground truth -> classes."""
    out = []
    for row in batch.to_pylist():
        rec = {k: row.get(k) for k in DECODED_SCHEMA.names}
        rec["error"] = row["read_error"]
        if row["_total"] == _IMAGE_ROW and rec["error"] is None:
            try:
                image = decode_image(
                    row["data"], channels=channels, max_pixels=max_pixels, name=row["image_id"]
                )
                rec["height"], rec["width"] = image.shape[:2]
                rec["pixels"] = image.tobytes()
            except ImageError as e:
                rec["error"] = str(e)
            if rec["pixels"] is not None and row["gt_mask"] is not None and mapper is not None:
                rec["gt_target"], rec["gt_error"] = _target(row, image.shape[:2], mapper)
        out.append(rec)
    return pa.Table.from_pylist(out, schema=DECODED_SCHEMA)


def _resolve_mask_mode(cfg: Config, index: MaskIndex, sample: int = 32) -> Config:
    """``data.mask_mode: auto`` (a checkpoint from before modes were resolved at training, or an
    override) chosen from the values of up to ``sample`` ground-truth masks spread over the
    folder, as training chooses it. Masks with only background (a legitimate evaluation set)
    map 0 to background whatever the encoding."""
    from segray.data.inspect import resolve_mask_mode

    rels = sorted(index.by_rel.values())
    picked = rels[:: max(1, len(rels) // sample)][:sample]
    histogram: Counter[int] = Counter()
    for rel in picked:
        path = posixpath.join(index.root.path, rel)
        try:
            with index.root.fs.open_input_file(path) as f:
                values, counts = np.unique(read_mask(f.read(), name=path), return_counts=True)
        except (ImageError, OSError):
            continue  # an unreadable mask becomes that image's gt_error later
        histogram.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    if set(histogram) == {0}:  # (0/255 masks with ignore_index 255 are binary: not here)
        return apply_overrides(cfg, {"data.mask_mode": "index"})
    _, mode, updates, _, error = resolve_mask_mode(cfg.data, dict(histogram))
    if error or mode is None:
        raise InputError(f"--masks {index.root.uri}: {error or 'cannot choose data.mask_mode'}")
    return apply_overrides(cfg, updates)


def _target(row: dict[str, Any], shape: tuple[int, ...], mapper: MaskMapper):
    name = row["gt_mask"]
    if row["gt_data"] is None:
        return None, f"{name}: cannot read ground-truth mask"
    try:
        raw = read_mask(row["gt_data"], name=name)
        target = mapper(raw, key=Path(name).stem, name=name)
    except ImageError as e:
        return None, str(e)
    if target.shape != tuple(shape):
        return None, (
            f"{name}: ground truth is {target.shape[1]}x{target.shape[0]}, the image "
            f"{shape[1]}x{shape[0]}"
        )
    return target.astype(np.int32).tobytes(), None


@functools.cache
def _libc() -> Any:
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def _release_memory() -> None:
    """Give freed heap pages back to the OS. Images of many sizes leave glibc's heap
    fragmented, and an actor that lives for millions of images would otherwise creep up
    (measured: +300 MB over 1,200 mixed-size images). Trimming after every batch costs ~15%
    throughput (the pages are faulted in again), so the actor trims every _TRIM_EVERY_S."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class _SegmentActor:
    """One model per actor: decoded images in, output rows (mask PNG + statistics) out."""

    def __init__(self, *, checkpoint: str, config: dict[str, Any], model: str, run_id: str) -> None:
        import torch

        from segray.checkpoint import load_model
        from segray.predict import Segmenter

        cfg = Config.from_dict(config)
        seg = cfg.segment
        torch.set_num_threads(max(1, int(seg.cpus_per_actor + 0.5)))  # the CPUs it reserved
        cuda = seg.gpus_per_actor > 0 and torch.cuda.is_available()
        device = "cuda" if cuda else "cpu"
        net, _ = load_model(_local_checkpoint(checkpoint), device)
        self.segmenter = Segmenter(
            net,
            cfg,
            device=device,
            model_id=model,
            precision=seg.precision,
            channels_last=seg.channels_last,
            compile=seg.compile,
        )
        self.cfg, self.model, self.run_id = cfg, model, run_id
        self.channels = self.segmenter.channels
        self.labels = max(2, self.segmenter.num_classes)
        self.trimmed = time.monotonic()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        now = datetime.now(timezone.utc)
        out = [self._row(r, now) for r in rows]
        todo = [i for i, r in enumerate(rows) if r["_total"] == _IMAGE_ROW and r["error"] is None]
        images = [
            np.frombuffer(rows[i]["pixels"], np.uint8).reshape(
                rows[i]["height"], rows[i]["width"], self.channels
            )
            for i in todo
        ]
        probas = self.segmenter.predict_batch_proba(images) if images else []
        for i, proba in zip(todo, probas, strict=True):
            out[i].update(self._result(rows[i], proba))
        table = pa.Table.from_pylist(out, schema=_STAGE_SCHEMA)
        if time.monotonic() - self.trimmed > _TRIM_EVERY_S:
            del rows, images, probas
            _release_memory()
            self.trimmed = time.monotonic()
        return table

    def _row(self, r: dict[str, Any], now: datetime) -> dict[str, Any]:
        row = empty_row()
        row.update(
            _shard=r["_shard"],
            _total=r["_total"],
            image_id=r["image_id"],
            source=r["source"],
            model_id=self.model,
            segray_version=__version__,
            run_id=self.run_id,
            segmented_at=now,
        )
        if r["_total"] == _IMAGE_ROW and r["error"] is not None:
            row.update(status="error", error=r["error"])
        return row

    def _result(self, r: dict[str, Any], proba: np.ndarray) -> dict[str, Any]:
        seg = self.cfg.segment
        mask = self.segmenter.mask_from_proba(proba)
        res: dict[str, Any] = {
            "status": "ok",
            "width": r["width"],
            "height": r["height"],
            "mask_png": encode_mask_png(mask, self.labels),
            "gt_mask": r["gt_mask"],
            "gt_error": r["gt_error"],
            **mask_stats(proba, mask, low=seg.uncertain_low, high=seg.uncertain_high),
        }
        if r["gt_target"] is not None:
            target = np.frombuffer(r["gt_target"], np.int32).reshape(mask.shape)
            try:
                res.update(
                    ground_truth_metrics(
                        mask,
                        target,
                        num_classes=self.cfg.num_classes,
                        ignore_index=self.cfg.data.ignore_index,
                    )
                )
            except ValueError as e:
                res["gt_error"] = f"{r['gt_mask']}: {e}"
        return res


def _write_staged(
    batch: pa.Table, *, staging: Location, png: Location | None, run_id: str
) -> pa.Table:
    """Stage the rows of each shard in this batch as one Parquet part (hidden temporary +
    rename; the name depends only on the run and the ids, so a retried task overwrites it);
    mirror ok masks to ``png``. Returns per part: shard, file, rows; per end marker: the total."""
    meta: dict[str, list[Any]] = {"shard": [], "file": [], "rows": [], "total": []}
    totals = batch.column("_total").to_pylist()
    shards = batch.column("_shard").to_pylist()
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (key, total) in enumerate(zip(shards, totals, strict=True)):
        if total == _IMAGE_ROW:
            groups[key].append(i)
        else:
            for k, v in (("shard", key), ("file", ""), ("rows", 0), ("total", total)):
                meta[k].append(v)
    for key, rows in groups.items():
        part = batch.take(pa.array(rows, type=pa.int64())).select(OUTPUT_SCHEMA.names)
        part = part.cast(OUTPUT_SCHEMA)
        if png is not None:
            _mirror_png(part, png)
        ids = "\n".join(sorted(part.column("image_id").to_pylist()))
        name = f"{run_id}-{hashlib.sha1(ids.encode()).hexdigest()[:16]}.parquet"
        staging.join(key, name).write_atomic(part)
        for k, v in (
            ("shard", key),
            ("file", name),
            ("rows", part.num_rows),
            ("total", _IMAGE_ROW),
        ):
            meta[k].append(v)
    return pa.table(
        meta,
        schema=pa.schema(
            [
                ("shard", pa.string()),
                ("file", pa.string()),
                ("rows", pa.int64()),
                ("total", pa.int64()),
            ]
        ),
    )


def _mirror_png(part: pa.Table, png: Location) -> None:
    ok = part.filter(pc.equal(part.column("status"), "ok"))
    for image_id, data in zip(
        ok.column("image_id").to_pylist(), ok.column("mask_png").to_pylist(), strict=True
    ):
        parts = [p for p in image_id.split("/") if p not in ("", ".", "..")]
        parts[-1] = os.path.splitext(parts[-1])[0] + ".png"
        png.join(*parts).write_atomic(data)


@ray.remote
def _commit_task(key: str, expected: int, parquet: Location, staging: Location) -> dict[str, Any]:
    return commit_shard(key, expected, parquet=parquet, staging=staging)


class _Commits:
    """Driver-side bookkeeping: rows staged per shard; commit a shard once it is complete."""

    def __init__(self, shards: list[Shard], kept: dict[str, int], out: _Output, io_cpus: float):
        self.expected: dict[str, int | None] = {s.key: s.known_total for s in shards}
        self.kept = kept
        self.staged: dict[str, dict[str, int]] = defaultdict(dict)
        self.out, self.io_cpus = out, io_cpus
        self.inflight: dict[Any, str] = {}
        self.again: set[str] = set()
        self.done: dict[str, int] = {}  # key -> rows committed
        self.failed: dict[str, str] = {}

    def add(self, meta: pa.Table) -> None:
        for key, file, rows, total in zip(
            *(meta.column(c).to_pylist() for c in ("shard", "file", "rows", "total")), strict=True
        ):
            if total != _IMAGE_ROW:
                self.expected[key] = total
            else:
                self.staged[key][file] = rows
            self._maybe_commit(key)
        self._collect(timeout=0)

    def _complete(self, key: str) -> bool:
        expected = self.expected[key]
        return (
            expected is not None
            and self.kept.get(key, 0) + sum(self.staged[key].values()) >= expected
        )

    def _maybe_commit(self, key: str, *, force: bool = False) -> None:
        if key in self.done:
            return
        if key in self.inflight.values():
            self.again.add(key)
        elif force or self._complete(key):
            ref = _commit_task.options(num_cpus=self.io_cpus).remote(
                key, self.expected[key], self.out.parquet, self.out.staging
            )
            self.inflight[ref] = key

    def _collect(self, timeout: float | None) -> None:
        while self.inflight:
            ready, _ = ray.wait(
                list(self.inflight),
                num_returns=len(self.inflight) if timeout is None else 1,
                timeout=timeout,
            )
            if not ready:
                return
            for ref in ready:
                key = self.inflight.pop(ref)
                result = ray.get(ref)
                if result["committed"]:
                    self.done[key] = result["rows"]
                    self.failed.pop(key, None)
                else:
                    self.failed[key] = result["reason"]
                    if key in self.again:
                        self.again.discard(key)
                        self._maybe_commit(key)

    def finish(self) -> dict[str, int]:
        """After the stream: commit what is left, wait for every commit; raise if any shard
        is short of rows (which would mean images were lost)."""
        self._collect(timeout=None)
        unknown = [k for k, v in self.expected.items() if v is None]
        if unknown:
            raise SegmentError(f"shard {unknown[0]} never reported its image count")
        for key in self.expected:
            if key not in self.done:
                self._maybe_commit(key, force=True)
        self._collect(timeout=None)
        short = [k for k in self.expected if k not in self.done]
        if short:
            raise SegmentError(f"{len(short)} shard(s) incomplete: {self.failed.get(short[0])}")
        return {k: v for k, v in self.expected.items() if v is not None}


def _run_pipeline(
    pending: list[Shard],
    kept: dict[str, int],
    *,
    cfg: Config,
    checkpoint: str,
    model: str,
    run_id: str,
    out: _Output,
    masks: MaskIndex | None,
    png: Location | None,
    progress: bool,
) -> dict[str, int]:
    """Stream the pending shards through Ray Data; returns each shard's image count."""
    context = DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, progress
    try:
        return _stream(
            pending,
            kept,
            cfg=cfg,
            out=out,
            masks=masks,
            png=png,
            actor_kwargs={
                "checkpoint": checkpoint,
                "config": cfg.to_dict(),
                "model": model,
                "run_id": run_id,
            },
        )
    finally:
        context.enable_progress_bars = bars


def actor_precision(seg: SegmentConfig) -> dict[str, Any]:
    """The precision the actors resolve (`segray.precision`), as the driver sees their device.

    A GPU actor's ``auto`` is decided on its GPU (bf16 where native, else fp16); a driver
    without that GPU says so instead of guessing.
    """
    import torch

    from segray.precision import resolve_precision

    device = "cuda" if seg.gpus_per_actor > 0 else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return {
            "precision": seg.precision,
            "channels_last": seg.channels_last,
            "describe": f"{seg.precision} on the actors' GPUs (auto: bf16 where native, else fp16)",
        }
    resolved = resolve_precision(seg.precision, device, seg.channels_last)
    return {**resolved.record(), "describe": f"{resolved.describe()} on the actors' {device}"}


def actor_options(seg: SegmentConfig) -> dict[str, Any]:
    """Ray options of the inference actors: pool size, resources, environment."""
    return {
        "compute": ActorPoolStrategy(size=seg.concurrency),
        "num_cpus": seg.cpus_per_actor,
        "num_gpus": seg.gpus_per_actor,
        "runtime_env": {"env_vars": heap_env(seg.heap_reuse) | onednn_cache_env(seg.onednn_cache)},
    }


def _stream(
    pending: list[Shard],
    kept: dict[str, int],
    *,
    cfg: Config,
    out: _Output,
    masks: MaskIndex | None,
    png: Location | None,
    actor_kwargs: dict[str, Any],
) -> dict[str, int]:
    seg = cfg.segment
    masks_ref = ray.put(masks) if masks is not None else None
    ds = ray.data.read_datasource(
        _ShardDatasource(pending, masks_ref),
        num_cpus=seg.io_cpus,
        override_num_blocks=len(pending),  # one read task per shard; no re-splitting
    )
    ds = ds.map_batches(
        _decode,
        batch_format="pyarrow",
        batch_size=seg.batch_size,
        num_cpus=seg.io_cpus,
        fn_kwargs={
            "channels": cfg.model.in_channels,
            "max_pixels": seg.max_pixels,
            "mapper": MaskMapper.from_config(cfg.data) if masks is not None else None,
        },
    )
    ds = ds.map_batches(
        _SegmentActor,
        batch_format="pyarrow",
        batch_size=seg.batch_size,
        fn_constructor_kwargs=actor_kwargs,
        **actor_options(seg),
    )
    ds = ds.map_batches(
        _write_staged,
        batch_format="pyarrow",
        batch_size=seg.shard_size,  # about one Parquet part per shard, few write tasks
        num_cpus=seg.io_cpus,
        fn_kwargs={"staging": out.staging, "png": png, "run_id": actor_kwargs["run_id"]},
    )
    commits = _Commits(pending, kept, out, seg.io_cpus)
    for meta in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        commits.add(meta)
    return commits.finish()
