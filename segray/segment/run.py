"""The Ray Data pipeline that joins the stages, and `run_segment`, its entry point.

    read shards (tasks: raw bytes + stable ids, then an end marker per shard)
      -> decode (tasks)  -> segment (actor pool)  -> stage (tasks: OUTPUT/_staging/<shard>/)
      -> driver: counts the rows staged per shard; a complete shard is committed by a task.

Nothing but per-part counts reaches the driver (staging and commits: `segray.segment.stage`).
Rerunning the same command resumes.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from ray.data import DataContext
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from segray.cluster import ensure_ray
from segray.config import (
    Config,
    SegmentConfig,
)
from segray.data.masks import MaskMapper
from segray.secrets import scrub
from segray.segment.checks import (
    ROW_SETTINGS,
    check_resources,
    check_shared,
    mask_mapping,
    resolve_mask_mode,
    segment_config,
)
from segray.segment.infer import (
    SegmentActor,
    actor_options,
    actor_precision,
    decode,
    local_checkpoint,
)
from segray.segment.output import Output
from segray.segment.plan import Shard, plan_inputs
from segray.segment.read import READ_SCHEMA, MaskIndex, read_shard
from segray.segment.stage import Commits, write_staged
from segray.storage import Location, with_retries
from segray.version import __version__

__all__ = ["run_segment", "summary_line"]

# A commit task that still fails after its own retries is run again by Ray (it is idempotent).


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
        write_png: also write each ok mask as ``write_png/<image id>.png`` (the image's own
            extension kept, so ``x.jpg`` and ``x.png`` give ``x.jpg.png`` and ``x.png.png``).
        overrides: ``segment.*`` (and ``data.*`` mask-mapping) ``key=value`` overrides.
        config: a YAML file with a ``segment:`` section (e.g. ``configs/segment_cluster.yaml``),
            applied over the checkpoint's config and under ``overrides``.
        retry_errors: segment the images of earlier ``error`` rows again.
        overwrite: delete an earlier output in ``output`` and start over.
        address: Ray cluster address (default ``$RAY_ADDRESS``, else a local Ray).
        progress: Ray Data progress bars and a few status lines.

    Raises:
        InputError, ConfigError, ResourceError: before anything is written.
        SegmentError: the output is not complete (an archive that could not be read to its
            end: everything else is committed, and rerunning the command finishes it).
    """
    started = time.time()
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(3).hex()
    job = _configure(checkpoint, overrides, config, masks, address)
    job.run_id, job.started, job.progress = run_id, started, progress
    job.inputs = [str(i) for i in inputs]
    job.png = Location.parse(write_png) if write_png else None
    out = Output(Location.parse(output))
    shards = _plan(job)
    # Everything that can refuse the run happens before the output folder is touched.
    pending, kept = _open_output(job, out, shards, overwrite, retry_errors, address)
    pipeline_start = time.time()
    totals = _segment(job, out, pending, kept) if pending else {}
    return _finish(job, out, shards, totals, time.time() - pipeline_start)


@dataclass
class _Job:
    """One `run_segment` call: its resolved config and what the summary reports."""

    cfg: Config
    checkpoint: str  # as a URI (a local path absolute)
    masks: MaskIndex | None
    precision: dict[str, Any]  # actor_precision, resolved where the actors run
    where: str | None  # the Ray cluster, once connected
    settings: dict[str, Any]  # what the rows are computed with (Output.check)
    run_id: str = ""
    started: float = 0.0
    progress: bool = True
    inputs: list[str] = field(default_factory=list)
    png: Location | None = None
    ignored: Counter[str] = field(default_factory=Counter)


def _configure(
    checkpoint: str | Path,
    overrides: Iterable[str],
    config: str | Path | None,
    masks: str | None,
    address: str | None,
) -> _Job:
    """The checkpoint's config with the segment settings applied, the ground truth's mask
    mapping resolved, and the precision the actors will run at."""
    from segray.checkpoint import model_id

    ckpt = local_checkpoint(str(checkpoint))
    cfg = segment_config(ckpt, overrides, config)
    mask_index = MaskIndex.build(masks) if masks else None
    if mask_index is not None and cfg.data.mask_mode == "auto":
        cfg = resolve_mask_mode(cfg, mask_index)
    seg = cfg.segment
    precision = actor_precision(seg)  # printed below, recorded in run.json and summary.json
    where = None
    if precision.pop("unresolved", False):  # GPU actors, no GPU here: a GPU worker says
        where = ensure_ray(address)
        check_resources(seg)
        precision = actor_precision(seg, on_worker=True)
    settings = {
        "model_id": model_id(ckpt),
        **{k: getattr(seg, k) for k in ROW_SETTINGS},
        # What the rows were computed with, resolved on this hardware (auto: bf16 where
        # native, ...): a resume elsewhere must not mix bf16 and fp32 rows in one output.
        "precision": precision["precision"],
        "channels_last": precision["channels_last"],
        "compile": seg.compile,
        "masks": Location.parse(masks).uri if masks else None,
        "mask_mapping": mask_mapping(cfg) if masks else None,
    }
    uri = Location.parse(checkpoint).uri
    return _Job(cfg, uri, mask_index, precision, where, settings)


