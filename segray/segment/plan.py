"""Inputs -> shards: the unit of work, commit and resume of bulk segmentation.

    shards = list(plan_inputs(["photos/", "s3://b/shard-*.tar", "s3://b/t.parquet"], shard_size=256))

Every image gets a stable ``image_id``: its path relative to the input folder (prefixed with the
folder's name when several inputs are given), ``shard.tar/member`` for tar members and
``file.parquet/<id_column value or row index>`` for Parquet rows.

Shard keys are stable, so that a rerun finds its work and adding images redoes little:
- folder images are cut into chunks at content-defined boundaries (an image whose name hashes
  to 0 modulo ``shard_size`` ends a chunk; chunks are capped at 4x ``shard_size``): adding or
  removing an image changes only the chunk it falls in, and a chunk's key is a hash of its
  members;
- a tar file is one shard (its members are known only once it is read);
- a Parquet file is split by row groups (its footer is read here) into shards of about
  ``shard_size`` rows.

The driver holds one compact record per shard (a folder chunk's names as one string), never an
object per image, and walks local folders one directory at a time.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from segray.data.folder import DatasetError
from segray.data.io import IMAGE_EXTENSIONS
from segray.storage import FileType, Location, glob_regex, glob_root, with_retries
from segray.storage import is_hidden as hidden

__all__ = ["InputError", "Shard", "kind_of", "hidden", "plan_inputs"]

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GLOB_CHARS = re.compile(r"[*?\[]")
MAX_CHUNK = 4  # a folder chunk holds at most MAX_CHUNK x shard_size images
_FOOTER_THREADS = 8  # Parquet footers read at once (object stores: one request each)


class InputError(DatasetError):
    """Inputs or an output folder that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Shard:
    """One unit of work: a chunk of folder images, a tar file, or row groups of a Parquet file.

    ``key`` names the committed file and is stable across runs for the same inputs;
    ``skip`` holds the ids a resumed run does not segment again.
    """

    key: str
    kind: Literal["files", "tar", "parquet"]
    root: Location  # files: the folder; tar / parquet: the file
    id_prefix: str = ""  # files: "" or the folder's name; tar / parquet: the file's image id
    names: str = ""  # files: the images' paths relative to root, "\n"-joined
    row_groups: tuple[int, ...] | None = None  # parquet: row groups (None: footer unread)
    first_row: int = 0  # parquet: index in the file of the shard's first row
    rows: int | None = None  # images, where known before reading (files, parquet)
    image_column: str = "image"
    id_column: str | None = None
    skip: frozenset[str] = field(default_factory=frozenset)

    @property
    def source(self) -> str:
        return self.root.uri

    @property
    def known_total(self) -> int | None:
        return self.rows

    @property
    def needs_index(self) -> bool:
        """Whether the shard's image ids are known only by reading it (tar members, Parquet
        ids from a column or an unread footer): its read then records them for the commit."""
        return self.kind == "tar" or (
            self.kind == "parquet" and (self.id_column is not None or self.row_groups is None)
        )

    def members(self) -> Iterator[tuple[str, str, str]]:
        """Folder chunks: (image id, path in root.fs, URI) of every image."""
        for rel in self.names.split("\n") if self.names else ():
            image_id = f"{self.id_prefix}/{rel}" if self.id_prefix else rel
            yield image_id, f"{self.root.path}/{rel}", f"{self.root.uri}/{rel}"


