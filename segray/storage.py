"""One storage layer for every stage: URI -> pyarrow filesystem, atomic publish, listing, globs
and retries. No Ray, no torch: pyarrow and the standard library only.

    out = Location.parse("s3://bucket/run")            # or a local path, file://, gs://, hdfs://
    with_retries(out.join("part-0.parquet").write, table, what="commit", metadata={"k": "v"})
    root, pattern = glob_root("s3://bucket/data/shard-*.tar")   # list s3://bucket/data only

**S3 settings** are the standard AWS ones: ``AWS_ENDPOINT_URL_S3`` (wins) or
``AWS_ENDPOINT_URL`` for MinIO, Ceph or a test server; ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
(with an endpoint: default ``us-east-1``; without: the bucket's own region, looked up once);
credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` as the AWS
SDK reads them. Filesystems are cached per (scheme, endpoint, region, credentials source).

**Ray workers** read these variables in their own process. A local Ray started by the driver
inherits the driver's ``os.environ``; on a cluster the workers see the environment of the
``ray start`` nodes, so set the AWS variables there or pass them in ``runtime_env["env_vars"]``.
A pickled ``S3FileSystem`` keeps its endpoint and region but looks credentials up again.

**Retries** happen at two levels. pyarrow's S3 client retries each HTTP request itself
(``AwsStandardS3RetryStrategy(max_attempts=3)``: throttling, 5xx, dropped connections), so a
single 503 never reaches Python. `with_retries` wraps a whole operation (a write, a listing)
and retries it when pyarrow gave up on a transient error; it counts those retries per
operation in `retry_counts`.
"""

from __future__ import annotations

import atexit
import json
import os
import posixpath
import random
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "POINTER",
    "published",
    "published_file",
    "published_folder",
    "publish_folder",
    "resolve_published",
    "Location",
    "glob",
    "glob_regex",
    "glob_root",
    "is_hidden",
    "is_transient",
    "retry_counts",
    "with_retries",
]

T = TypeVar("T")
_ATOMIC_RENAME = {"local", "hdfs"}  # pafs type_name of filesystems whose move is atomic
_FS_CACHE: dict[tuple[Any, ...], pafs.FileSystem] = {}
_URI_CACHE: dict[tuple[str, ...], tuple[pafs.FileSystem, bool]] = {}  # -> (fs, bucket-style)
_LOCK = threading.Lock()


def forget_filesystems() -> None:
    """Drop the cached filesystems (and collect them now). Registered to run at exit before
    pyarrow shuts its S3 subsystem down: an S3 client destroyed after that, by the interpreter's
    own teardown, can crash the process on its way out."""
    with _LOCK:
        _FS_CACHE.clear()
        _URI_CACHE.clear()
    import gc

    gc.collect()


atexit.register(forget_filesystems)  # after pyarrow.fs's own hook: atexit runs it first


def is_hidden(rel: str) -> bool:
    """The one hidden-file rule: some component of the relative path starts with '.' (a ".."
    component, possible in a tar member's name, is not hidden: it names no file here)."""
    return any(part.startswith(".") and part != ".." for part in rel.split("/"))


# --------------------------------------------------------------------------- filesystems
def _cached(key: tuple[Any, ...], build: Callable[[], pafs.FileSystem]) -> pafs.FileSystem:
    with _LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            fs = _FS_CACHE[key] = build()
        return fs


@lru_cache(maxsize=256)
def _bucket_region(bucket: str) -> str:
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:  # no network or no such bucket: the first real request says which
        return "us-east-1"


def _s3(bucket: str) -> pafs.FileSystem:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if endpoint:
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        scheme, override, region = url.scheme or "https", url.netloc, region or "us-east-1"
    else:
        scheme, override, region = "https", None, region or _bucket_region(bucket)
    creds = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_PROFILE"))
    return _cached(
        ("s3", scheme, override, region, creds),
        lambda: pafs.S3FileSystem(
            endpoint_override=override,
            scheme=scheme,
            region=region,
            # Small writes become one PutObject instead of a multipart upload (3 requests).
            allow_delayed_open=True,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        ),
    )


def _from_uri(text: str) -> tuple[pafs.FileSystem, str]:
    """Any other scheme through ``from_uri``, built once per (scheme, host, query)."""
    url = urlsplit(text)
    key = ("uri", url.scheme, url.netloc, url.query)
    hit = _URI_CACHE.get(key)
    if hit is not None:
        fs, bucket_style = hit
        return fs, (url.netloc + url.path if bucket_style else url.path)
    fs, path = pafs.FileSystem.from_uri(text)
    if path in (url.netloc + url.path, url.path):  # learn how this scheme maps URIs to paths
        _URI_CACHE[key] = (fs, path == url.netloc + url.path)
    return fs, path


