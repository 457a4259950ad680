"""Where a dataset is read from: ``data.root`` as a local folder, or as a URI on object storage
(``s3://bucket/datasets/membranes``) mirrored into a local cache on each node first.

    root = dataset_root(cfg.data)      # a local Path: the folder itself, or the URI's mirror

Every reader (`segray.data.dataset`, `segray.data.inspect`, ``segray inspect``, ``segray
evaluate``) goes through `dataset_root`, so the config keeps the URI: workers on nodes that
share no filesystem each mirror it themselves. A mirror lives in
``$SEGRAY_CACHE/remote/<sha256 of the URI>/`` (`cache_dir`, default ``~/.cache/segray``) and is
brought up to date by `mirror`:

- ONE listing of the URI gives (relative path, size, mtime) per file; compared with the
  manifest of the last sync, it decides what to download (new or changed files) and what to
  delete (files gone from the URI). Hidden files (`segray.storage.is_hidden`) are skipped.
- Downloads run in a thread pool (8), each through `segray.storage.with_retries`, into
  ``.partial/`` and then renamed into place (a reader never sees half a file).
- The manifest names every file being fetched before the fetch starts, so a sync killed
  midway is finished by the next one; ``.complete`` is written last.
- Callers on one node (the driver and its DDP workers) serialise on an ``fcntl`` lock in the
  mirror folder; a caller that waited while another one completed a sync uses that sync
  instead of listing the URI again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segray.config import DataConfig
from segray.data.folder import DatasetError
from segray.data.synth import synth_params
from segray.storage import Location, is_uri, remove, where, with_retries

__all__ = [
    "Mirror",
    "cache_dir",
    "dataset_root",
    "is_remote",
    "local_root",
    "mirror",
    "mirror_dir",
    "renamed",
    "root_setting",
    "shown_root",
]

DOWNLOAD_WORKERS = 8
_MANIFEST = ".manifest.json"  # {relative path: [size, mtime_ns] or null (fetch begun)}
_COMPLETE = ".complete"  # a fresh token per completed sync, written last
_LOCK = ".lock"
_PARTIAL = ".partial"  # downloads in flight; emptied at the start of each sync
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """segray's cache: ``$SEGRAY_CACHE``, default ``~/.cache/segray``."""
    return Path(os.environ.get("SEGRAY_CACHE") or Path.home() / ".cache" / "segray").expanduser()


def is_remote(root: str | Path | None) -> bool:
    """Whether a ``data.root`` value is a URI to mirror (``s3://...``; not ``file://``):
    `segray.storage.is_uri`."""
    return is_uri(root)


def root_setting(path_or_uri: str | Path) -> str:
    """The ``data.root`` value for a folder or URI a user gave: a URI as it is (each node
    mirrors it itself), a local path absolute (Ray workers run in other folders):
    `segray.storage.where`."""
    return where(path_or_uri)


def local_root(path_or_uri: str | Path) -> Path:
    """The local folder holding a folder's or URI's files: the folder itself (absolute), or
    the URI's mirror, brought up to date (`mirror`)."""
    if is_remote(path_or_uri):
        return mirror(str(path_or_uri)).path
    return Path(root_setting(path_or_uri))


def dataset_root(data_cfg: DataConfig) -> Path:
    """The local folder to read ``data_cfg``'s dataset from: ``data.root`` through
    `local_root`, or, for synthetic data without a root, the cache folder named by a hash of
    the generator parameters. Synthetic data with a URI root is refused: it is generated on
    local disk."""
    root = data_cfg.root
    if root and is_remote(root) and data_cfg.source == "synthetic":
        raise DatasetError(
            f"data.root {root}: synthetic data is generated on local disk, not on object "
            "storage; give a local data.root, or generate it locally, upload it and use "
            "data.source: folder"
        )
    if root:
        return local_root(root)
    if data_cfg.source != "synthetic":  # DataConfig's validator requires a root for these
        raise ValueError(f"data.source {data_cfg.source!r} needs data.root")
    s = data_cfg.synthetic
    params = synth_params(num=s.num, size=s.size, num_classes=len(data_cfg.classes), seed=s.seed)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "synth" / digest


def shown_root(data_cfg: DataConfig, local: Path) -> str:
    """How fingerprints and messages name ``data_cfg``'s dataset read from ``local``: its URI
    (not the mirror in the cache), else the local folder."""
    root = data_cfg.root or ""
    return root.rstrip("/") if is_remote(root) else str(local)


@contextmanager
def renamed(root: str | None, local: Path) -> Iterator[None]:
    """DatasetErrors raised inside name the URI ``root`` instead of its mirror ``local``
    (a no-op for a local root)."""
    try:
        yield
    except DatasetError as e:
        if not is_remote(root) or str(local) not in str(e):
            raise
        raise DatasetError(str(e).replace(str(local), str(root).rstrip("/"))) from None


# --------------------------------------------------------------------------- mirror
@dataclass(frozen=True)
class Mirror:
    """One `mirror` call: the local folder and what the sync did (relative posix paths)."""

    uri: str
    path: Path
    downloaded: tuple[str, ...]
    removed: tuple[str, ...]
    files: int  # files in the mirror now
    reused: bool = False  # another caller on this node completed a sync while this one waited