def kind_of(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(_TAR_SUFFIXES):
        return "tar"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    return None


def plan_inputs(
    inputs: Sequence[str],
    *,
    shard_size: int,
    image_column: str = "image",
    id_column: str | None = None,
    ignored: Counter[str] | None = None,
) -> Iterator[Shard]:
    """Shards of every image of ``inputs`` (folders, recursive; globs; tar and Parquet files,
    given or found in folders), in a deterministic order. Hidden files are left out; other
    files that are not images, tar or Parquet are counted in ``ignored`` by their lower-case
    extension (``""`` for none).

    Raises:
        InputError: an input that does not exist or holds nothing to segment, two inputs whose
            image ids would collide, or Parquet files without the image / id column.
    """
    if not inputs:
        raise InputError("no inputs: give at least one folder, glob, tar or Parquet file")
    several = len(inputs) > 1
    namespaces: dict[str, str] = {}  # the id prefix of each input -> the input
    for where in inputs:
        root, rels, is_folder = _expand(str(where), ignored)
        space = posixpath.basename(root.path) if is_folder else None
        prefix = space if several and is_folder else ""
        if space is not None and several:
            _claim(namespaces, space, str(where))
        found = 0
        archives: list[tuple[str, str]] = []
        names: list[str] = []
        for rel in rels:
            kind = kind_of(rel)
            if kind is None:  # a single file given by name
                if ignored is not None:
                    ignored[_extension(rel)] += 1
                continue
            found += 1
            if space is None:  # a single file given: its name is its id
                _claim(namespaces, rel, str(where))
            if kind == "image":
                names.append(rel)
                if len(names) >= MAX_CHUNK * shard_size or _boundary(rel, shard_size):
                    yield _chunk(root, prefix, names)
                    names = []
            else:
                archives.append((rel, kind))
        if names:
            yield _chunk(root, prefix, names)
        if not found:
            raise InputError(
                f"input {where}: no images ({', '.join(IMAGE_EXTENSIONS)}), tar or Parquet files"
            )
        yield from _archives(
            root,
            prefix,
            archives,
            shard_size=shard_size,
            image_column=image_column,
            id_column=id_column,
        )


def _extension(rel: str) -> str:
    """``.jp2`` of ``a/b.JP2``; ``""`` for a name without one."""
    return posixpath.splitext(posixpath.basename(rel))[1].lower()


def _claim(namespaces: dict[str, str], space: str, where: str) -> None:
    """Two inputs must not give the same image ids (e.g. two folders with the same name)."""
    for other, owner in namespaces.items():
        if other == space or other.startswith(space + "/") or space.startswith(other + "/"):
            raise InputError(
                f"inputs {owner} and {where} both give image ids under {space!r}: "
                "pass their common parent folder instead"
            )
    namespaces[space] = where


def _boundary(rel: str, shard_size: int) -> bool:
    return zlib.crc32(rel.encode()) % shard_size == 0


def _chunk(root: Location, prefix: str, names: list[str]) -> Shard:
    joined = "\n".join(names)
    first = f"{prefix}/{names[0]}" if prefix else names[0]
    return Shard(
        key=_key(first, "files", root.uri, prefix, joined),
        kind="files",
        root=root,
        id_prefix=prefix,
        names=joined,
        rows=len(names),
    )


def _archives(
    root: Location,
    prefix: str,
    archives: list[tuple[str, str]],
    *,
    shard_size: int,
    image_column: str,
    id_column: str | None,
) -> Iterator[Shard]:
    parquets = [rel for rel, kind in archives if kind == "parquet"]
    with ThreadPoolExecutor(_FOOTER_THREADS) as pool:
        footers = dict(zip(parquets, pool.map(lambda r: _footer(root.join(r)), parquets)))
    for rel, kind in archives:
        image_id = posixpath.join(prefix, rel) if prefix else rel
        loc = root.join(rel)
        common = {"root": loc, "id_prefix": image_id}
        if kind == "tar":
            yield Shard(key=_key(image_id, "tar", loc.uri), kind="tar", **common)
            continue
        footer = footers[rel]
        if footer is None:  # unreadable now: its read task tries again and reports
            yield Shard(
                key=_key(image_id, "parquet", loc.uri, "?"),
                kind="parquet",
                image_column=image_column,
                id_column=id_column,
                **common,
            )
            continue
        _check_columns(loc, footer.schema.to_arrow_schema(), image_column, id_column)
        for groups, first, rows in _row_group_shards(footer, shard_size):
            yield Shard(
                key=_key(f"{image_id}@{first}", "parquet", loc.uri, *map(str, groups)),
                kind="parquet",
                row_groups=groups,
                first_row=first,
                rows=rows,
                image_column=image_column,
                id_column=id_column,
                **common,
            )


def _footer(loc: Location) -> pq.FileMetaData | None:
    def read() -> pq.FileMetaData:
        with loc.fs.open_input_file(loc.path) as f:
            return pq.read_metadata(f)

    try:
        return with_retries(read, what="read Parquet footer")
    except (OSError, pa.ArrowException):
        return None


def _check_columns(loc: Location, schema: pa.Schema, image: str, ids: str | None) -> None:
    for column, setting in ((image, "segment.image_column"), (ids, "segment.id_column")):
        if column is not None and column not in schema.names:
            raise InputError(
                f"{loc.uri}: no column {column!r} (columns: {', '.join(schema.names)}); "
                f"set {setting}"
            )


def _row_group_shards(
    footer: pq.FileMetaData, shard_size: int
) -> Iterator[tuple[tuple[int, ...], int, int]]:
    """Consecutive row groups of about ``shard_size`` rows: (row groups, first row, rows)."""
    groups: list[int] = []
    first = rows = start = 0
    for i in range(footer.num_row_groups):
        n = footer.row_group(i).num_rows
        if groups and rows + n > shard_size:
            yield tuple(groups), first, rows
            groups, first, rows = [], start, 0
        groups.append(i)
        rows += n
        start += n
    if groups or footer.num_row_groups == 0:
        yield tuple(groups), first, rows


def _expand(
    where: str, ignored: Counter[str] | None = None
) -> tuple[Location, Iterator[str], bool]:
    """An input -> (root, its files' relative paths in a deterministic order, is-a-folder).
    Files it holds (a glob: that match it) of no kind segment reads are counted in
    ``ignored`` by extension."""
    if _GLOB_CHARS.search(where):
        base, pattern = glob_root(where)
        root = Location.parse(base)
        regex = glob_regex(pattern)
        show_hidden = hidden(pattern)

        def matches(rel: str) -> bool:
            return bool(regex.match(rel)) and (show_hidden or not hidden(rel))

        def skip(rel: str) -> None:
            if ignored is not None and matches(rel):
                ignored[_extension(rel)] += 1

        rels = (rel for rel in _walk(root, hidden_too=show_hidden, skip=skip) if matches(rel))
        return root, rels, True
    loc = Location.parse(where)
    info = with_retries(loc.info, what="stat input")
    if info.type == FileType.NotFound:
        raise InputError(f"input {where}: no such file or folder")
    if info.type == FileType.File:
        parent, name = posixpath.split(loc.path)
        return Location(loc.fs, parent, posixpath.dirname(loc.uri)), iter([name]), False
    count = (lambda rel: ignored.update((_extension(rel),))) if ignored is not None else None
    return loc, _walk(loc, skip=count), True


def _walk(
    root: Location, *, hidden_too: bool = False, skip: Callable[[str], None] | None = None
) -> Iterator[str]:
    """Relative paths of the files under ``root`` that could be inputs, sorted
    (`Location.walk`: a local folder one directory at a time); ``skip`` is called with each
    other file's relative path."""
    for rel in root.walk(hidden=hidden_too, what="list input"):
        if kind_of(rel) is not None:
            yield rel
        elif skip is not None:
            skip(rel)


def _key(label: str, *identity: str) -> str:
    """A readable, stable shard name: a slug of ``label`` plus a hash of the identity."""
    digest = hashlib.sha1("\0".join(identity).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[-48:].strip("._") or "shard"
    return f"{slug}-{digest}"