# --------------------------------------------------------------------------- locations
@dataclass(frozen=True)
class Location:
    """A local path or a URI, resolved: ``fs`` + ``path`` for pyarrow, ``uri`` for people.

    Local paths become absolute here, on the driver: Ray workers run in other directories.
    """

    fs: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def parse(cls, where: str | Path) -> Location:
        text = str(where)
        if "://" not in text or text.startswith("file://"):
            local = str(Path(text.removeprefix("file://")).expanduser().resolve())
            return cls(_cached(("local",), pafs.LocalFileSystem), local, local)
        text = text.rstrip("/")
        url = urlsplit(text)
        if url.scheme in ("s3", "s3a"):
            path = (url.netloc + url.path).rstrip("/")
            return cls(_s3(url.netloc), path, text)
        fs, path = _from_uri(text)
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
        pyarrow's), ``metadata`` merged into its schema's key-value metadata (the footer). Local disk / HDFS: hidden ``.<name>.<random>.tmp`` beside the
        target, then rename. Object stores: the bytes are built in memory and sent in one
        write (one PUT, or a multipart upload that is only completed when every part is in).
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


# --------------------------------------------------------------------------- retries
_RETRIES: Counter[str] = Counter()
_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_PERMANENT = re.compile(
    r"access.?denied|forbidden|no.?such.?(bucket|key)|does not exist|invalid.?access.?key"
    r"|signature.?does.?not.?match|not.?found",
    re.I,
)
_TRANSIENT = re.compile(
    r"retr(y|ied)|(http status|status code)[: ]*5\d\d|slow.?down|throttl|too many requests"
    r"|connection (reset|closed|refused|aborted)|timeout|timed out|curl|network.?connection"
    r"|service.?unavailable|internal.?(error|failure)|broken pipe|empty reply",
    re.I,
)


def is_transient(e: BaseException) -> bool:
    """Whether retrying the same operation may succeed: throttling, 5xx, dropped or refused
    connections, timeouts. A missing file or bucket or a denied request is not transient."""
    if isinstance(e, _NOT_TRANSIENT):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if not isinstance(e, OSError):
        return False
    text = str(e)
    return not _PERMANENT.search(text) and bool(_TRANSIENT.search(text))