def _plan(job: _Job) -> list[Shard]:
    """The shards of the inputs; files that are no input are counted in ``job.ignored``."""
    seg = job.cfg.segment
    shards = list(
        plan_inputs(
            job.inputs,
            shard_size=seg.shard_size,
            image_column=seg.image_column,
            id_column=seg.id_column,
            ignored=job.ignored,
        )
    )
    if job.ignored:
        _say(
            job.progress,
            f"segment: not read (not an image, tar or Parquet): {_counts(job.ignored)}",
        )
    return shards


def _open_output(
    job: _Job,
    out: Output,
    shards: list[Shard],
    overwrite: bool,
    retry_errors: bool,
    address: str | None,
) -> tuple[list[Shard], dict[str, int]]:
    """Check the run against an earlier output and the cluster, then prepare the output
    folder; returns the shards still to segment and the rows kept of the others."""
    keys = {s.key for s in shards}
    if job.masks is not None:
        job.masks.check(shards)  # a flat masks folder's name match must be one to one
    previous = out.check(job.settings, keys, job.inputs, overwrite=overwrite)
    pending, kept = (
        (shards, {})
        if overwrite or not previous
        else out.resume_plan(shards, retry_errors=retry_errors)
    )
    if pending:
        job.where = ensure_ray(address)
        check_resources(job.cfg.segment)
        check_shared(out.root, job.png)
    out.prepare(
        previous,
        keys,
        job.settings,
        overwrite=overwrite,
        run_id=job.run_id,
        config_yaml=job.cfg.to_yaml(),
        inputs=job.inputs,
    )
    _say(
        job.progress,
        f"segment: {len(shards)} shards, {len(shards) - len(pending)} already done, "
        f"{len(pending)} to segment -> {out.root.uri}",
    )
    return pending, kept


def _segment(job: _Job, out: Output, pending: list[Shard], kept: dict[str, int]) -> dict[str, int]:
    """Run the pipeline over the pending shards; returns each shard's image count."""
    seg = job.cfg.segment
    _say(
        job.progress,
        f"segment: {job.where}; {seg.concurrency} actor(s) x {seg.cpus_per_actor:g} CPU "
        f"/ {seg.gpus_per_actor:g} GPU, batch {seg.batch_size}",
    )
    runtime = "torch.compile" if seg.compile else "eager"
    job.precision["compile"] = seg.compile
    _say(job.progress, f"segment: precision {job.precision.pop('describe')}, {runtime}")
    return _run_pipeline(
        pending,
        kept,
        cfg=job.cfg,
        checkpoint=job.checkpoint,
        model=job.settings["model_id"],
        run_id=job.run_id,
        out=out,
        masks=job.masks,
        png=job.png,
        progress=job.progress,
    )


def _finish(
    job: _Job, out: Output, shards: list[Shard], totals: dict[str, int], pipeline_s: float
) -> dict[str, Any]:
    """Validate the output, write ``summary.json`` and drop the staging folder; returns the
    summary."""
    summary = out.validate_and_summarise(shards, totals, run_id=job.run_id)
    summary.update(
        images_per_s=round(summary["processed"] / pipeline_s, 3) if pipeline_s > 0 else 0.0,
        pipeline_s=round(pipeline_s, 2),
        output=out.root.uri,
        parquet=out.parquet.uri,
        complete=True,
        run_id=job.run_id,
        segray_version=__version__,
        wall_time_s=round(time.time() - job.started, 2),
        checkpoint=job.checkpoint,
        model_id=job.settings["model_id"],
        inputs=job.inputs,
        masks=job.settings["masks"],
        write_png=job.png.uri if job.png else None,
        ray=job.where,
        **{k: v for k, v in job.precision.items() if k != "describe"},
        ignored_files=dict(sorted(job.ignored.items())),
    )
    text = json.dumps(scrub(summary), indent=2)  # inputs' URIs without their credentials
    with_retries(out.summary.write, text.encode(), what="summary")
    # Every shard is committed and checked: whatever is still staged is garbage (a part
    # rewritten by a Ray task retried after a node loss, a killed write's temporary).
    with_retries(out.staging.delete, what="delete staging")
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """The one-line report: ok / error / skipped counts, images/s, where the Parquet is."""
    return (
        f"segmented {summary['processed']} images at {summary['images_per_s']:.1f} images/s: "
        f"{summary['ok']} ok, {summary['error']} error, {summary['skipped']} skipped "
        f"(already done) -> {summary['parquet']}"
    )


