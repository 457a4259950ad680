"""Small whole-file helpers over `Location`, every call retried: text and JSON (credentials
scrubbed on the way out), copies of files and folders, listings and removal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segray.storage.filesystems import FileInfo, FileType
from segray.storage.location import Location
from segray.storage.retry import with_retries

Where = str | Path | Location


def _loc(where: Where) -> Location:
    return where if isinstance(where, Location) else Location.parse(where)


def write_text(where: Where, text: str) -> None:
    """Publish a small file atomically (single PUT on object stores), retried."""
    with_retries(_loc(where).write, text.encode(), what="write")


def read_text(where: Where) -> str | None:
    """The text of a file; None when there is no file there."""
    loc = _loc(where)
    if with_retries(loc.info, what="stat").type != FileType.File:
        return None
    return with_retries(loc.read_bytes, what="read").decode()


def write_json(where: Where, data: Any) -> None:
    """Publish ``data`` as JSON, credentials scrubbed (`segray.secrets.scrub`): plan.json,
    summaries and markers are outputs that get shared."""
    from segray.secrets import scrub

    write_text(where, json.dumps(scrub(data), indent=2, default=str))


def read_json(where: Where) -> Any | None:
    """The parsed JSON of a file; None when there is no file there."""
    text = read_text(where)
    return None if text is None else json.loads(text)


def copy_file(src: Where, dst: Where) -> str:
    """Copy one file (read whole, written atomically), each side retried. Returns ``dst``'s URI."""
    target = _loc(dst)
    data = with_retries(_loc(src).read_bytes, what="read")
    with_retries(target.write, data, what="copy")
    return target.uri


def copy_tree(src: Where, dst: Where) -> str:
    """Copy the (not hidden) files of the folder ``src`` into ``dst`` file by file, each one
    written atomically; files already in ``dst`` that ``src`` lacks stay. For a folder that
    readers must see whole, use `publish_folder`. Returns ``dst``'s URI."""
    source, target = _loc(src), _loc(dst)
    for rel in list_files(source, what="list folder"):
        copy_file(source.join(rel), target.join(rel))
    return target.uri


def list_files(where: Where, *, hidden: bool = False, what: str = "list") -> list[str]:
    """Relative posix paths of the regular files under a folder, sorted (none if it does not
    exist); hidden ones skipped unless ``hidden``. One listing, retried."""
    return [rel for rel, _ in with_retries(_loc(where).list_files, hidden=hidden, what=what)]


def list_entries(where: Where, *, recursive: bool = False, what: str = "list") -> list[FileInfo]:
    """The entries of a folder (none if it does not exist): one listing, retried."""
    return with_retries(_loc(where).list, recursive=recursive, what=what)


def subfolders(where: Where, *, what: str = "list") -> list[str]:
    """Names of the folders directly in a folder, sorted (none if it does not exist)."""
    infos = list_entries(where, what=what)
    return sorted(i.base_name for i in infos if i.type == FileType.Directory)


def remove(where: Where) -> None:
    """Delete a file or a folder; a missing one is fine. Retried."""
    with_retries(_loc(where).delete, what="delete")