def with_retries(
    fn: Callable[..., T],
    *args: Any,
    what: str,
    attempts: int = 5,
    base_delay: float = 0.2,
    **kwargs: Any,
) -> T:
    """``fn(*args, **kwargs)``, retried up to ``attempts`` times in all with exponential
    backoff and jitter when it fails transiently (`is_transient`); any other error, or the
    last one, is raised. Each retry is counted under ``what`` (see `retry_counts`)."""
    if attempts < 1:
        raise ValueError(f"with_retries({what!r}): attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if attempt + 1 >= attempts or not is_transient(e):
                raise
            with _LOCK:
                _RETRIES[what] += 1
            time.sleep(base_delay * 2**attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def retry_counts() -> dict[str, int]:
    """Retries made by `with_retries` in this process so far: ``what`` -> count."""
    with _LOCK:
        return dict(_RETRIES)


# --------------------------------------------------------------------------- local staging
@contextmanager
def published(where: str | Path) -> Iterator[Path]:
    """A local folder to write an output folder into, for code that writes with plain file
    APIs (plots, reports): ``where`` itself when it is local; else a temporary folder whose
    files are uploaded to ``where`` (one atomic write each, retried) when the block ends
    without an error, and which is removed either way."""
    loc = Location.parse(where)
    if loc.is_local:
        Path(loc.path).mkdir(parents=True, exist_ok=True)
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="segray-out-") as tmp:
        yield Path(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                rel = path.relative_to(tmp).as_posix()
                with_retries(loc.join(rel).write, path.read_bytes(), what="upload")


@contextmanager
def published_folder(where: str | Path) -> Iterator[Path]:
    """As `published`, for a folder that readers must see whole (a checkpoint): a local
    folder to write (not yet existing), then published to ``where`` by `publish_folder` when
    the block ends without an error."""
    with tempfile.TemporaryDirectory(prefix="segray-out-") as tmp:
        local = Path(tmp) / "folder"
        yield local
        publish_folder(local, where)


@contextmanager
def published_file(where: str | Path) -> Iterator[Path]:
    """As `published`, for one file: a local path to write, uploaded to ``where`` after."""
    loc = Location.parse(where)
    if loc.is_local:
        Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="segray-out-") as tmp:
        local = Path(tmp) / posixpath.basename(loc.path)
        yield local
        if local.is_file():
            with_retries(loc.write, local.read_bytes(), what="upload")


# --------------------------------------------------------------------------- folders
POINTER = "current.json"  # in a folder published on an object store: names its version
VERSIONS = "versions"  # ... and the versions live under FOLDER/versions/<id>/
_POINTER_FORMAT = "segray-published-folder"


def publish_folder(src: Path | Location, dst: str | Path | Location) -> str:
    """Publish the folder ``src`` (local, or a `Location`) as ``dst``, replacing what was
    there: a reader sees the previous complete folder or the new one, never a mix of both
    (say one trial's ``model.pt`` with another's ``config.yaml``). Returns ``dst``'s URI.

    Where ``move`` is atomic (local disk, HDFS): a hidden copy beside ``dst``, renamed into
    place. Object stores have no rename: every file goes under a fresh prefix
    ``dst/versions/<id>/``, then the small pointer ``dst/current.json`` that names it, in one
    PUT, last. Readers follow the pointer (`resolve_published`). A publish cut short leaves
    the old pointer, so readers keep the previous version. The version the pointer named
    before is kept (a reader may have resolved it just now); older ones, and files of an
    earlier file-by-file publish, are deleted.
    """
    target = dst if isinstance(dst, Location) else Location.parse(dst)
    source = src if isinstance(src, Location) else Location.parse(src)
    files = [rel for rel, _ in with_retries(source.list_files, what="list folder")]
    if not files:
        raise FileNotFoundError(f"{source.uri}: nothing to publish (no files)")
    if target.atomic_rename:
        _publish_by_rename(source, files, target)
        return target.uri
    previous = _pointed(target)
    version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(4).hex()
    prefix = target.join(VERSIONS, version)
    for rel in files:
        data = with_retries(source.join(rel).read_bytes, what="read")
        with_retries(prefix.join(rel).write, data, what="publish")
    pointer = {"format": _POINTER_FORMAT, "path": f"{VERSIONS}/{version}", "files": files}
    with_retries(target.join(POINTER).write, json.dumps(pointer).encode(), what="publish")
    keep = {POINTER, VERSIONS, f"{VERSIONS}/{version}"}
    if previous is not None:
        keep.add(previous)
    try:  # tidying: a failure here leaves garbage, never a wrong folder
        for info in with_retries(target.list, recursive=False, what="list folder"):
            if info.base_name not in keep:
                Location(target.fs, info.path, info.path).delete()
        for info in with_retries(target.join(VERSIONS).list, recursive=False, what="list"):
            if f"{VERSIONS}/{info.base_name}" not in keep:
                Location(target.fs, info.path, info.path).delete()
    except OSError:
        pass
    return target.uri


def resolve_published(where: str | Path | Location) -> Location:
    """Where the files of the folder ``where`` are: the version its ``current.json`` names
    (a folder that `publish_folder` wrote on an object store), else ``where`` itself."""
    loc = where if isinstance(where, Location) else Location.parse(where)
    path = _pointed(loc)
    return loc if path is None else loc.join(path)


def _pointed(loc: Location) -> str | None:
    """The relative path of the version that ``loc/current.json`` names; None without one."""
    try:
        data = with_retries(loc.join(POINTER).read_bytes, what="read pointer")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        pointer = json.loads(data)
        path = pointer["path"] if pointer.get("format") == _POINTER_FORMAT else None
    except (ValueError, TypeError, AttributeError, KeyError):
        path = None
    parts = path.split("/") if isinstance(path, str) else []
    if len(parts) != 2 or parts[0] != VERSIONS or parts[1] in ("", ".", ".."):
        raise OSError(f"{loc.join(POINTER).uri}: not a folder pointer (expected {VERSIONS}/<id>)")
    return path


def _publish_by_rename(source: Location, files: list[str], target: Location) -> None:
    """`publish_folder` where ``move`` is atomic: copy into a hidden sibling, then swap."""
    parent, name = posixpath.split(target.path)
    fs = target.fs
    fs.create_dir(parent, recursive=True)
    tag = os.urandom(4).hex()
    tmp = Location(fs, posixpath.join(parent, f".{name}-{tag}.tmp"), "")
    old = Location(fs, posixpath.join(parent, f".{name}-{tag}.old"), "")
    try:
        if source.is_local and target.is_local:
            shutil.copytree(source.path, tmp.path, ignore=_hidden_entries)
        else:
            for rel in files:
                data = with_retries(source.join(rel).read_bytes, what="read")
                tmp.join(rel).write(data)
        if target.exists():
            fs.move(target.path, old.path)
        fs.move(tmp.path, target.path)
    except BaseException:
        tmp.delete()
        raise
    old.delete()


def _hidden_entries(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(".")]
