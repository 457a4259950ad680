"""The output folder: staging, the shard commit, resume and the final validation.

    OUTPUT/parquet/part-<shard>.parquet   one file per input shard, complete or absent
    OUTPUT/summary.json                   counts, aggregate metrics, images/s, files not read
                                          (by extension, ignored_files): written last
    OUTPUT/config.yaml                    the resolved config
    OUTPUT/_segray/run.json               model id and settings of the output (resume checks)
    OUTPUT/_staging/<shard>/*.parquet     rows of shards not committed yet (readers skip "_")

A shard's file appears in one atomic step (a single PUT on object stores, a temporary renamed
into place on local disk) and only complete: every image id of the shard exactly once, the
newest row winning. Each committed file carries its shard's statistics in its Parquet footer,
so the final validation reads footers and id columns only, never the masks or metrics again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segray.segment.plan import InputError, Shard
from segray.segment.read import INDEX_FILE
from segray.segment.schema import METRIC_COLUMNS, OUTPUT_SCHEMA
from segray.storage import FileInfo, FileSystem, FileType, Location, list_entries, with_retries
from segray.version import __version__

__all__ = [
    "Output",
    "SegmentError",
    "ShardIncomplete",
    "commit_shard",
    "merge_shard",
    "metrics_summary",
    "shard_stats",
]

_OWNED = ("parquet", "_staging", "_segray", "summary.json", "config.yaml")
_STATS_KEY = b"segray.stats"
_PREDICTION = ("foreground_fraction", "mean_confidence", "uncertain_fraction")
_THREADS = 8  # footers / id columns read at once at validation
_CHUNK = 256  # shards validated at a time


class SegmentError(RuntimeError):
    """The output is not complete: rows lost or doubled, or inputs that could not be read."""


class ShardIncomplete(RuntimeError):
    """A shard whose staged rows do not (yet) cover every image of it."""


# --------------------------------------------------------------------------- the output folder
class Output:
    """The output folder: its layout, what an earlier run left, and the final validation.

    The folder is listed once per run (committed files, and every staged part recursively);
    the listings are kept up to date by this run's own deletions."""

    def __init__(self, root: Location) -> None:
        self.root = root
        self.committed: dict[str, FileInfo] = {}
        self.staged: dict[str, list[FileInfo]] = {}
        self.stray: list[str] = []

    parquet = property(lambda self: self.root.join("parquet"))
    staging = property(lambda self: self.root.join("_staging"))
    run_json = property(lambda self: self.root.join("_segray", "run.json"))
    summary = property(lambda self: self.root.join("summary.json"))

    def scan(self) -> None:
        self.scan_committed()
        self.staged = self._staged()

    def scan_committed(self) -> None:
        self.committed = {
            info.base_name[len("part-") : -len(".parquet")]: info
            for info in _parquet_files(
                with_retries(self.parquet.list, recursive=False, what="list")
            )
            if info.base_name.startswith("part-")
        }

    def _staged(self) -> dict[str, list[FileInfo]]:
        """Staged parts by shard: one recursive listing of the staging area."""
        staged: dict[str, list[FileInfo]] = defaultdict(list)
        prefix = self.staging.path + "/"
        for info in with_retries(self.staging.list, what="list staging"):
            if info.type == FileType.File and info.path.startswith(prefix):
                key, _, name = info.path[len(prefix) :].partition("/")
                if name and "/" not in name:
                    staged[key].append(info)
        return dict(staged)

    def check(
        self, settings: dict[str, Any], keys: set[str], inputs: list[str], *, overwrite: bool
    ) -> dict[str, Any]:
        """Refuse, before touching anything, a folder that is not ours, or one made with other
        settings or other inputs (unless ``overwrite``). Returns its run record ({} if new).

        The same inputs (as given) whose contents changed are fine: shards no longer planned
        (a folder chunk an image was added to or removed from) are replaced by their new
        shards, and only those are segmented."""
        if with_retries(self.root.info, what="stat output").type == FileType.File:
            raise InputError(f"--output {self.root.uri} is a file, not a folder")
        names = {e.base_name for e in list_entries(self.root, what="list output")}
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
        self.scan()
        self.stray = sorted(set(self.committed) - keys)
        runs = previous.get("runs", [])
        if self.stray and (not runs or runs[-1].get("inputs") != inputs):
            raise InputError(
                f"--output {self.root.uri} holds {len(self.stray)} shard(s) that are not part of "
                f"these inputs (e.g. part-{self.stray[0]}.parquet): it was written from other "
                "inputs. Pass the same inputs to resume, or --overwrite to start over"
            )
        return previous

    def prepare(
        self,
        previous: dict[str, Any],
        keys: set[str],
        settings: dict[str, Any],
        *,
        overwrite: bool,
        run_id: str,
        config_yaml: str,
        inputs: list[str],
    ) -> None:
        """Wipe an earlier output (``overwrite``); remove the summary (written only at the end),
        shards the inputs no longer hold, superseded staged parts and a killed run's
        temporaries; record this run."""
        if overwrite:
            for name in _OWNED:
                self.root.join(name).delete()
            self.committed, self.staged, self.stray = {}, {}, []
        self.summary.delete()
        for key in self.stray:
            self.root.fs.delete_file(self.committed.pop(key).path)
        for key in list(self.staged):
            if key not in keys or key in self.committed:
                self.staging.join(key).delete()  # superseded or foreign parts
                del self.staged[key]
        if self.root.atomic_rename:  # temporaries of a killed run (object stores have none)
            for folder in (self.parquet, self.staging):
                for entry in list_entries(folder, recursive=True, what="list output"):
                    if entry.type == FileType.File and entry.base_name.startswith("."):
                        self.root.fs.delete_file(entry.path)
        runs = [
            *previous.get("runs", []),
            {"run_id": run_id, "inputs": inputs, "started": datetime.now(timezone.utc).isoformat()},
        ]
        record = {"segray_version": __version__, "settings": settings, "runs": runs}
        self.run_json.write(json.dumps(record, indent=2).encode())
        self.root.join("config.yaml").write(config_yaml.encode())

    def resume_plan(
        self, shards: Sequence[Shard], *, retry_errors: bool
    ) -> tuple[list[Shard], dict[str, int]]:
        """The shards with work left (``skip`` = ids already written and kept) and, per shard,
        how many such ids there are. Reads only the id and status columns of what exists."""
        fs = self.root.fs
        pending: list[Shard] = []
        kept: dict[str, int] = {}
        for shard in shards:
            if shard.key in self.committed:
                if not retry_errors:
                    continue
                done = read_columns(fs, [self.committed[shard.key].path], ["image_id", "status"])
                keep = _ids(done, lambda status: status == "ok")
                if len(keep) == done.num_rows:
                    continue
            else:
                parts = [i.path for i in _parquet_files(self.staged.get(shard.key, []))]
                done = read_columns(fs, parts, ["image_id", "status"])
                keep = _ids(done, lambda status: status == "ok" or not retry_errors)
            pending.append(dataclasses.replace(shard, skip=frozenset(keep)))
            kept[shard.key] = len(keep)
        return pending, kept

    def validate_and_summarise(
        self, shards: Sequence[Shard], totals: dict[str, int], *, run_id: str
    ) -> dict[str, Any]:
        """Check the whole output from Parquet footers and id columns (every shard committed
        with its exact image count, ids unique, schema), and sum the shards' statistics.

        Footers are read a chunk at a time and reduced to a few numbers at once, so the
        driver's memory does not grow with the number of shards."""
        self.scan_committed()
        missing = [s.key for s in shards if s.key not in self.committed]
        if missing:
            raise SegmentError(f"{len(missing)} shard(s) not committed, e.g. {missing[0]}")
        fs = self.root.fs
        stats: list[dict[str, Any]] = []
        hashes: list[np.ndarray] = []  # of every image id: 8 bytes an image
        paths = [self.committed[s.key].path for s in shards]
        with ThreadPoolExecutor(_THREADS) as pool:
            for start in range(0, len(shards), _CHUNK):
                chunk = shards[start : start + _CHUNK]
                facts = pool.map(lambda p: _facts(fs, p), paths[start : start + _CHUNK])
                for shard, path, fact in zip(chunk, paths[start:], facts):
                    num_rows, schema_ok, raw, ids = fact
                    if not schema_ok:
                        raise SegmentError(f"shard {shard.key}: schema differs from OUTPUT_SCHEMA")
                    expected = totals.get(shard.key, shard.known_total)
                    if expected is not None and num_rows != expected:
                        raise SegmentError(
                            f"shard {shard.key}: {num_rows} rows, {expected} input images"
                        )
                    if raw is None:  # written by an older segray: read its columns once
                        table = with_retries(pq.read_table, path, filesystem=fs, what="read")
                        raw = json.dumps(shard_stats(table))
                    stats.append(json.loads(raw))
                    hashes.append(ids)
        _check_unique_ids(fs, paths, hashes)
        pa.default_memory_pool().release_unused()
        return summarise(stats, run_id=run_id) | {"shards": len(shards)}


