"""Read shards: raw image bytes with their stable ids, plus ground truth when given.

    for table in read_shard(shard, masks=index, index_to=staging):   # READ_SCHEMA tables
        ...

A shard's image ids come from its listing (folder chunks: the plan; Parquet: row counts from the
footer or the id column; tar: the member headers), never from what a read happened to return.
Transient storage errors are retried with backoff (a tar stream is reopened and read on from the
member it stopped at). When an archive still cannot be read to its end, the shard's end marker
says why and the shard is not committed: the rows read so far are kept, and a rerun finishes it.
Nothing is decoded here; an unreadable file or a null Parquet value becomes an error row.
"""

from __future__ import annotations

import posixpath
import tarfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from segray.segment.plan import InputError, Shard, hidden, kind_of
from segray.storage import FileSystem, FileType, Location, is_transient, with_retries

__all__ = ["IMAGE_ROW", "READ_SCHEMA", "INDEX_FILE", "MaskIndex", "read_shard"]

#: Columns of the rows `read_shard` yields. ``_total`` is IMAGE_ROW on image rows; the one end
#: marker row of a shard (empty image_id) carries the images counted there, and ``read_error``
#: there says why the shard could not be read to its end (null: complete).
READ_SCHEMA = pa.schema(
    [
        ("_shard", pa.string()),
        ("_total", pa.int64()),
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("data", pa.large_binary()),
        ("read_error", pa.string()),
        ("gt_mask", pa.string()),
        ("gt_data", pa.large_binary()),
    ]
)
IMAGE_ROW = -1
INDEX_FILE = "_index.parquet"  # staging/<shard>/: the ids of a shard known only by reading it
ATTEMPTS = 5  # reads of one archive before its shard is left for a rerun
_BACKOFF_S = 0.2


class ShardUnreadable(Exception):
    """An archive that could not be read to its end (after retries); the message says why."""


# --------------------------------------------------------------------------- ground truth
class MaskIndex:
    """Ground-truth masks under a folder, matched to images by their path relative to the input.

    An image ``a/b/c.png`` (its id, or its path inside its input: an id without the input's
    name, a tar or Parquet file's member) takes the mask ``a/b/c.*``; never one in another
    folder. Only a flat masks folder (no subfolders) matches by file stem, ``c.*``, and only
    an image that no other image shares the stem with (`check`). Two masks for one path
    (``c.png`` and ``c.tif``) are refused when the index is built.
    """

    def __init__(self, root: Location, rels: Iterable[str]) -> None:
        self.root = root
        self.by_rel: dict[str, str] = {}
        for rel in sorted(rels):
            noext = posixpath.splitext(rel)[0]
            if noext in self.by_rel:
                raise InputError(
                    f"--masks {root.uri}: {self.by_rel[noext]} and {rel} are both the mask of "
                    f"{noext}: keep one"
                )
            self.by_rel[noext] = rel
        self.flat = all("/" not in key for key in self.by_rel)

    @classmethod
    def build(cls, where: str) -> MaskIndex:
        root = Location.parse(where)
        if root.info().type != FileType.Directory:
            raise InputError(f"--masks {where}: not a folder")
        rels = [
            rel
            for info in with_retries(root.list, what="list masks")
            if info.type == FileType.File
            and kind_of(rel := posixpath.relpath(info.path, root.path)) == "image"
            and not hidden(rel)
        ]
        if not rels:
            raise InputError(f"--masks {where}: no mask images")
        return cls(root, rels)

    def __len__(self) -> int:
        return len(self.by_rel)

    def find(self, image_id: str, rel: str | None = None) -> str | None:
        """The mask (a path in ``root.fs``) of the image ``image_id``, whose path relative to
        its input is ``rel`` (default: the id), or None."""
        for path in dict.fromkeys((image_id, rel or image_id)):
            found = self.by_rel.get(posixpath.splitext(path)[0])
            if found is not None:
                return posixpath.join(self.root.path, found)
        if not self.flat:
            return None
        stem = posixpath.splitext(posixpath.basename(rel or image_id))[0]
        found = self.by_rel.get(stem)
        return posixpath.join(self.root.path, found) if found is not None else None

    def check(self, shards: Iterable[Shard]) -> None:
        """Refuse (one line) a flat masks folder whose stem match would give one mask to two
        images of the planned folder chunks (``a/s2.png`` and ``b/s2.png``)."""
        if not self.flat:
            return
        owner: dict[str, str] = {}
        for shard in shards:
            if shard.kind != "files" or not shard.names:
                continue
            for name in shard.names.split("\n"):
                image_id = f"{shard.id_prefix}/{name}" if shard.id_prefix else name
                key = posixpath.splitext(name)[0]
                if posixpath.splitext(image_id)[0] in self.by_rel or key in self.by_rel:
                    continue  # matched by its path
                stem = posixpath.basename(key)
                if stem not in self.by_rel:
                    continue
                if stem in owner:
                    raise InputError(
                        f"--masks {self.root.uri}: {owner[stem]} and {image_id} would both take "
                        f"{self.by_rel[stem]} (a flat masks folder matches by file name): "
                        "give the masks the images' folder tree"
                    )
                owner[stem] = image_id


