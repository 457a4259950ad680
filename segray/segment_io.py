"""The pure parts of bulk segmentation (no Ray): output schema, input plan, shard reading,
per-image results and the shard commit. `segray.segment` wires them into a Ray Data pipeline.

    shards = plan_inputs(["data/images", "s3://bucket/shard-0000.tar"], shard_size=256)
    for rows in read_shard(shards[0]):            # raw bytes + stable ids, then an end marker
        ...
    table = merge_shard(tables, expected=n)       # dedup by image_id, newest row wins; exact count

Every image gets a stable ``image_id``: its path relative to the input folder (prefixed with
the folder's name when several inputs are given), ``shard.tar/member`` for tar members and
``file.parquet/<id_column value or row index>`` for Parquet rows. Paths are local paths or any
URI pyarrow's filesystems read (``s3://``, ``gs://``, ``hdfs://``).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from segray.data.folder import DatasetError
from segray.data.io import IMAGE_EXTENSIONS

__all__ = [
    "OUTPUT_SCHEMA",
    "InputError",
    "Location",
    "MaskIndex",
    "Member",
    "Shard",
    "encode_mask_png",
    "ground_truth_metrics",
    "mask_stats",
    "merge_shard",
    "metrics_summary",
    "plan_inputs",
    "read_shard",
    "schema_markdown",
]


class InputError(DatasetError):
    """Inputs or an output folder that cannot be used; the message says what to change."""


# --------------------------------------------------------------------------- output schema
_COLUMNS: list[tuple[str, pa.DataType, bool, str]] = [
    (
        "image_id",
        pa.string(),
        False,
        "stable id: path relative to the input folder, "
        "`shard.tar/member`, or `file.parquet/<id or row index>`",
    ),
    ("source", pa.string(), False, "the file that holds the image (image, tar or Parquet file)"),
    ("status", pa.string(), False, "`ok` or `error`"),
    ("error", pa.string(), True, "one-line reason when status is `error`, else null"),
    ("width", pa.int32(), True, "image width in pixels (after EXIF rotation); null on error"),
    ("height", pa.int32(), True, "image height in pixels; null on error"),
    (
        "mask_png",
        pa.binary(),
        True,
        "predicted mask at the image's resolution: 8-bit palette "
        "PNG whose pixel values are class indices (binary: 0 / 1); null on error",
    ),
    (
        "foreground_fraction",
        pa.float32(),
        True,
        "fraction of pixels predicted as any class but background",
    ),
    (
        "class_fraction",
        pa.list_(pa.float32()),
        True,
        "fraction of pixels per class 0..K-1 (binary: [background, foreground])",
    ),
    ("mean_confidence", pa.float32(), True, "mean over pixels of the winning class's probability"),
    (
        "uncertain_fraction",
        pa.float32(),
        True,
        "fraction of pixels whose (winning) probability "
        "lies in [segment.uncertain_low, segment.uncertain_high] (default 0.3-0.7)",
    ),
    (
        "num_components",
        pa.int32(),
        True,
        "8-connected components of the predicted mask, summed over the non-background classes",
    ),
    (
        "gt_mask",
        pa.string(),
        True,
        "`--masks`: the ground-truth file matched to this image, else null",
    ),
    (
        "gt_error",
        pa.string(),
        True,
        "why a matched ground-truth mask gave no metrics (unreadable, "
        "wrong size, bad values), else null",
    ),
    (
        "gt_foreground_fraction",
        pa.float32(),
        True,
        "`--masks`: fraction of the ground truth's valid pixels of any class but background "
        "(0: an image without foreground); null without metrics",
    ),
    (
        "dice",
        pa.float32(),
        True,
        "`--masks`: Dice of the prediction (binary: foreground; multi-class: mean over "
        "classes 1..K-1 present in the ground truth or the prediction); null without ground "
        "truth, and where undefined: no foreground in either (never a vacuous 1.0)",
    ),
    ("iou", pa.float32(), True, "`--masks`: IoU, as dice"),
    (
        "precision",
        pa.float32(),
        True,
        "`--masks`: precision, as dice; null where nothing was predicted as foreground",
    ),
    (
        "recall",
        pa.float32(),
        True,
        "`--masks`: recall, as dice; null where the ground truth has no foreground",
    ),
    ("accuracy", pa.float32(), True, "`--masks`: pixel accuracy"),
    (
        "model_id",
        pa.string(),
        False,
        "content hash of the checkpoint (`segray.checkpoint.model_id`)",
    ),
    ("segray_version", pa.string(), False, "segray version that wrote the row"),
    (
        "run_id",
        pa.string(),
        False,
        "the `segray segment` run that segmented the image "
        "(a resumed run keeps earlier rows and their run ids)",
    ),
    ("segmented_at", pa.timestamp("ms", tz="UTC"), False, "when the image was segmented"),
]

#: The schema of every Parquet file of a segmentation output (``OUTPUT/parquet/*.parquet``).
OUTPUT_SCHEMA = pa.schema(
    [pa.field(n, t, nullable, metadata={"description": d}) for n, t, nullable, d in _COLUMNS]
)
METRIC_COLUMNS = ("dice", "iou", "precision", "recall", "accuracy")


def schema_markdown() -> str:
    """The README's table of `OUTPUT_SCHEMA` (column, type, description)."""
    lines = ["| column | type | description |", "| --- | --- | --- |"]
    for name, dtype, nullable, desc in _COLUMNS:
        kind = _type_name(dtype) + ("" if nullable else ", not null")
        lines.append(f"| `{name}` | {kind} | {desc} |")
    return "\n".join(lines)