@functools.cache
def _output_parquet_schema() -> pq.ParquetSchema:
    sink = pa.BufferOutputStream()
    pq.write_table(OUTPUT_SCHEMA.empty_table(), sink)
    return pq.read_metadata(pa.BufferReader(sink.getvalue())).schema


def _facts(fs: FileSystem, path: str) -> tuple[int, bool, bytes | None, np.ndarray]:
    """One committed file, opened once: its row count, whether its columns are
    OUTPUT_SCHEMA's, its statistics (footer) and 64-bit hashes of its image ids."""
    import pandas as pd

    def read() -> tuple[pq.FileMetaData, pa.ChunkedArray]:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            return parquet.metadata, parquet.read(columns=["image_id"]).column("image_id")

    footer, ids = with_retries(read, what="read footer and ids")
    hashes = pd.util.hash_array(np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object))
    raw = (footer.metadata or {}).get(_STATS_KEY)
    return footer.num_rows, footer.schema.equals(_output_parquet_schema()), raw, hashes


def _check_unique_ids(fs: FileSystem, paths: Sequence[str], hashes: Sequence[np.ndarray]) -> None:
    """Ids are unique within each shard by the commit; across shards, compare their 64-bit
    hashes, and the ids themselves only if two hashes collide."""
    every = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64)
    if not (every[1:] == every[:-1]).any():
        return
    table = read_columns(fs, paths, ["image_id"])
    distinct = pc.count_distinct(table.column("image_id")).as_py()
    if distinct != table.num_rows:
        raise SegmentError(f"{table.num_rows} rows but {distinct} distinct image ids")


