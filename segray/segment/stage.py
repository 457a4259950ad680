"""Staging and committing: the last stage of the pipeline.

    stage (tasks): a batch of rows -> one Parquet part per shard under OUTPUT/_staging/<shard>/
                   (ok masks mirrored as PNG files on request)
    driver:        counts the rows staged per shard; a complete shard is committed by a task
                   (`segray.segment.output.commit_shard`)

Staged part names are a function of the run and the ids they hold, so a retried Ray task
overwrites its own part, and the commit de-duplicates by image id whatever happened.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import ray

from segray.segment.output import Output, SegmentError, commit_shard
from segray.segment.plan import Shard
from segray.segment.read import IMAGE_ROW
from segray.segment.schema import OUTPUT_SCHEMA
from segray.storage import Location, with_retries

__all__ = ["Commits", "mask_png_name", "write_staged"]

# A commit task that still fails after its own retries is run again by Ray (it is idempotent).
_RETRIES = {"max_retries": 3, "retry_exceptions": [OSError]}


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


def write_staged(
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


class Commits:
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