def _type_name(dtype: pa.DataType) -> str:
    if pa.types.is_list(dtype):
        return f"list<{_type_name(dtype.value_type)}>"
    return {"float": "float32", "double": "float64"}.get(str(dtype), str(dtype))


def empty_row() -> dict[str, Any]:
    """A row of `OUTPUT_SCHEMA` with every column null (the caller fills it)."""
    return dict.fromkeys(OUTPUT_SCHEMA.names)


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
        if "://" in text and not text.startswith("file://"):
            fs, path = pafs.FileSystem.from_uri(text)
            return cls(fs, path.rstrip("/"), text.rstrip("/"))
        local = str(Path(text.removeprefix("file://")).expanduser().resolve())
        return cls(pafs.LocalFileSystem(), local, local)

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts) if parts else self.path
        uri = posixpath.join(self.uri, *parts) if parts else self.uri
        return Location(self.fs, path, uri)

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def list(self, *, recursive: bool = True) -> list[pafs.FileInfo]:
        """Entries under this folder (none if it does not exist)."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        return self.fs.get_file_info(selector)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_atomic(self, data: bytes | pa.Table) -> None:
        """Write a file (bytes, or a table as Parquet) via a hidden temporary + rename."""
        parent, name = posixpath.split(self.path)
        self.fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".{name}.{_token()}.tmp")
        if isinstance(data, pa.Table):
            pq.write_table(data, tmp, filesystem=self.fs, compression="zstd")
        else:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
        self.fs.move(tmp, self.path)

    def delete(self) -> None:
        info = self.info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)


def _token() -> str:
    import os

    return os.urandom(4).hex()


# --------------------------------------------------------------------------- the input plan
@dataclass(frozen=True)
class Member:
    """One image file of a folder shard: its id, its path in the shard's fs, its URI."""

    image_id: str
    path: str
    source: str


@dataclass(frozen=True)
class Shard:
    """The unit of work, commit and resume: a chunk of folder images, a tar or a Parquet file.

    ``key`` is stable across runs for the same inputs (it names the committed file);
    ``skip`` holds the ids a resumed run does not segment again.
    """

    key: str
    kind: Literal["files", "tar", "parquet"]
    fs: pafs.FileSystem
    source: str  # display URI: the folder, tar or Parquet file
    path: str = ""  # tar / parquet: the file in fs
    id_prefix: str = ""  # tar / parquet: "shard.tar", "dir/file.parquet"
    members: tuple[Member, ...] = ()  # files
    image_column: str = "image"
    id_column: str | None = None
    skip: frozenset[str] = field(default_factory=frozenset)

    @property
    def known_total(self) -> int | None:
        """Images in the shard when known before reading it (folder chunks)."""
        return len(self.members) if self.kind == "files" else None