def _counts(by_extension: Counter[str]) -> str:
    """``3 .jp2, 1 .txt, 1 without an extension``: most frequent first, ties by name, whatever
    order the files were listed in."""
    ranked = sorted(by_extension.items(), key=lambda kv: (-kv[1], kv[0] == "", kv[0]))
    return ", ".join(f"{n} {ext}" if ext else f"{n} without an extension" for ext, n in ranked)


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)


# --------------------------------------------------------------------------- the pipeline
_MASK_CACHE: dict[str, MaskIndex] = {}


def _read_task(shard: Shard, masks_ref: Any, staging: Location) -> Iterator[pa.Table]:
    masks = None
    if masks_ref is not None:  # one copy of the (possibly large) index per worker process
        key = masks_ref.hex()
        if key not in _MASK_CACHE:
            _MASK_CACHE.clear()
            _MASK_CACHE[key] = ray.get(masks_ref)
        masks = _MASK_CACHE[key]
    return read_shard(shard, masks=masks, index_to=staging.join(shard.key))


class _ShardDatasource(Datasource):
    """One read task per shard, so every row's shard is known and each shard ends with a
    marker row carrying its image count (a tar's count is known only once it is read)."""

    def __init__(self, shards: list[Shard], masks_ref: Any, staging: Location) -> None:
        super().__init__()
        self.shards, self.masks_ref, self.staging = shards, masks_ref, staging

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
            read = functools.partial(_read_task, shard, self.masks_ref, self.staging)
            tasks.append(ReadTask(read, meta, schema=READ_SCHEMA))
        return tasks


def _run_pipeline(
    pending: list[Shard],
    kept: dict[str, int],
    *,
    cfg: Config,
    checkpoint: str,
    model: str,
    run_id: str,
    out: Output,
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


def _decode_memory(seg: SegmentConfig) -> int:
    """Bytes a decode task reserves: a batch of the largest images allowed, as 8-bit RGBA
    (the decoder works in integers), capped so that a task can always be scheduled."""
    return int(min(seg.batch_size * seg.max_pixels * 4, 1 << 30))


def _stream(
    pending: list[Shard],
    kept: dict[str, int],
    *,
    cfg: Config,
    out: Output,
    masks: MaskIndex | None,
    png: Location | None,
    actor_kwargs: dict[str, Any],
) -> dict[str, int]:
    seg = cfg.segment
    masks_ref = ray.put(masks) if masks is not None else None
    ds = ray.data.read_datasource(
        _ShardDatasource(pending, masks_ref, out.staging),
        num_cpus=seg.io_cpus,
        override_num_blocks=len(pending),  # one read task per shard; no re-splitting
    )
    ds = ds.map_batches(
        decode,
        batch_format="pyarrow",
        batch_size=seg.batch_size,
        num_cpus=seg.io_cpus,
        memory=_decode_memory(seg),
        fn_kwargs={
            "channels": cfg.model.in_channels,
            "max_pixels": seg.max_pixels,
            "intensity_range": cfg.data.intensity_range,
            "mapper": MaskMapper.from_config(cfg.data) if masks is not None else None,
        },
    )
    ds = ds.map_batches(
        SegmentActor,
        batch_format="pyarrow",
        batch_size=seg.batch_size,
        fn_constructor_kwargs=actor_kwargs,
        **actor_options(seg),
    )
    ds = ds.map_batches(
        write_staged,
        batch_format="pyarrow",
        batch_size=seg.shard_size,  # about one Parquet part per shard, few write tasks
        num_cpus=seg.io_cpus,
        fn_kwargs={"staging": out.staging, "png": png, "run_id": actor_kwargs["run_id"]},
    )
    commits = Commits(pending, kept, out, seg.io_cpus)
    for meta in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        commits.add(meta)
    return commits.finish()
