"""The report of a bulk segmentation (`segray segment` output): counts by status with the error
reasons grouped, distributions of the per-image statistics, and galleries of overlays (the most
uncertain images, the worst Dice, a random sample).

It reads only what it shows, in three steps:
1. the small columns of every output file (ids, status, error, the statistics; `METRIC_COLUMNS`
   ``columns=`` reads, never the masks);
2. the masks (``mask_png``) of the gallery rows only: `read_masks` reads, per output file, just
   the row groups that hold a picked row;
3. the pictured images from the run's inputs, through `segray.segment.read` (tar members and
   Parquet row groups as bulk segmentation reads them) and `segray.storage` (``s3://`` works),
   and their ground-truth masks from the ``gt_mask`` URIs.
"""

from __future__ import annotations

import posixpath
import random
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from segray.overlay import (
    ERROR_LEGEND,
    IGNORED,
    PREDICTED,
    error_overlay,
    mask_overlay,
    side_by_side,
    to_png,
)
from segray.report import html
from segray.report.plots import histograms
from segray.report.rundir import RunDir, log
from segray.storage import Location, list_files, with_retries

__all__ = [
    "Pick",
    "group_errors",
    "pick_gallery",
    "read_masks",
    "read_stats",
    "segment_section",
]

#: The per-image columns read for every row: ids, status and numbers (no masks, no paths).
STAT_COLUMNS = [
    "image_id",
    "status",
    "error",
    "foreground_fraction",
    "mean_confidence",
    "uncertain_fraction",
    "dice",
]
#: The columns read for the gallery rows only.
PICKED_COLUMNS = ["mask_png", "source", "gt_mask"]
DISTRIBUTIONS = ("foreground_fraction", "mean_confidence", "uncertain_fraction", "dice")
_THREADS = 8  # output files whose statistics are read at once
THUMB = 256  # longer side of each picture in a gallery tile, pixels


@dataclass(frozen=True)
class Pick:
    """One gallery row: where its mask is (output file, row in that file) and, once
    `read_masks` has read them, the file that holds its image and its ground truth."""

    file: str  # output Parquet file, relative to OUTPUT/parquet
    row: int  # row index in that file
    image_id: str
    caption: str
    source: str | None = None
    gt_mask: str | None = None


@dataclass
class MaskRead:
    """What `read_masks` returned, and how many rows it had to decode for it."""

    masks: dict[tuple[str, int], bytes | None] = field(default_factory=dict)
    picks: list[Pick] = field(default_factory=list)  # with source and gt_mask filled in
    decoded: int = 0
    row_groups: int = 0


# --------------------------------------------------------------------------- step 1: statistics
def read_stats(parquet: Location) -> pd.DataFrame:
    """The small columns of every output file, plus ``_file`` (relative path) and ``_row``
    (row index in that file). Files and folders starting with ``_`` or ``.`` are skipped."""
    files = [
        rel
        for rel in list_files(parquet, what="list output")
        if rel.endswith(".parquet") and not any(p.startswith("_") for p in rel.split("/"))
    ]
    if len(files) > 20:
        log(f"reading the statistics of {len(files)} output files")
    with ThreadPoolExecutor(_THREADS) as pool:  # object stores: one request (or few) per file
        frames = list(pool.map(lambda rel: _stats_of(parquet.join(rel), rel), files))
    if not frames:
        return pd.DataFrame(columns=[*STAT_COLUMNS, "_file", "_row"])
    stats = pd.concat(frames, ignore_index=True)
    for c in STAT_COLUMNS:
        if c not in stats:
            stats[c] = None
    return stats


def _stats_of(loc: Location, rel: str) -> pd.DataFrame:
    schema = with_retries(pq.read_schema, loc.path, filesystem=loc.fs, what="read output")
    columns = [c for c in STAT_COLUMNS if c in set(schema.names)]
    table = with_retries(
        pq.read_table, loc.path, filesystem=loc.fs, columns=columns, what="read output"
    )
    frame = table.to_pandas()
    frame["_file"] = rel
    frame["_row"] = np.arange(len(frame))
    return frame


def group_errors(stats: pd.DataFrame, examples: int = 3) -> list[dict[str, Any]]:
    """Error rows grouped by reason (the error text without its ``<image id>: `` prefix), most
    frequent first: reason, count, a few example ids."""
    errors = stats[stats["status"] != "ok"]
    groups: dict[str, list[str]] = defaultdict(list)
    for image_id, error in zip(errors["image_id"], errors["error"], strict=True):
        text = error or "(no reason recorded)"
        if text.startswith(f"{image_id}: "):
            text = text[len(image_id) + 2 :]
        groups[text].append(image_id)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [
        {"reason": reason, "images": len(ids), "examples": ", ".join(ids[:examples])}
        for reason, ids in ordered
    ]


