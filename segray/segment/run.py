"""The Ray Data pipeline that joins the stages, and `run_segment`, its entry point.

    read shards (tasks: raw bytes + stable ids, then an end marker per shard)
      -> decode (tasks)  -> segment (actor pool)  -> stage (tasks: OUTPUT/_staging/<shard>/)
      -> driver: counts the rows staged per shard; a complete shard is committed by a task.

Nothing but per-part counts reaches the driver. Staged part names are a function of the run
and the ids they hold, so a retried Ray task overwrites its own part, and the commit
de-duplicates by image id whatever happened. Rerunning the same command resumes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
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
from segray.segment.output import Output, SegmentError, commit_shard
from segray.segment.plan import Shard, plan_inputs
from segray.segment.read import IMAGE_ROW, READ_SCHEMA, MaskIndex, read_shard
from segray.segment.schema import OUTPUT_SCHEMA
from segray.storage import Location, with_retries
from segray.version import __version__

__all__ = ["run_segment", "summary_line"]

# A commit task that still fails after its own retries is run again by Ray (it is idempotent).
_RETRIES = {"max_retries": 3, "retry_exceptions": [OSError]}


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
    from segray.checkpoint import model_id

    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(3).hex()
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
    out = Output(Location.parse(output))
    png = Location.parse(write_png) if write_png else None
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
    inputs = [str(i) for i in inputs]
    ignored: Counter[str] = Counter()
    shards = list(
        plan_inputs(
            inputs,
            shard_size=seg.shard_size,
            image_column=seg.image_column,
            id_column=seg.id_column,
            ignored=ignored,
        )
    )
    if ignored:
        _say(progress, f"segment: not read (not an image, tar or Parquet): {_counts(ignored)}")
    keys = {s.key for s in shards}
    # Everything that can refuse the run happens before the output folder is touched.
    if mask_index is not None:
        mask_index.check(shards)  # a flat masks folder's name match must be one to one
    previous = out.check(settings, keys, inputs, overwrite=overwrite)
    pending, kept = (
        (shards, {})
        if overwrite or not previous
        else out.resume_plan(shards, retry_errors=retry_errors)
    )
    if pending:
        where = ensure_ray(address)
        check_resources(seg)
        check_shared(out.root, png)
    out.prepare(
        previous,
        keys,
        settings,
        overwrite=overwrite,
        run_id=run_id,
        config_yaml=cfg.to_yaml(),
        inputs=inputs,
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
        runtime = "torch.compile" if seg.compile else "eager"
        precision["compile"] = seg.compile
        _say(progress, f"segment: precision {precision.pop('describe')}, {runtime}")
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
    summary = out.validate_and_summarise(shards, totals, run_id=run_id)
    summary.update(
        images_per_s=round(summary["processed"] / pipeline_s, 3) if pipeline_s > 0 else 0.0,
        pipeline_s=round(pipeline_s, 2),
        output=out.root.uri,
        parquet=out.parquet.uri,
        complete=True,
        run_id=run_id,
        segray_version=__version__,
        wall_time_s=round(time.time() - started, 2),
        checkpoint=Location.parse(checkpoint).uri,
        model_id=settings["model_id"],
        inputs=inputs,
        masks=settings["masks"],
        write_png=png.uri if png else None,
        ray=where,
        **{k: v for k, v in precision.items() if k != "describe"},
        ignored_files=dict(sorted(ignored.items())),
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
    """``3 .jp2, 1 .txt, 2 without an extension``, most frequent first."""
    return ", ".join(
        f"{n} {ext}" if ext else f"{n} without an extension"
        for ext, n in by_extension.most_common()
    )


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


def mask_png_name(image_id: str) -> list[str]:
    """``write_png``'s path parts for an image id: the id's own extension kept and ".png"
    added, each part percent-escaped ("%", and "." / ".." parts), so that distinct ids give
    distinct files that stay inside the folder."""
    parts = []
    for part in image_id.split("/"):
        part = quote(part, safe=" !$&'()+,;=@[]^`{}~-_.")
        parts.append(part.replace(".", "%2E") if part in (".", "..", "") else part)
    parts[-1] += ".png"
    return parts


def _write_staged(
    batch: pa.Table, *, staging: Location, png: Location | None, run_id: str
) -> pa.Table:
    """Stage the rows of each shard in this batch as one Parquet part (one atomic write; the
    name depends only on the run and the ids, so a retried task rewrites the same part);
    mirror ok masks to ``png``. Returns per part: shard, file, rows; per end marker: the total
    and, for a shard that could not be read to its end, why."""
    meta: dict[str, list[Any]] = {k: [] for k in ("shard", "file", "rows", "total", "error")}
    totals = batch.column("_total").to_pylist()
    shards = batch.column("_shard").to_pylist()
    errors = batch.column("error").to_pylist()
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (key, total) in enumerate(zip(shards, totals, strict=True)):
        if total == IMAGE_ROW:
            groups[key].append(i)
        else:
            for k, v in zip(meta, (key, "", 0, total, errors[i]), strict=True):
                meta[k].append(v)
    for key, rows in groups.items():
        part = batch.take(pa.array(rows, type=pa.int64())).select(OUTPUT_SCHEMA.names)
        part = part.cast(OUTPUT_SCHEMA)
        if png is not None:
            _mirror_png(part, png)
        ids = "\n".join(sorted(part.column("image_id").to_pylist()))
        name = f"{run_id}-{hashlib.sha1(ids.encode()).hexdigest()[:16]}.parquet"
        with_retries(staging.join(key, name).write, part, what="stage")
        for k, v in zip(meta, (key, name, part.num_rows, IMAGE_ROW, None), strict=True):
            meta[k].append(v)
    return pa.table(
        meta,
        schema=pa.schema(
            [
                ("shard", pa.string()),
                ("file", pa.string()),
                ("rows", pa.int64()),
                ("total", pa.int64()),
                ("error", pa.string()),
            ]
        ),
    )


def _mirror_png(part: pa.Table, png: Location) -> None:
    ok = part.filter(pc.equal(part.column("status"), "ok"))
    for image_id, data in zip(
        ok.column("image_id").to_pylist(), ok.column("mask_png").to_pylist(), strict=True
    ):
        with_retries(png.join(*mask_png_name(image_id)).write, data, what="write PNG")


class _Commits:
    """Driver-side bookkeeping: rows staged per shard; commit a shard once it is complete."""

    def __init__(self, shards: list[Shard], kept: dict[str, int], out: Output, io_cpus: float):
        self.expected: dict[str, int | None] = {s.key: s.known_total for s in shards}
        self.source = {s.key: s.source for s in shards}
        self.kept = kept
        self.staged: dict[str, dict[str, int]] = defaultdict(dict)
        self.out = out
        self.task = ray.remote(commit_shard).options(num_cpus=io_cpus, **_RETRIES)
        self.inflight: dict[Any, str] = {}
        self.again: set[str] = set()
        self.done: dict[str, int] = {}  # key -> rows committed
        self.failed: dict[str, str] = {}
        self.unreadable: dict[str, str] = {}  # key -> why its archive was not read to the end

    def add(self, meta: pa.Table) -> None:
        columns = (meta.column(c).to_pylist() for c in ("shard", "file", "rows", "total", "error"))
        for key, file, rows, total, error in zip(*columns, strict=True):
            if total == IMAGE_ROW:
                self.staged[key][file] = rows
            elif error is not None:
                self.unreadable[key] = error
            else:
                self.expected[key] = total
            self._maybe_commit(key)
        self._collect(timeout=0)

    def _complete(self, key: str) -> bool:
        expected = self.expected[key]
        return (
            key not in self.unreadable
            and expected is not None
            and self.kept.get(key, 0) + sum(self.staged[key].values()) >= expected
        )

    def _maybe_commit(self, key: str, *, force: bool = False) -> None:
        if key in self.done or key in self.unreadable:
            return
        if key in self.inflight.values():
            self.again.add(key)
        elif force or self._complete(key):
            ref = self.task.remote(
                key, self.expected[key], parquet=self.out.parquet, staging=self.out.staging
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
        """After the stream: commit what is left, wait for every commit; raise if a shard is
        short of rows (which would mean images were lost) or could not be read to its end."""
        self._collect(timeout=None)
        for key in self.expected:
            if key not in self.done and self.expected[key] is not None:
                self._maybe_commit(key, force=True)
        self._collect(timeout=None)
        if self.unreadable:
            reasons = "; ".join(list(self.unreadable.values())[:3])
            raise SegmentError(
                f"{len(self.unreadable)} input archive(s) could not be read to the end ("
                f"{reasons}). Every other shard is committed and the images read so far are "
                "kept: rerun the same command once the files are readable (or leave them out "
                "of the inputs) to finish"
            )
        unknown = [k for k, v in self.expected.items() if v is None]
        if unknown:
            raise SegmentError(f"shard {unknown[0]} never reported its image count")
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