# --------------------------------------------------------------------------- reading
def read_shard(
    shard: Shard,
    *,
    masks: MaskIndex | None = None,
    index_to: Location | None = None,
    chunk_rows: int = 64,
    chunk_bytes: int = 64 << 20,
) -> Iterator[pa.Table]:
    """Raw bytes of every image of ``shard`` not in ``shard.skip``, as `READ_SCHEMA` tables of
    at most ``chunk_rows`` rows / about ``chunk_bytes``, then the end marker.

    ``index_to`` (the shard's staging folder): where a shard whose ids are known only by
    reading it (`Shard.needs_index`) records them once read to its end, for the commit.
    """
    rows: list[dict[str, Any]] = []
    size = 0
    ids: list[str] = []
    seen: set[str] = set()
    reader = {"files": _files, "tar": _tar, "parquet": _parquet}[shard.kind]
    incomplete = None
    try:
        for image_id, source, data, error in reader(shard):
            image_id = _unique(image_id, seen)
            ids.append(image_id)
            if image_id in shard.skip:
                continue
            rows.append(_row(shard, image_id, source, data, error, masks))
            size += len(data or b"")
            if len(rows) >= chunk_rows or size >= chunk_bytes:
                yield pa.Table.from_pylist(rows, schema=READ_SCHEMA)
                rows, size = [], 0
    except ShardUnreadable as e:
        incomplete = str(e)
    if incomplete is None and shard.needs_index and index_to is not None:
        index = pa.table({"image_id": pa.array(ids, pa.string())})
        with_retries(index_to.join(INDEX_FILE).write, index, what="write shard index")
    rows.append(
        {
            "_shard": shard.key,
            "_total": len(ids),
            "image_id": "",
            "source": shard.source,
            "read_error": incomplete,
        }
    )
    yield pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def _row(
    shard: Shard,
    image_id: str,
    source: str,
    data: bytes | None,
    error: str | None,
    masks: MaskIndex | None,
) -> dict[str, Any]:
    row = {
        "_shard": shard.key,
        "_total": IMAGE_ROW,
        "image_id": image_id,
        "source": source,
        "data": data,
        "read_error": error,
        "gt_mask": None,
        "gt_data": None,
    }
    if masks is not None and error is None:
        prefix = shard.id_prefix
        rel = image_id[len(prefix) + 1 :] if prefix and image_id.startswith(prefix + "/") else None
        path = masks.find(image_id, rel)
        if path is not None:
            row["gt_mask"] = masks.root.uri + path[len(masks.root.path) :]
            try:
                row["gt_data"] = with_retries(_read_file, masks.root.fs, path, what="read mask")
            except OSError:
                row["gt_data"] = None  # decoding reports it as a gt_error
    return row


def _unique(image_id: str, seen: set[str]) -> str:
    """A repeated id inside one shard (a tar may hold a name twice) gets ``#2``, ``#3``..."""
    out, n = image_id, 1
    while out in seen:
        n += 1
        out = f"{image_id}#{n}"
    seen.add(out)
    return out