_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GLOB_CHARS = re.compile(r"[*?\[]")


def _kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(_TAR_SUFFIXES):
        return "tar"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    return None


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over '/'-separated relative paths: ``*`` and ``?`` stay within one folder,
    ``**/`` spans any number of folders."""
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
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _expand(where: str) -> tuple[Location, list[str], bool]:
    """An input -> (root folder, relative paths of its files, is-a-folder-or-glob)."""
    match = _GLOB_CHARS.search(where)
    if match:
        base = where[: match.start()].rsplit("/", 1)[0] if "/" in where[: match.start()] else "."
        pattern = where[len(base) + 1 :] if base != "." else where
        root = Location.parse(base)
        regex = _glob_regex(pattern)
        rels = [
            rel
            for info in root.list()
            if info.type == pafs.FileType.File
            and regex.match(rel := posixpath.relpath(info.path, root.path))
        ]
        return root, rels, True
    loc = Location.parse(where)
    info = loc.info()
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input {where}: no such file or folder")
    if info.type == pafs.FileType.File:
        parent, name = posixpath.split(loc.path)
        return Location(loc.fs, parent, posixpath.dirname(loc.uri)), [name], False
    rels = [
        rel
        for entry in loc.list()
        if entry.type == pafs.FileType.File
        and not _hidden(rel := posixpath.relpath(entry.path, loc.path))
    ]
    return loc, rels, True


def _key(label: str, *identity: str) -> str:
    """A readable, stable shard name: a slug of ``label`` plus a hash of the identity."""
    digest = hashlib.sha1("\0".join(identity).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[-48:].strip("._") or "shard"
    return f"{slug}-{digest}"


def plan_inputs(
    inputs: Sequence[str],
    *,
    shard_size: int,
    image_column: str = "image",
    id_column: str | None = None,
) -> list[Shard]:
    """Expand folders (recursive; hidden files skipped), globs, tar and Parquet files into
    shards, in a deterministic order. Folder images are chunked ``shard_size`` at a time; tar
    and Parquet files found in a folder or glob are shards of their own."""
    if not inputs:
        raise InputError("no inputs: give at least one folder, glob, tar or Parquet file")
    several = len(inputs) > 1
    shards: list[Shard] = []
    namespace: dict[str, str] = {}  # id or archive prefix -> the input it came from
    for where in inputs:
        root, rels, is_folder = _expand(str(where))
        prefix = posixpath.basename(root.path) if several and is_folder else ""
        images: list[Member] = []
        found = 0
        for rel in sorted(rels):
            kind = _kind(rel)
            if kind is None:
                continue
            found += 1
            image_id = posixpath.join(prefix, rel) if prefix else rel
            if image_id in namespace:
                raise InputError(
                    f"two inputs give the same image id {image_id!r} ({namespace[image_id]} and "
                    f"{where}): pass their common parent folder instead"
                )
            namespace[image_id] = str(where)
            path = posixpath.join(root.path, rel)
            if kind == "image":
                images.append(Member(image_id, path, posixpath.join(root.uri, rel)))
                continue
            shards.append(
                Shard(
                    key=_key(image_id, kind, root.uri, rel, image_id),
                    kind=kind,  # type: ignore[arg-type]
                    fs=root.fs,
                    source=posixpath.join(root.uri, rel),
                    path=path,
                    id_prefix=image_id,
                    image_column=image_column,
                    id_column=id_column,
                )
            )
        if not found:
            raise InputError(
                f"input {where}: no images ({', '.join(IMAGE_EXTENSIONS)}), tar or Parquet files"
            )
        for start in range(0, len(images), shard_size):
            chunk = tuple(images[start : start + shard_size])
            shards.append(
                Shard(
                    key=_key(chunk[0].image_id, "files", root.uri, *(m.image_id for m in chunk)),
                    kind="files",
                    fs=root.fs,
                    source=root.uri,
                    members=chunk,
                )
            )
    return shards


# --------------------------------------------------------------------------- ground truth
class MaskIndex:
    """Ground-truth masks under a folder, matched to image ids by relative path or stem.

    For ``a/b/c.png`` the candidates are the mask paths (without extension) ``a/b/c``, ``b/c``,
    ``c``, then the file stem ``c`` anywhere under the folder when only one mask has it.
    """

    def __init__(self, root: Location, rels: Iterable[str]) -> None:
        self.root = root
        self.by_rel: dict[str, str] = {}
        stems: dict[str, list[str]] = {}
        for rel in sorted(rels):
            noext = posixpath.splitext(rel)[0]
            self.by_rel.setdefault(noext, rel)
            stems.setdefault(posixpath.basename(noext), []).append(rel)
        self.by_stem = {stem: paths[0] for stem, paths in stems.items() if len(paths) == 1}

    @classmethod
    def build(cls, where: str) -> MaskIndex:
        root = Location.parse(where)
        if root.info().type != pafs.FileType.Directory:
            raise InputError(f"--masks {where}: not a folder")
        rels = [
            rel
            for info in root.list()
            if info.type == pafs.FileType.File
            and _kind(rel := posixpath.relpath(info.path, root.path)) == "image"
            and not _hidden(rel)
        ]
        if not rels:
            raise InputError(f"--masks {where}: no mask images ({', '.join(IMAGE_EXTENSIONS)})")
        return cls(root, rels)

    def __len__(self) -> int:
        return len(self.by_rel)

    def find(self, image_id: str) -> str | None:
        """The matched mask's path (in ``root.fs``), or None."""
        parts = posixpath.splitext(image_id)[0].split("/")
        for i in range(len(parts)):
            rel = self.by_rel.get("/".join(parts[i:]))
            if rel is not None:
                return posixpath.join(self.root.path, rel)
        rel = self.by_stem.get(parts[-1])
        return posixpath.join(self.root.path, rel) if rel is not None else None


