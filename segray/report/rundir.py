"""A segray output folder (local or a URI) and what kind of run it holds, from its files.

    run = RunDir.open("s3://bucket/runs/tune")
    run.kind                 # "search" | "train" | "evaluation" | "segment" | "auto" | "demo"
    run.json("summary.json"); run.parquet("trials.parquet", columns=["trial_id"])

Every read goes through `segray.storage`, so local folders and object stores read alike.
"""

from __future__ import annotations

import json
import posixpath
import sys
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from segray.errors import UserError
from segray.storage import FileType, Location, list_entries, list_files, with_retries

__all__ = ["KINDS", "ReportError", "RunDir", "detect_kind", "log"]

#: Each kind of output and the files that identify it (all must be present).
KINDS: dict[str, tuple[str, ...]] = {
    "auto": ("auto_summary.json",),
    "demo": ("demo_summary.json",),
    "search": ("summary.json", "trials.parquet"),
    "segment": ("summary.json", "_segray/run.json"),
    "evaluation": ("metrics.json", "per_image.parquet"),
    "train": ("config.yaml", "history.parquet"),
}
# The parts of a `segray auto` (or demo) folder, for one that lacks its summary (interrupted
# before the end).
DEMO_PARTS = {"tune": "search", "cv": "search", "eval": "evaluation", "segment": "segment"}


class ReportError(UserError, ValueError):
    """A folder the report cannot be made of; the message says which and what it expects."""


def detect_kind(files: set[str], subfolders: dict[str, set[str]] | None = None) -> str | None:
    """The kind of run whose identifying files (`KINDS`) are all in ``files`` (paths relative
    to the folder); a folder with two or more of tune/ eval/ segment/ holding their own kinds
    is a `segray auto` run. None: not a segray output."""
    for kind, needed in KINDS.items():
        if all(name in files for name in needed):
            return kind
    if not subfolders:
        return None
    parts = [
        sub
        for sub, expected in DEMO_PARTS.items()
        if detect_kind(subfolders.get(sub, set())) == expected
    ]
    return "auto" if len(parts) >= 2 else None


@dataclass(frozen=True)
class RunDir:
    """One output folder: where it is and what kind of run it holds."""

    loc: Location
    kind: str

    @classmethod
    def open(cls, where: str, *, kind: str | None = None) -> RunDir:
        """The folder ``where``, its kind detected from its files unless given.

        Raises:
            ReportError: ``where`` is missing, not a folder, or not a segray output.
        """
        loc = Location.parse(where)
        info = with_retries(loc.info, what="stat run folder")
        if info.type == FileType.NotFound:
            raise ReportError(f"{where}: no such folder")
        if info.type != FileType.Directory:
            raise ReportError(f"{where}: not a folder; give a segray output folder")
        if kind is None:
            kind = detect_kind(_names(loc), {sub: _names(loc.join(sub)) for sub in DEMO_PARTS})
        if kind is None:
            expected = "; ".join(f"{k}: {' + '.join(v)}" for k, v in KINDS.items())
            raise ReportError(
                f"{where}: not a segray output folder (expected the files of one of {expected})"
            )
        return cls(loc, kind)

    @property
    def uri(self) -> str:
        return self.loc.uri

    def sub(self, name: str) -> RunDir | None:
        """A subfolder that is itself a segray output (a demo's parts), or None."""
        loc = self.loc.join(name)
        kind = detect_kind(_names(loc))
        return RunDir(loc, kind) if kind is not None else None

    def exists(self, name: str) -> bool:
        return self.loc.join(name).exists()

    def bytes(self, name: str) -> bytes:
        return with_retries(self.loc.join(name).read_bytes, what="read report input")

    def json(self, name: str) -> Any:
        return json.loads(self.bytes(name))

    def maybe_json(self, name: str) -> Any | None:
        return self.json(name) if self.exists(name) else None

    def parquet(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A Parquet file or folder of files, only ``columns`` read (those that exist)."""
        loc = self.loc.join(name)
        if columns is not None:
            present = set(pq.read_schema(_first_file(loc), filesystem=loc.fs).names)
            columns = [c for c in columns if c in present]
        table = with_retries(
            pq.read_table, loc.path, filesystem=loc.fs, columns=columns, what="read report input"
        )
        return table.to_pandas()

    def files(self, sub: str, suffix: str = "") -> list[str]:
        """Names (relative to ``sub``) of the files under ``sub`` ending in ``suffix``, sorted."""
        rels = list_files(self.loc.join(sub), what="list report input")
        return [rel for rel in rels if rel.endswith(suffix)]


def _names(loc: Location) -> set[str]:
    """Relative paths of the files directly in ``loc`` and in its ``_segray/`` (one listing)."""
    names = set()
    for info in list_entries(loc, what="list run folder"):
        if info.type == FileType.File:
            names.add(posixpath.basename(info.path))
    if "summary.json" in names:
        marker = loc.join("_segray", "run.json")
        if marker.exists():
            names.add("_segray/run.json")
    return names


def _first_file(loc: Location) -> str:
    if with_retries(loc.info, what="stat report input").type == FileType.File:
        return loc.path
    for rel in list_files(loc, what="list report input"):
        if rel.endswith(".parquet"):
            return posixpath.join(loc.path, rel)
    raise ReportError(f"{loc.uri}: no Parquet files")


def log(message: str) -> None:
    """A progress line on stderr (the report's long parts say what they are doing)."""
    print(f"segray report: {message}", file=sys.stderr, flush=True)
