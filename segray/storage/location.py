"""A local path or a URI, resolved to a pyarrow filesystem and path: reads, atomic writes,
listings, walks and globs. The one test of whether a user's path is a URI (`is_uri`)."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from segray.storage.filesystems import filesystem_from_uri, local_filesystem, s3_filesystem
from segray.storage.retry import with_retries

_ATOMIC_RENAME = {"local", "hdfs"}  # pafs type_name of filesystems whose move is atomic


def is_uri(where: str | Path | None) -> bool:
    """Whether a user's path names object storage or another remote filesystem
    (``s3://...``, ``gs://...``); a ``file://`` URI is a local path."""
    text = str(where or "")
    return "://" in text and not text.startswith("file://")


def where(path_or_uri: str | Path) -> str:
    """The canonical string of a user's path or URI: a URI as it is (without a trailing
    '/'), a local path absolute and resolved (Ray workers run in other folders)."""
    text = str(path_or_uri)
    if is_uri(text):
        return text.rstrip("/")
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


def is_hidden(rel: str) -> bool:
    """The one hidden-file rule: some component of the relative path starts with '.' (a ".."
    component, possible in a tar member's name, is not hidden: it names no file here)."""
    return any(part.startswith(".") and part != ".." for part in rel.split("/"))


@dataclass(frozen=True)
class Location:
    """A local path or a URI, resolved: ``fs`` + ``path`` for pyarrow, ``uri`` for people.

    Local paths become absolute here, on the driver: Ray workers run in other directories.
    """

    fs: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def parse(cls, path_or_uri: str | Path) -> Location:
        if not is_uri(path_or_uri):
            local = where(path_or_uri)
            return cls(local_filesystem(), local, local)
        text = str(path_or_uri).rstrip("/")
        url = urlsplit(text)
        if url.scheme in ("s3", "s3a"):
            path = (url.netloc + url.path).rstrip("/")
            return cls(s3_filesystem(url.netloc), path, text)
        fs, path = filesystem_from_uri(text)
        return cls(fs, path.rstrip("/") or path, text)

    def join(self, *parts: str) -> Location:
        if not parts:
            return self
        return Location(
            self.fs, posixpath.join(self.path, *parts), posixpath.join(self.uri, *parts)
        )

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def atomic_rename(self) -> bool:
        """True where ``move`` publishes atomically (local disk, HDFS); False on object stores."""
        return self.fs.type_name in _ATOMIC_RENAME

    def list(self, *, recursive: bool = True) -> list[pafs.FileInfo]:
        """Entries under this folder (none if it does not exist)."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        return self.fs.get_file_info(selector)

    def list_files(self, *, hidden: bool = False) -> list[tuple[str, pafs.FileInfo]]:
        """Regular files under this folder as (relative posix path, info), sorted; paths with a
        component starting with '.' are skipped unless ``hidden``."""
        out = []
        for info in self.list():
            rel = posixpath.relpath(info.path, self.path)
            if info.type == pafs.FileType.File and (hidden or not is_hidden(rel)):
                out.append((rel, info))
        return sorted(out, key=lambda item: item[0])

    def walk(self, *, hidden: bool = False, what: str = "list") -> Iterator[str]:
        """Relative posix paths of the regular files under this folder, in sorted order, hidden
        ones (`is_hidden`) skipped unless ``hidden``. A local folder is walked one directory at
        a time (only one folder's names held at once); other filesystems are listed once
        (pyarrow returns the whole listing), retried under ``what``."""
        if self.is_local:
            yield from _walk_local(self.path, "", hidden)
        else:
            files = with_retries(self.list_files, hidden=hidden, what=what)
            yield from (rel for rel, _ in files)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write(
        self,
        data: bytes | pa.Table,
        *,
        metadata: dict[str, str] | None = None,
        row_group_size: int | None = None,
    ) -> None:
        """Publish a file atomically: readers see the old file or the whole new one, never a part.

        A table is written as zstd Parquet (``row_group_size`` rows a row group; default
        pyarrow's), ``metadata`` merged into its schema's key-value metadata (the footer).
        Local disk / HDFS: hidden ``.<name>.<random>.tmp`` beside the target, then rename.
        Object stores: the bytes are built in memory and sent in one write (one PUT, or a
        multipart upload that is only completed when every part is in).
        """
        if isinstance(data, pa.Table):
            if metadata:
                data = data.replace_schema_metadata({**(data.schema.metadata or {}), **metadata})
        elif metadata:
            raise TypeError(f"{self.uri}: metadata applies to tables only, not to bytes")
        if not self.atomic_rename:
            payload = data if isinstance(data, bytes) else _parquet_bytes(data, row_group_size)
            stream = self.fs.open_output_stream(self.path)
            stream.write(payload)  # all bytes in one call: a failure here uploads nothing
            stream.close()
            return
        parent, name = posixpath.split(self.path)
        self.fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            if isinstance(data, pa.Table):
                pq.write_table(
                    data,
                    tmp,
                    filesystem=self.fs,
                    compression="zstd",
                    row_group_size=row_group_size,
                )
            else:
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
            self.fs.move(tmp, self.path)
        except BaseException:
            Location(self.fs, tmp, tmp).delete()
            raise

    def delete(self) -> None:
        """Delete this file or folder; a missing one is fine."""
        info = self.info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)


def _parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def _walk_local(folder: str, prefix: str, hidden: bool) -> Iterator[str]:
    """`Location.walk` of a local folder: files and sub-folders interleaved by name, so that
    the relative paths come out sorted."""
    files: list[str] = []
    dirs: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith(".") and not hidden:
                    continue
                if e.is_dir():
                    dirs.append(e.name)
                elif e.is_file():
                    files.append(e.name)
    except FileNotFoundError:
        return
    files.sort()
    dirs.sort()
    i = j = 0
    while i < len(files) or j < len(dirs):
        if j >= len(dirs) or (i < len(files) and files[i] < dirs[j] + "/"):
            yield prefix + files[i]
            i += 1
        else:
            yield from _walk_local(os.path.join(folder, dirs[j]), f"{prefix}{dirs[j]}/", hidden)
            j += 1


# --------------------------------------------------------------------------- globs
_GLOB_CHARS = re.compile(r"[*?\[]")


def glob_root(pattern: str) -> tuple[str, str]:
    """Split a glob into the fixed folder to list and the pattern relative to it:
    ``s3://b/data/shard-*.tar`` -> (``s3://b/data``, ``shard-*.tar``); ``*.png`` -> (``.``, ...)."""
    match = _GLOB_CHARS.search(pattern)
    fixed = pattern[: match.start()] if match else pattern
    if "/" not in fixed:
        return ".", pattern
    root = fixed.rsplit("/", 1)[0]
    if root.endswith(":/") or root.endswith(":"):
        raise ValueError(f"glob {pattern}: the bucket or host may not contain * ? [")
    return root or "/", pattern[len(root) + 1 :] if root else pattern[1:]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over '/'-separated relative paths: ``*``, ``?`` and ``[..]`` stay within one
    folder, ``**/`` spans any number of folders (none included)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 1)) > 0:
            body = pattern[i + 1 : end]
            out.append("(?!/)[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob(pattern: str) -> tuple[Location, list[tuple[str, pafs.FileInfo]]]:
    """The files matching a glob: (root folder, sorted (relative path, info)). Lists only the
    fixed prefix; hidden files match only where the pattern itself names a hidden component."""
    root, rel_pattern = glob_root(pattern)
    loc, regex = Location.parse(root), glob_regex(rel_pattern)
    files = loc.list_files(hidden=is_hidden(rel_pattern))
    return loc, [(rel, info) for rel, info in files if regex.match(rel)]