# --------------------------------------------------------------------------- reading shards
#: Columns of the rows `read_shard` yields. ``_total`` is -1 on image rows; the one end marker
#: row of a shard (empty image_id) carries the shard's image count there.
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


def read_shard(
    shard: Shard,
    *,
    masks: MaskIndex | None = None,
    chunk_rows: int = 64,
    chunk_bytes: int = 64 << 20,
) -> Iterator[pa.Table]:
    """Raw bytes of every image of ``shard`` not in ``shard.skip``, as `READ_SCHEMA` tables of
    at most ``chunk_rows`` rows / about ``chunk_bytes``, then an end marker with the total.

    Nothing is decoded here, and nothing raises on bad data: an unreadable file, archive member
    or Parquet value becomes a row with ``read_error`` set.
    """
    rows: list[dict[str, Any]] = []
    size = 0
    total = 0
    reader = {"files": _files, "tar": _tar, "parquet": _parquet}[shard.kind]
    seen: set[str] = set()
    for image_id, source, data, error in reader(shard):
        image_id = _unique(image_id, seen)
        total += 1
        if image_id in shard.skip:
            continue
        row = {
            "_shard": shard.key,
            "_total": -1,
            "image_id": image_id,
            "source": source,
            "data": data,
            "read_error": error,
            "gt_mask": None,
            "gt_data": None,
        }
        if masks is not None and error is None:
            path = masks.find(image_id)
            if path is not None:
                row["gt_mask"] = masks.root.uri + path[len(masks.root.path) :]
                try:
                    with masks.root.fs.open_input_stream(path) as f:
                        row["gt_data"] = f.read()
                except OSError:
                    row["gt_data"] = None  # decoding reports it as a gt_error
        rows.append(row)
        size += len(data or b"")
        if len(rows) >= chunk_rows or size >= chunk_bytes:
            yield pa.Table.from_pylist(rows, schema=READ_SCHEMA)
            rows, size = [], 0
    rows.append({"_shard": shard.key, "_total": total, "image_id": "", "source": shard.source})
    yield pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def _unique(image_id: str, seen: set[str]) -> str:
    """A repeated id inside one shard (a tar may hold a name twice) gets ``#2``, ``#3``..."""
    out, n = image_id, 1
    while out in seen:
        n += 1
        out = f"{image_id}#{n}"
    seen.add(out)
    return out