def _parquet_files(infos: Sequence[FileInfo]) -> list[FileInfo]:
    """The committed-or-staged Parquet files (hidden temporaries and "_" files left out)."""
    return sorted(
        (
            info
            for info in infos
            if info.type == FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith((".", "_"))
        ),
        key=lambda info: info.path,
    )


def read_columns(fs: FileSystem, paths: Sequence[str], columns: Sequence[str]) -> pa.Table:
    """Some columns of several Parquet files (no mask bytes read)."""
    if not paths:
        return OUTPUT_SCHEMA.empty_table().select(list(columns))
    return pa.concat_tables(
        [
            with_retries(pq.read_table, p, filesystem=fs, columns=list(columns), what="read")
            for p in paths
        ]
    )


def _ids(table: pa.Table, keep_status) -> list[str]:
    ids, status = table.column("image_id").to_pylist(), table.column("status").to_pylist()
    return sorted({i for i, s in zip(ids, status, strict=True) if keep_status(s)})


# --------------------------------------------------------------------------- the commit
def merge_shard(
    tables: Sequence[pa.Table], expected: int, *, shard: str, ids: Sequence[str] | None = None
) -> pa.Table:
    """All rows ever written for one shard -> its final table: one row per image id (the
    newest by ``segmented_at`` then ``run_id``), sorted by id, exactly ``expected`` rows.

    ``ids``: the shard's ids as its last complete read listed them (tar, Parquet with an id
    column): rows of other ids (an archive that once could not be opened) are dropped.
    Duplicates come from Ray task retries and resumed runs; a missing image raises."""
    if tables:
        table = pa.concat_tables(
            [t.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA) for t in tables]
        )
    else:
        table = OUTPUT_SCHEMA.empty_table()
    if ids is not None:
        table = table.filter(pc.is_in(table.column("image_id"), pa.array(ids, pa.string())))
        expected = len(set(ids))
    all_ids = table.column("image_id").to_pylist()
    times = table.column("segmented_at").cast(pa.int64()).to_pylist()
    runs = table.column("run_id").to_pylist()
    order = sorted(range(len(all_ids)), key=lambda i: (all_ids[i], times[i], runs[i]))
    keep = [
        i for j, i in enumerate(order) if j + 1 == len(order) or all_ids[order[j + 1]] != all_ids[i]
    ]
    if len(keep) != expected:
        raise ShardIncomplete(
            f"shard {shard}: {len(keep)} distinct images written, {expected} expected"
        )
    return table.take(pa.array(keep, type=pa.int64()))


# Rows per row group of a committed file: a reader that wants a few masks (`segray report`'s
# galleries) decodes the row groups that hold them, not the whole file.
ROW_GROUP_ROWS = 256