# --------------------------------------------------------------------------- step 2: picks
def pick_gallery(stats: pd.DataFrame, n: int, seed: int) -> dict[str, list[Pick]]:
    """Up to ``n`` rows for each gallery, among the ``ok`` rows: the highest
    ``uncertain_fraction``, the lowest ``dice`` (where ground truth gave one) and a random
    sample (seeded: the same report for the same output)."""
    ok = stats[stats["status"] == "ok"]
    out: dict[str, list[Pick]] = {}
    uncertain = ok.dropna(subset=["uncertain_fraction"])
    out["most uncertain"] = _picks(
        uncertain.sort_values(["uncertain_fraction", "image_id"], ascending=[False, True]).head(n)
    )
    scored = ok.dropna(subset=["dice"])
    if len(scored):
        out["worst Dice"] = _picks(scored.sort_values(["dice", "image_id"]).head(n))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(ok)), min(n, len(ok))))
    out["random sample"] = _picks(ok.iloc[chosen])
    return out


def _picks(rows: pd.DataFrame) -> list[Pick]:
    return [
        Pick(file=r["_file"], row=int(r["_row"]), image_id=r["image_id"], caption=_caption(r))
        for _, r in rows.iterrows()
    ]


def _caption(r: pd.Series) -> str:
    parts = [str(r["image_id"])]
    for column, label in (("uncertain_fraction", "uncertain"), ("dice", "Dice")):
        v = r.get(column)
        if v is not None and not pd.isna(v):
            parts.append(f"{label} {float(v):.3f}")
    return " · ".join(parts)


# --------------------------------------------------------------------------- step 3: masks
def read_masks(parquet: Location, picks: Iterable[Pick]) -> MaskRead:
    """``mask_png``, ``source`` and ``gt_mask`` of the picked rows only: per output file, the
    row groups that hold a picked row (found from the footer's row counts), those columns
    alone. Returns the masks and the picks with their source and ground truth filled in."""
    picks = list(picks)
    wanted: dict[str, set[int]] = defaultdict(set)
    for p in picks:
        wanted[p.file].add(p.row)
    out = MaskRead()
    extra: dict[tuple[str, int], tuple[str | None, str | None]] = {}
    for rel, rows in sorted(wanted.items()):
        groups, decoded, values = with_retries(_picked, parquet.join(rel), rows, what="read")
        out.row_groups, out.decoded = out.row_groups + groups, out.decoded + decoded
        for r, row in values.items():
            out.masks[(rel, r)] = row.get("mask_png")
            extra[(rel, r)] = (row.get("source"), row.get("gt_mask"))
    out.picks = [
        replace(p, source=extra[(p.file, p.row)][0], gt_mask=extra[(p.file, p.row)][1])
        if (p.file, p.row) in extra
        else p
        for p in picks
    ]
    return out


def _picked(loc: Location, rows: set[int]) -> tuple[int, int, dict[int, dict[str, Any]]]:
    """(row groups read, rows decoded, row -> `PICKED_COLUMNS` values) of ``rows`` of one
    output file: only the row groups that hold one are read."""
    values: dict[int, dict[str, Any]] = {}
    groups = decoded = 0
    with loc.fs.open_input_file(loc.path) as f:
        pf = pq.ParquetFile(f)
        start = 0
        for g in range(pf.metadata.num_row_groups):
            size = pf.metadata.row_group(g).num_rows
            inside = sorted(r for r in rows if start <= r < start + size)
            if inside:
                columns = [c for c in PICKED_COLUMNS if c in pf.schema_arrow.names]
                group = pf.read_row_group(g, columns=columns)
                groups, decoded = groups + 1, decoded + size
                taken = group.take([r - start for r in inside]).to_pylist()
                values.update(zip(inside, taken, strict=True))
            start += size
    return groups, decoded, values


# --------------------------------------------------------------------------- step 4: images
def fetch_images(
    picks: Iterable[Pick], *, image_column: str = "image", id_column: str | None = None
) -> dict[str, bytes]:
    """Raw bytes of the picked images, read from the inputs the run recorded: image files
    directly, tar shards streamed until the picked members are found, Parquet files by the
    row groups (or ids) of the picked rows. An image that cannot be read is left out."""
    from segray.segment.plan import kind_of

    by_source: dict[str, list[Pick]] = defaultdict(list)
    for p in picks:
        if p.source is not None:
            by_source[p.source].append(p)
    out: dict[str, bytes] = {}
    for source, group in by_source.items():
        kind = kind_of(source)
        try:
            if kind == "tar":
                out.update(_from_tar(source, group))
            elif kind == "parquet":
                out.update(_from_parquet(source, group, image_column, id_column))
            else:
                loc = Location.parse(source)
                for p in group:
                    out[p.image_id] = with_retries(loc.read_bytes, what="read image")
        except Exception as e:  # noqa: BLE001 - a missing input leaves its tiles out, no more
            log(f"cannot read {len(group)} image(s) from {source}: {' '.join(str(e).split())}")
    return out