_Item = tuple[str, str, bytes | None, str | None]  # image_id, source, bytes, read error


def _files(shard: Shard) -> Iterator[_Item]:
    for m in shard.members:
        if m.image_id in shard.skip:  # not read at all
            yield m.image_id, m.source, None, None
            continue
        try:
            with shard.fs.open_input_stream(m.path) as f:
                yield m.image_id, m.source, f.read(), None
        except OSError as e:
            yield m.image_id, m.source, None, f"{m.image_id}: cannot read file ({_one_line(e)})"


def _tar(shard: Shard) -> Iterator[_Item]:
    """Regular members with an image extension, streamed (the archive is read once, in order)."""
    last = None
    try:
        stream = shard.fs.open_input_stream(shard.path)
    except OSError as e:
        yield (
            shard.id_prefix,
            shard.source,
            None,
            f"{shard.id_prefix}: cannot read archive ({_one_line(e)})",
        )
        return
    with stream:
        try:
            archive = tarfile.open(fileobj=stream, mode="r|*")
        except (tarfile.TarError, OSError, EOFError) as e:
            yield (
                shard.id_prefix,
                shard.source,
                None,
                f"{shard.id_prefix}: not a readable tar archive ({_one_line(e)})",
            )
            return
        with archive:
            members = iter(archive)
            while True:
                try:
                    info = next(members)
                except StopIteration:
                    return
                except (tarfile.TarError, OSError, EOFError) as e:
                    where = f"after member {last!r}" if last else "at its start"
                    image_id = f"{shard.id_prefix}/<unreadable {where}>"
                    yield (
                        image_id,
                        shard.source,
                        None,
                        f"{shard.id_prefix}: archive unreadable {where} ({_one_line(e)})",
                    )
                    return
                name = info.name.removeprefix("./")
                if not info.isfile() or _kind(name) != "image" or _hidden(name):
                    continue
                last = name
                image_id = f"{shard.id_prefix}/{name}"
                try:
                    handle = archive.extractfile(info)
                    data = handle.read() if handle is not None else b""
                except (tarfile.TarError, OSError, EOFError) as e:
                    yield (
                        image_id,
                        shard.source,
                        None,
                        f"{image_id}: cannot read archive member ({_one_line(e)})",
                    )
                    return  # the stream is broken past this point
                yield image_id, shard.source, data, None


def _parquet(shard: Shard) -> Iterator[_Item]:
    """Rows of the image-bytes column (binary, or a struct with a ``bytes`` field)."""
    try:
        handle = shard.fs.open_input_file(shard.path)
        parquet = pq.ParquetFile(handle)
    except (OSError, pa.ArrowException) as e:
        yield (
            shard.id_prefix,
            shard.source,
            None,
            f"{shard.id_prefix}: not a readable Parquet file ({_one_line(e)})",
        )
        return
    names = parquet.schema_arrow.names
    wanted = [shard.image_column] + ([shard.id_column] if shard.id_column else [])
    missing = [c for c in wanted if c not in names]
    if missing:
        yield (
            shard.id_prefix,
            shard.source,
            None,
            (
                f"{shard.id_prefix}: no column {missing[0]!r} (columns: {', '.join(names)}); "
                "set segment.image_column / segment.id_column"
            ),
        )
        return
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=64, columns=wanted):
            images = batch.column(0)
            if pa.types.is_struct(images.type) and images.type.get_field_index("bytes") >= 0:
                images = images.field("bytes")
            ids = batch.column(1).to_pylist() if shard.id_column else [None] * len(batch)
            for value, key in zip(images.to_pylist(), ids, strict=True):
                image_id = f"{shard.id_prefix}/{key if key not in (None, '') else index}"
                index += 1
                if isinstance(value, str):
                    value = value.encode()
                if value is None:
                    error = f"{image_id}: no image bytes (null in column {shard.image_column!r})"
                    yield image_id, shard.source, None, error
                else:
                    yield image_id, shard.source, value, None
    except (OSError, pa.ArrowException) as e:
        image_id = f"{shard.id_prefix}/<unreadable after row {index}>"
        yield (
            image_id,
            shard.source,
            None,
            f"{shard.id_prefix}: unreadable after row {index} ({_one_line(e)})",
        )
    finally:
        handle.close()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --------------------------------------------------------------------------- per-image results