def commit_shard(
    key: str, expected: int, *, parquet: Location, staging: Location
) -> dict[str, Any]:
    """Merge a shard's staged parts (and its earlier committed file, when errors were retried)
    into ``parquet/part-<key>.parquet`` in one atomic write, with the shard's statistics in
    the footer; then remove the staged parts. Every storage call is retried on transient
    errors, and all of it is idempotent: a commit task retried by Ray does the same again.

    Returns ``{"key", "committed": bool, "rows" | "reason"}``; an incomplete shard is not
    written (the caller commits it again when its remaining rows arrive).
    """
    folder = staging.join(key)
    infos = with_retries(folder.list, recursive=False, what="list staging")
    paths = [info.path for info in _parquet_files(infos)]
    final = parquet.join(f"part-{key}.parquet")
    if with_retries(final.exists, what="stat"):
        paths.insert(0, final.path)
    tables = [with_retries(pq.read_table, p, filesystem=parquet.fs, what="read") for p in paths]
    ids = None
    if any(info.base_name == INDEX_FILE for info in infos):
        index = with_retries(
            pq.read_table, folder.join(INDEX_FILE).path, filesystem=parquet.fs, what="read"
        )
        ids = index.column("image_id").to_pylist()
    try:
        table = merge_shard(tables, expected, shard=key, ids=ids)
    except ShardIncomplete as e:
        return {"key": key, "committed": False, "reason": str(e)}
    stats = json.dumps(shard_stats(table))
    with_retries(
        final.write,
        table,
        metadata={_STATS_KEY.decode(): stats},
        row_group_size=ROW_GROUP_ROWS,
        what="commit",
    )
    with_retries(folder.delete, what="delete staging")
    return {"key": key, "committed": True, "rows": table.num_rows}


# --------------------------------------------------------------------------- statistics
def shard_stats(table: pa.Table) -> dict[str, Any]:
    """What the summary needs from one shard's rows, in a few numbers: counts by status and
    run, sums and counts of the prediction and metric columns, error reasons."""
    status = table.column("status")
    ok_mask = pc.equal(status, "ok")
    ok = table.filter(ok_mask)
    scored = ok.filter(pc.is_valid(ok.column("gt_foreground_fraction")))
    errors = table.filter(pc.invert(ok_mask))
    reasons = Counter(
        (e or "").split(": ", 1)[-1] if (e or "").startswith(i) else (e or "")
        for i, e in zip(
            errors.column("image_id").to_pylist(), errors.column("error").to_pylist(), strict=True
        )
    )
    no_fg = pc.sum(pc.equal(scored.column("gt_foreground_fraction"), 0.0)).as_py()
    return {
        "rows": table.num_rows,
        "ok": ok.num_rows,
        "runs": dict(Counter(table.column("run_id").to_pylist())),
        "prediction": {k: _sum_count(ok.column(k)) for k in _PREDICTION},
        "scored": scored.num_rows,
        "no_foreground": int(no_fg or 0),
        "metrics": {k: _sum_count(scored.column(k)) for k in METRIC_COLUMNS},
        "reasons": dict(reasons.most_common(50)),
    }


def _sum_count(column: pa.ChunkedArray) -> list[float]:
    defined = pc.filter(column, pc.invert(pc.is_nan(column))) if len(column) else column
    return [float(pc.sum(defined).as_py() or 0.0), int(pc.count(defined).as_py())]


def _mean(pair: Sequence[float]) -> float | None:
    return round(pair[0] / pair[1], 6) if pair[1] else None


def summarise(stats: Sequence[dict[str, Any]], *, run_id: str) -> dict[str, Any]:
    """summary.json's counts and means from the shards' `shard_stats`."""
    total: dict[str, Any] = {
        "rows": 0,
        "ok": 0,
        "processed": 0,
        "scored": 0,
        "no_foreground": 0,
        "prediction": {k: [0.0, 0] for k in _PREDICTION},
        "metrics": {k: [0.0, 0] for k in METRIC_COLUMNS},
    }
    reasons: Counter[str] = Counter()
    for s in stats:
        for k in ("rows", "ok", "scored", "no_foreground"):
            total[k] += s[k]
        total["processed"] += s["runs"].get(run_id, 0)
        for group in ("prediction", "metrics"):
            for k, (value, n) in s[group].items():
                total[group][k][0] += value
                total[group][k][1] += n
        reasons.update(s["reasons"])
    return {
        "rows": total["rows"],
        "ok": total["ok"],
        "error": total["rows"] - total["ok"],
        "processed": total["processed"],
        "skipped": total["rows"] - total["processed"],
        "prediction": {k: _mean(v) for k, v in total["prediction"].items()},
        "metrics": {
            "images_with_ground_truth": total["scored"],
            "images_without_foreground": total["no_foreground"],
            **{k: _mean(v) for k, v in total["metrics"].items()},
        },
        "error_reasons": dict(reasons.most_common(20)),
    }


def metrics_summary(ok: pa.Table) -> dict[str, Any]:
    """``summary.json``'s ``metrics`` over ok rows: images scored against a ground truth, those
    of them whose ground truth has no foreground, and the mean of every metric column over the
    images where it is defined (null and NaN skipped; null if none)."""
    ok = ok.set_column(
        ok.schema.get_field_index("status"), "status", pa.array(["ok"] * ok.num_rows, pa.string())
    )
    return summarise([shard_stats(ok)], run_id="")["metrics"]
