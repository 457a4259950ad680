"""Publishing output folders whole: readers see the previous complete folder or the new one,
never a mix; and local staging folders for code that writes with plain file APIs."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segray.storage.location import Location
from segray.storage.retry import with_retries

POINTER = "current.json"  # in a folder published on an object store: names its version
VERSIONS = "versions"  # ... and the versions live under FOLDER/versions/<id>/
_POINTER_FORMAT = "segray-published-folder"


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
def published_folder(where: str | Path | Location) -> Iterator[Path]:
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
def publish_folder(src: str | Path | Location, dst: str | Path | Location) -> str:
    """Publish the folder ``src`` (a local path, a URI or a `Location`) as ``dst``, replacing
    what was there: a reader sees the previous complete folder or the new one, never a mix of
    both (say one trial's ``model.pt`` with another's ``config.yaml``). Hidden files are not
    copied. Returns ``dst``'s URI. Every folder that replaces another goes through here.

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