_PALETTE = [
    (0, 0, 0),
    (255, 255, 255),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]


def encode_mask_png(mask: np.ndarray, num_labels: int) -> bytes:
    """(H, W) uint8 class indices -> palette PNG: the pixel values stay the class indices
    (``np.asarray(Image.open(...))`` returns them) while viewers show colours."""
    height, width = mask.shape
    img = Image.frombytes(
        "P", (width, height), np.ascontiguousarray(mask, dtype=np.uint8).tobytes()
    )
    colours = [_PALETTE[i] if i < len(_PALETTE) else _colour(i) for i in range(max(2, num_labels))]
    img.putpalette([c for rgb in colours for c in rgb])
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _colour(i: int) -> tuple[int, int, int]:
    h = hashlib.sha1(str(i).encode()).digest()
    return h[0], h[1], h[2]


def mask_stats(proba: np.ndarray, mask: np.ndarray, *, low: float, high: float) -> dict[str, Any]:
    """Statistics of one prediction: class fractions, confidence, uncertainty, components.

    ``proba`` is (H, W) P(foreground) for a binary model or (K, H, W); ``mask`` the (H, W)
    class map derived from it.
    """
    from scipy import ndimage

    if proba.ndim == 2:
        top = np.maximum(proba, 1.0 - proba)
        band = (proba >= low) & (proba <= high)
        labels = 2
    else:
        top = proba.max(axis=0)
        band = (top >= low) & (top <= high)
        labels = proba.shape[0]
    n = mask.size
    counts = np.bincount(mask.ravel(), minlength=labels)[:labels] / max(n, 1)
    structure = np.ones((3, 3), dtype=bool)
    components = sum(
        int(ndimage.label(mask == k, structure=structure)[1]) for k in range(1, labels)
    )
    return {
        "foreground_fraction": float(1.0 - counts[0]),
        "class_fraction": [float(c) for c in counts],
        "mean_confidence": float(top.mean()),
        "uncertain_fraction": float(band.mean()),
        "num_components": components,
    }


def ground_truth_metrics(
    mask: np.ndarray, target: np.ndarray, *, num_classes: int, ignore_index: int | None
) -> dict[str, float | None]:
    """``gt_foreground_fraction`` and the `METRIC_COLUMNS` of one (H, W) predicted class map
    against its ground truth, as output values: `segray.metrics.per_image_metrics`, undefined
    values (NaN: e.g. Dice on an image with no foreground predicted or true) as null.

    Raises:
        ValueError: the ground truth holds values that are not class indices.
    """
    from segray.metrics import per_image_metrics  # torch: loaded only where metrics are made

    scores = per_image_metrics(mask, target, num_classes=num_classes, ignore_index=ignore_index)
    valid = target[target != ignore_index] if ignore_index is not None else target
    fraction = np.count_nonzero(valid) / valid.size if valid.size else None
    out: dict[str, float | None] = {"gt_foreground_fraction": fraction, **scores}
    return {k: None if v is None or np.isnan(v) else float(v) for k, v in out.items()}