def _id_prefix(image_id: str, source: str) -> str:
    """The image id of an archive (``folder/shard.tar``) from one of its members' ids."""
    base = posixpath.basename(source.rstrip("/"))
    at = image_id.find(base + "/")
    while at > 0 and image_id[at - 1] != "/":
        at = image_id.find(base + "/", at + 1)
    return image_id[: at + len(base)] if at >= 0 else base


def _from_tar(source: str, picks: list[Pick]) -> dict[str, bytes]:
    from segray.segment.plan import Shard
    from segray.segment.read import read_shard

    wanted = {p.image_id for p in picks}
    shard = Shard(
        key="report",
        kind="tar",
        root=Location.parse(source),
        id_prefix=_id_prefix(picks[0].image_id, source),
    )
    out: dict[str, bytes] = {}
    reader = read_shard(shard, chunk_rows=16)
    try:
        for table in reader:
            for image_id, data in zip(
                table.column("image_id").to_pylist(), table.column("data").to_pylist(), strict=True
            ):
                if image_id in wanted and data is not None:
                    out[image_id] = data
            if len(out) == len(wanted):
                break  # the rest of the archive is not read
    finally:
        reader.close()
    return out


def _from_parquet(
    source: str, picks: list[Pick], image_column: str, id_column: str | None
) -> dict[str, bytes]:
    loc = Location.parse(source)
    prefix = _id_prefix(picks[0].image_id, source)
    keys = {p.image_id[len(prefix) + 1 :]: p.image_id for p in picks}
    if id_column is not None:  # rows found by their id column
        table = with_retries(
            pq.read_table,
            loc.path,
            filesystem=loc.fs,
            columns=[id_column, image_column],
            filters=[(id_column, "in", list(keys))],
            what="read input",
        )
        ids, images = table.column(id_column).to_pylist(), _bytes_of(table.column(image_column))
        return {keys[str(k)]: v for k, v in zip(ids, images, strict=True) if str(k) in keys}
    from segray.segment.plan import Shard
    from segray.segment.read import read_shard

    rows = {int(k): v for k, v in keys.items() if k.isdigit()}
    out: dict[str, bytes] = {}
    meta = with_retries(pq.read_metadata, loc.path, filesystem=loc.fs, what="read input")
    start = 0
    for g in range(meta.num_row_groups):  # only the row groups that hold a picked row
        size = meta.row_group(g).num_rows
        if any(start <= r < start + size for r in rows):
            shard = Shard(
                key="report",
                kind="parquet",
                root=loc,
                id_prefix=prefix,
                row_groups=(g,),
                first_row=start,
                rows=size,
                image_column=image_column,
            )
            for table in read_shard(shard):
                for image_id, data in zip(
                    table.column("image_id").to_pylist(),
                    table.column("data").to_pylist(),
                    strict=True,
                ):
                    if image_id in keys.values() and data is not None:
                        out[image_id] = data
        start += size
    return out


def _bytes_of(column: Any) -> list[bytes | None]:
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        column = pc.struct_field(column, "bytes")
    return [v.encode() if isinstance(v, str) else v for v in column.to_pylist()]


# --------------------------------------------------------------------------- tiles
def _tile(
    image: bytes | None, mask: bytes | None, gt: np.ndarray | None, ignore_index: int
) -> bytes | None:
    """image | overlay (errors against the ground truth, else the predicted foreground)."""
    from segray.data.io import ImageError, decode_image, read_mask

    if mask is None:
        return None
    try:
        pred = read_mask(mask)
    except ImageError:
        return None
    try:
        picture = decode_image(image, channels=3) if image is not None else None
    except ImageError:  # e.g. a multi-band image: the mask on grey
        picture = None
    if picture is None or picture.shape[:2] != pred.shape:
        picture = np.full((*pred.shape, 3), 32, np.uint8)  # no image: the mask on grey
    usable_gt = gt is not None and gt.shape == pred.shape
    picture, pred = _shrink(picture, THUMB), _shrink(pred, THUMB, nearest=True)
    if usable_gt:
        assert gt is not None
        overlay = error_overlay(picture, pred, _shrink(gt, THUMB, nearest=True), ignore_index)
    else:
        overlay = mask_overlay(picture, pred)
    return to_png(side_by_side([picture, overlay]))


def _shrink(array: np.ndarray, side: int, *, nearest: bool = False) -> np.ndarray:
    h, w = array.shape[:2]
    if max(h, w) <= side:
        return array
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if nearest:
        img = Image.fromarray(array.astype(np.int32)).resize(size, Image.Resampling.NEAREST)
        return np.asarray(img).astype(array.dtype)
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS))