def mirror_dir(uri: str) -> Path:
    """The cache folder of ``uri``'s mirror: ``cache_dir()/remote/<sha256 of the URI>``."""
    uri = Location.parse(uri).uri
    return cache_dir() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def mirror(uri: str, *, workers: int = DOWNLOAD_WORKERS) -> Mirror:
    """Bring the local mirror of ``uri`` up to date (module docstring) and return it.

    Raises a one-line DatasetError naming the URI when it cannot be listed, holds no
    (non-hidden) files, or a file cannot be downloaded.
    """
    loc = Location.parse(uri)
    if loc.is_local:
        raise ValueError(f"{uri}: a local folder is read in place, not mirrored")
    dest = mirror_dir(loc.uri)
    dest.mkdir(parents=True, exist_ok=True)
    before = _token(dest)
    with _locked(dest / _LOCK):
        token = _token(dest)
        if token is not None and token != before:  # completed while we waited for the lock
            return Mirror(loc.uri, dest, (), (), len(_manifest(dest)), reused=True)
        return _sync(loc, dest, workers)


def _sync(loc: Location, dest: Path, workers: int) -> Mirror:
    """One listing of ``loc``; download what is new or changed, delete what is gone."""
    try:
        listing = with_retries(loc.list_files, what="mirror list")
    except OSError as e:
        raise DatasetError(
            f"data.root {loc.uri}: cannot list it ({' '.join(str(e).split())}); check the URI "
            "and the AWS_* settings"
        ) from None
    remote = {rel: [info.size, info.mtime_ns] for rel, info in listing}
    if not remote:
        raise DatasetError(
            f"data.root {loc.uri}: no files there; check the URI (and AWS_ENDPOINT_URL for "
            "its endpoint), or upload the dataset first"
        )
    for rel in remote:
        if rel.startswith("/") or ".." in PurePosixPath(rel).parts:
            raise DatasetError(f"data.root {loc.uri}: object {rel!r} points outside the folder")
    old = _manifest(dest)
    (dest / _COMPLETE).unlink(missing_ok=True)
    partial = dest / _PARTIAL
    remove(partial)
    partial.mkdir()

    kept = {
        rel: meta
        for rel, meta in remote.items()
        if old.get(rel) == meta and _has_size(dest / rel, meta[0])
    }
    fetch = sorted(rel for rel in remote if rel not in kept)
    gone = sorted(rel for rel in old if rel not in remote)
    # Files about to change are recorded as unknown first: a sync killed midway leaves no
    # file that the next one would trust or forget.
    _write_manifest(dest, {**kept, **dict.fromkeys(fetch), **dict.fromkeys(gone)})
    for rel in gone:
        _remove(dest, rel)
    done: dict[str, list[int | None]] = {}
    try:
        _download(loc, dest, partial, fetch, workers, done, remote)
    finally:
        unknown = dict.fromkeys(rel for rel in fetch if rel not in done)
        _write_manifest(dest, {**kept, **done, **unknown})
    remove(partial)
    (dest / _COMPLETE).write_text(uuid.uuid4().hex)
    if fetch or gone:
        print(
            f"data: mirrored {loc.uri} -> {dest} ({len(fetch)} downloaded, {len(gone)} "
            f"removed, {len(kept)} up to date)",
            flush=True,
        )
    return Mirror(loc.uri, dest, tuple(fetch), tuple(gone), len(remote))


def _download(
    loc: Location,
    dest: Path,
    partial: Path,
    rels: list[str],
    workers: int,
    done: dict[str, list[int | None]],
    remote: dict[str, list[int | None]],
) -> None:
    """Fetch ``rels`` in a pool of ``workers`` threads; each success lands in ``done``."""

    def fetch(rel: str) -> None:
        src, tmp = loc.join(rel), partial / uuid.uuid4().hex

        def copy() -> None:
            with (
                src.fs.open_input_stream(src.path, compression=None) as stream,
                open(tmp, "wb") as out,
            ):
                while chunk := stream.read(_CHUNK):
                    out.write(chunk)

        try:
            with_retries(copy, what="mirror download")
        except OSError as e:
            raise DatasetError(f"{src.uri}: download failed ({' '.join(str(e).split())})") from None
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        done[rel] = remote[rel]

    if not rels:
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="segray-mirror") as pool:
        futures = [pool.submit(fetch, rel) for rel in rels]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()  # after a failure: start no more downloads
        for future in finished:
            future.result()  # the first failure, raised


def _remove(dest: Path, rel: str) -> None:
    """Delete ``dest/rel`` and the folders it leaves empty."""
    path = dest / rel
    path.unlink(missing_ok=True)
    for parent in path.parents:
        if parent == dest:
            break
        try:
            parent.rmdir()
        except OSError:  # not empty (or already gone)
            break


def _has_size(path: Path, size: int | None) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _manifest(dest: Path) -> dict[str, list[int | None] | None]:
    try:
        loaded = json.loads((dest / _MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write_manifest(dest: Path, entries: dict[str, list[int | None] | None]) -> None:
    tmp = dest / f"{_MANIFEST}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(entries, sort_keys=True))
    os.replace(tmp, dest / _MANIFEST)


def _token(dest: Path) -> str | None:
    try:
        return (dest / _COMPLETE).read_text()
    except OSError:
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (between processes and between threads alike)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