def metrics_summary(ok: pa.Table) -> dict[str, Any]:
    """``summary.json``'s ``metrics`` over the ok rows: images scored against a ground truth,
    those of them whose ground truth has no foreground, and the mean of every metric column
    over the images where it is defined (null and NaN skipped; null if none)."""
    scored = ok.filter(pc.is_valid(ok.column("gt_foreground_fraction")))
    no_fg = pc.sum(pc.equal(scored.column("gt_foreground_fraction"), 0.0)).as_py()

    def mean(name: str) -> float | None:
        column = scored.column(name)
        value = pc.mean(pc.filter(column, pc.invert(pc.is_nan(column)))).as_py()
        return None if value is None else round(float(value), 6)

    return {
        "images_with_ground_truth": scored.num_rows,
        "images_without_foreground": int(no_fg or 0),
        **{k: mean(k) for k in METRIC_COLUMNS},
    }


# --------------------------------------------------------------------------- the commit
def merge_shard(tables: Sequence[pa.Table], expected: int, *, shard: str) -> pa.Table:
    """All rows ever written for one shard -> its final table: one row per image id (the
    newest by ``segmented_at`` then ``run_id``), sorted by id, exactly ``expected`` rows.

    Duplicates come from Ray task retries and from resumed runs (an ``error`` row retried with
    ``--retry-errors``); losing an image raises instead of committing a short shard.
    """
    if tables:
        table = pa.concat_tables(
            [t.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA) for t in tables]
        )
    else:
        table = OUTPUT_SCHEMA.empty_table()
    ids = table.column("image_id").to_pylist()
    times = table.column("segmented_at").cast(pa.int64()).to_pylist()
    runs = table.column("run_id").to_pylist()
    order = sorted(range(len(ids)), key=lambda i: (ids[i], times[i], runs[i]))
    keep = [i for j, i in enumerate(order) if j + 1 == len(order) or ids[order[j + 1]] != ids[i]]
    if len(keep) != expected:
        raise ShardIncomplete(
            f"shard {shard}: {len(keep)} distinct images written, {expected} expected"
        )
    return table.take(pa.array(keep, type=pa.int64()))


class ShardIncomplete(RuntimeError):
    """A shard whose staged rows do not (yet) cover every image of it."""


def part_files(folder: Location) -> list[pafs.FileInfo]:
    """The committed-or-staged Parquet files directly in ``folder`` (hidden temporaries left out)."""
    return sorted(
        (
            info
            for info in folder.list(recursive=False)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith((".", "_"))
        ),
        key=lambda info: info.path,
    )


def read_columns(fs: pafs.FileSystem, paths: Sequence[str], columns: Sequence[str]) -> pa.Table:
    """Some columns of several Parquet files (no mask bytes read)."""
    if not paths:
        return OUTPUT_SCHEMA.empty_table().select(list(columns))
    return pa.concat_tables([pq.read_table(p, filesystem=fs, columns=list(columns)) for p in paths])


def commit_shard(
    key: str, expected: int, *, parquet: Location, staging: Location
) -> dict[str, Any]:
    """Merge a shard's staged parts (and its earlier committed file, when errors were retried)
    into ``parquet/part-<key>.parquet``: written to a hidden temporary and renamed into place,
    so the file is either absent or complete. Then the staged parts are removed.

    Returns ``{"key", "committed": bool, "rows" | "reason"}``; an incomplete shard is not
    written (the caller commits it again when its remaining rows arrive).
    """
    folder = staging.join(key)
    paths = [info.path for info in part_files(folder)]
    final = parquet.join(f"part-{key}.parquet")
    if final.exists():
        paths.insert(0, final.path)
    tables = [pq.read_table(p, filesystem=parquet.fs) for p in paths]
    try:
        table = merge_shard(tables, expected, shard=key)
    except ShardIncomplete as e:
        return {"key": key, "committed": False, "reason": str(e)}
    final.write_atomic(table)
    folder.delete()
    return {"key": key, "committed": True, "rows": table.num_rows}