def _ground_truth(uri: str | None, mapper: Any) -> np.ndarray | None:
    from segray.data.io import ImageError

    if uri is None or mapper is None:
        return None
    try:
        data = with_retries(Location.parse(uri).read_bytes, what="read mask")
        return mapper.read(data, PurePosixPath(uri).stem, name=uri)
    except (ImageError, OSError, ValueError):
        return None


def _mapper(run: RunDir) -> tuple[Any, int]:
    """The mask mapping the run used for ``--masks`` (its resolved config.yaml)."""
    if not run.exists("config.yaml"):
        return None, 255
    try:
        from segray.config import load_config
        from segray.data.masks import MaskMapper

        cfg = load_config(run.loc.join("config.yaml").uri)
        return MaskMapper.from_config(cfg.data), cfg.data.ignore_index
    except Exception as e:  # noqa: BLE001 - no ground-truth overlays, the rest still shows
        log(f"{run.uri}/config.yaml: cannot map the ground truth ({' '.join(str(e).split())})")
        return None, 255


# --------------------------------------------------------------------------- the section
def segment_section(
    run: RunDir, page: html.Page, *, gallery: int = 12, seed: int = 0, anchor: str = "segment"
) -> dict[str, Any]:
    """Add the bulk segmentation's section to ``page``; returns what it read (for checks):
    ``rows``, ``picked``, ``masks_decoded``, ``row_groups``, ``images``."""
    summary = run.maybe_json("summary.json") or {}
    settings = (run.maybe_json("_segray/run.json") or {}).get("settings", {})
    parquet = run.loc.join("parquet")
    log(f"segment: reading the per-image statistics under {parquet.uri}")
    stats = read_stats(parquet)
    counts = stats["status"].value_counts().to_dict()
    parts = [
        html.cards(
            {
                "rows": len(stats),
                **{f"status {k}": int(v) for k, v in sorted(counts.items())},
                "images/s": summary.get("images_per_s"),
                "complete": summary.get("complete"),
            }
        ),
        html.note(
            f"{run.uri} · inputs: {', '.join(map(str, summary.get('inputs', []))) or '?'}"
            f" · checkpoint {summary.get('checkpoint', '?')} · model {summary.get('model_id', '?')}"
        ),
        html.heading("Counts by status"),
        html.table(
            [{"status": k, "images": int(v)} for k, v in sorted(counts.items())],
            ["status", "images"],
            sortable=False,
        ),
    ]
    reasons = group_errors(stats)
    parts.append(html.heading("Error reasons"))
    if reasons:
        parts.append(html.table(reasons, ["reason", "images", "examples"], table_id="errors"))
    else:
        parts.append(html.note("no error rows"))
    if summary.get("metrics"):
        parts += [html.heading("Against the ground truth"), html.kv_table(summary["metrics"])]

    ok = stats[stats["status"] == "ok"]
    columns = {c: ok[c].astype(float).to_numpy() for c in DISTRIBUTIONS if ok[c].notna().any()}
    if columns:
        parts += [
            html.heading("Distributions (ok rows)"),
            html.image(histograms(columns), "distributions"),
        ]

    picks = pick_gallery(stats, gallery, seed)
    unique = list({(p.file, p.row): p for group in picks.values() for p in group}.values())
    log(f"segment: reading {len(unique)} masks and their images for the galleries")
    masks = read_masks(parquet, unique)
    unique = masks.picks
    images = fetch_images(
        unique,
        image_column=settings.get("image_column", "image"),
        id_column=settings.get("id_column"),
    )
    mapper, ignore = _mapper(run) if any(p.gt_mask for p in unique) else (None, 255)
    tiles: dict[tuple[str, int], bytes | None] = {}
    for p in unique:
        gt = _ground_truth(p.gt_mask, mapper)
        tiles[(p.file, p.row)] = _tile(
            images.get(p.image_id), masks.masks.get((p.file, p.row)), gt, ignore
        )
    legend = html.legend(
        [*ERROR_LEGEND, ("ignored", IGNORED), ("predicted foreground (no ground truth)", PREDICTED)]
    )
    parts += [html.heading("Galleries"), html.note("each tile: image | overlay"), legend]
    for name, group in picks.items():
        items = [(tiles[(p.file, p.row)], p.caption) for p in group if tiles[(p.file, p.row)]]
        parts += [html.heading(f"{name[0].upper()}{name[1:]} ({len(items)})"), html.gallery(items)]
    page.section(anchor, "Bulk segmentation", parts)
    return {
        "rows": len(stats),
        "picked": len(unique),
        "masks_decoded": masks.decoded,
        "row_groups": masks.row_groups,
        "images": len(images),
    }