def _read_file(fs: FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


_Item = tuple[str, str, bytes | None, str | None]  # image_id, source, bytes, read error


def _files(shard: Shard) -> Iterator[_Item]:
    for image_id, path, source in shard.members():
        if image_id in shard.skip:  # counted, not read
            yield image_id, source, None, None
            continue
        try:
            data = with_retries(_read_file, shard.root.fs, path, what="read image")
        except OSError as e:
            yield image_id, source, None, f"{image_id}: cannot read file ({_one_line(e)})"
        else:
            yield image_id, source, data, None


def _member_name(name: str) -> str:
    """A member's name as an id: "./" and "." parts dropped, ".." kept (it names no file here)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _tar(shard: Shard) -> Iterator[_Item]:
    """Image members (regular files with an image extension, not hidden), in archive order.

    The archive is streamed once; when the stream breaks (a transient storage error) it is
    reopened and read on after the members already returned, up to ATTEMPTS times."""
    done = 0  # image members returned so far
    for attempt in range(1, ATTEMPTS + 1):
        try:
            for item in _tar_pass(shard, already=done):
                yield item
                done += 1
            return
        except (tarfile.TarError, OSError, EOFError) as e:
            where = f"after {done} images" if done else "at its start"
            if attempt == ATTEMPTS or not _retryable(e):
                raise ShardUnreadable(
                    f"{shard.id_prefix}: archive unreadable {where} ({_one_line(e)})"
                ) from None
            time.sleep(_BACKOFF_S * 2 ** (attempt - 1))


def _retryable(e: BaseException) -> bool:
    return isinstance(e, OSError) and not isinstance(e, tarfile.TarError) and is_transient(e)


def _tar_pass(shard: Shard, *, already: int) -> Iterator[_Item]:
    ended = []  # set when the end-of-archive block is read: a cut archive never has it

    class Info(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
            try:
                return super().fromtarfile(tar)
            except tarfile.EOFHeaderError:
                ended.append(True)
                raise

    with shard.root.fs.open_input_stream(shard.root.path) as stream:
        archive = tarfile.open(fileobj=stream, mode="r|*", tarinfo=Info)
        with archive:
            index = 0
            for info in archive:
                name = _member_name(info.name)
                if not info.isfile() or kind_of(name) != "image" or hidden(name):
                    continue
                index += 1
                if index <= already:  # returned before the stream broke: skipped over
                    continue
                image_id = f"{shard.id_prefix}/{name}"
                handle = archive.extractfile(info)
                data = handle.read() if handle is not None else b""
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {name!r} is cut short")
                yield image_id, shard.source, data, None
            if not ended:
                raise tarfile.ReadError("cut short: no end-of-archive block")


def _parquet(shard: Shard) -> Iterator[_Item]:
    """Rows of the image-bytes column (binary, or a struct with a ``bytes`` field), one row
    group at a time; a row group that fails is read again (transient errors) before the shard
    is left for a rerun."""
    try:
        parquet = with_retries(_open_parquet, shard, what="open Parquet")
    except (OSError, pa.ArrowException) as e:
        raise ShardUnreadable(
            f"{shard.id_prefix}: not a readable Parquet file ({_one_line(e)})"
        ) from None
    names = parquet.schema_arrow.names
    wanted = [shard.image_column] + ([shard.id_column] if shard.id_column else [])
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ShardUnreadable(
            f"{shard.id_prefix}: no column {missing[0]!r} (columns: {', '.join(names)}); "
            "set segment.image_column / segment.id_column"
        )
    groups = shard.row_groups
    if groups is None:
        groups = tuple(range(parquet.num_row_groups))
    first = shard.first_row
    for group in groups:
        done = 0  # rows of this group returned so far (skipped over when it is read again)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                row = first
                for batch in parquet.iter_batches(
                    batch_size=64, row_groups=[group], columns=wanted
                ):
                    for item in _parquet_rows(shard, batch, row):
                        row += 1
                        if row - first > done:
                            yield item
                            done += 1
                break
            except (OSError, pa.ArrowException) as e:
                if attempt == ATTEMPTS or not isinstance(e, OSError) or not is_transient(e):
                    raise ShardUnreadable(
                        f"{shard.id_prefix}: unreadable from row {first + done} ({_one_line(e)})"
                    ) from None
                time.sleep(_BACKOFF_S * 2 ** (attempt - 1))
                parquet = with_retries(_open_parquet, shard, what="open Parquet")
        first += done


def _parquet_rows(shard: Shard, batch: pa.RecordBatch, index: int) -> Iterator[_Item]:
    images = batch.column(0)
    if pa.types.is_struct(images.type) and images.type.get_field_index("bytes") >= 0:
        images = images.field("bytes")
    keys = batch.column(1).to_pylist() if shard.id_column else [None] * batch.num_rows
    for value, key in zip(images.to_pylist(), keys, strict=True):
        image_id = f"{shard.id_prefix}/{key if key not in (None, '') else index}"
        index += 1
        if isinstance(value, str):
            value = value.encode()
        if value is None:
            error = f"{image_id}: no image bytes (null in column {shard.image_column!r})"
            yield image_id, shard.source, None, error
        else:
            yield image_id, shard.source, value, None


def _open_parquet(shard: Shard) -> pq.ParquetFile:
    return pq.ParquetFile(shard.root.fs.open_input_file(shard.root.path))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
