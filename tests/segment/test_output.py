"""segray.segment.output: the commit, statistics in the footer, resume and validation."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segray.segment.output import (
    Output,
    SegmentError,
    ShardIncomplete,
    commit_shard,
    merge_shard,
    metrics_summary,
    shard_stats,
    summarise,
)
from segray.segment.read import INDEX_FILE
from segray.segment.schema import METRIC_COLUMNS, OUTPUT_SCHEMA, empty_row, schema_markdown
from segray.storage import Location


def _row(image_id: str, status: str, run: str, at: datetime) -> dict:
    row = empty_row()
    row.update(
        image_id=image_id,
        source="s",
        status=status,
        model_id="m",
        segray_version="v",
        run_id=run,
        segmented_at=at,
    )
    return row


def test_merge_dedups_newest_wins_and_refuses_short_shards():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    old = pa.Table.from_pylist(
        [_row("a", "ok", "r1", t0), _row("b", "error", "r1", t0)], schema=OUTPUT_SCHEMA
    )
    retried = pa.Table.from_pylist(
        [_row("b", "ok", "r2", t0 + timedelta(seconds=1))], schema=OUTPUT_SCHEMA
    )
    merged = merge_shard([old, retried, retried], 2, shard="k")
    assert merged.column("image_id").to_pylist() == ["a", "b"]
    assert merged.column("status").to_pylist() == ["ok", "ok"]
    with pytest.raises(ShardIncomplete, match="2 distinct images written, 3 expected"):
        merge_shard([old], 3, shard="k")


def test_commit_renames_complete_shards_only(tmp_path: Path):
    out = Location.parse(tmp_path)
    parquet, staging = out.join("parquet"), out.join("_staging")
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    staging.join("k", "r1-a.parquet").write(
        pa.Table.from_pylist([_row("a", "ok", "r1", t0)], schema=OUTPUT_SCHEMA)
    )
    assert commit_shard("k", 2, parquet=parquet, staging=staging)["committed"] is False
    assert not (tmp_path / "parquet" / "part-k.parquet").exists()
    staging.join("k", "r1-b.parquet").write(
        pa.Table.from_pylist([_row("b", "error", "r1", t0)], schema=OUTPUT_SCHEMA)
    )
    assert commit_shard("k", 2, parquet=parquet, staging=staging) == {
        "key": "k",
        "committed": True,
        "rows": 2,
    }
    assert not (tmp_path / "_staging" / "k").exists()
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == ["part-k.parquet"]
    # a retried error row replaces the committed one
    staging.join("k", "r2-b.parquet").write(
        pa.Table.from_pylist(
            [_row("b", "ok", "r2", t0 + timedelta(seconds=5))], schema=OUTPUT_SCHEMA
        )
    )
    assert commit_shard("k", 2, parquet=parquet, staging=staging)["committed"]
    table = pq.read_table(tmp_path / "parquet" / "part-k.parquet")
    assert table.schema.equals(OUTPUT_SCHEMA)
    assert table.column("run_id").to_pylist() == ["r1", "r2"]


def test_metrics_summary_counts_images_without_foreground_and_skips_undefined():
    rows = []
    for fraction, dice in [(0.5, 0.8), (0.0, None), (0.2, 0.4), (0.0, 0.0), (None, None)]:
        row = empty_row()
        row.update(
            gt_foreground_fraction=fraction, dice=dice, accuracy=None if fraction is None else 0.9
        )
        rows.append(row)
    ok = pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
    summary = metrics_summary(ok)
    assert summary["images_with_ground_truth"] == 4 and summary["images_without_foreground"] == 2
    assert summary["dice"] == pytest.approx((0.8 + 0.4 + 0.0) / 3)  # not (... + 1.0) / 4
    assert summary["accuracy"] == pytest.approx(0.9) and summary["recall"] is None
    nan = pa.Table.from_pylist(
        [
            {**empty_row(), "gt_foreground_fraction": 0.5, **dict.fromkeys(METRIC_COLUMNS, v)}
            for v in (float("nan"), 0.5)
        ],
        schema=OUTPUT_SCHEMA,
    )
    assert metrics_summary(nan)["dice"] == 0.5  # a NaN (not null) is skipped too
    assert metrics_summary(ok.slice(0, 0))["images_with_ground_truth"] == 0


def test_schema_constant_and_markdown_agree():
    table = schema_markdown()
    assert all(f"`{name}`" in table for name in OUTPUT_SCHEMA.names)
    assert not OUTPUT_SCHEMA.field("image_id").nullable and OUTPUT_SCHEMA.field("error").nullable


def test_commit_keeps_only_the_ids_of_the_last_complete_listing(tmp_path: Path):
    """An archive that once could not be read left a row under its own name; once restored
    and read to the end, its listing decides the shard's rows (no '11 written, 10 expected')."""
    out = Location.parse(tmp_path)
    parquet, staging = out.join("parquet"), out.join("_staging")
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    stale = [_row("s.tar", "error", "r1", t0)]
    parquet.join("part-k.parquet").write(pa.Table.from_pylist(stale, schema=OUTPUT_SCHEMA))
    new = [_row(f"s.tar/m{i}.png", "ok", "r2", t0 + timedelta(seconds=1)) for i in range(3)]
    staging.join("k", "r2-x.parquet").write(pa.Table.from_pylist(new, schema=OUTPUT_SCHEMA))
    with pytest.raises(ShardIncomplete, match="4 distinct images written, 3 expected"):
        merge_shard([pa.Table.from_pylist(stale + new, schema=OUTPUT_SCHEMA)], 3, shard="k")
    ids = [r["image_id"] for r in new]
    staging.join("k", INDEX_FILE).write(pa.table({"image_id": ids}))
    assert commit_shard("k", 3, parquet=parquet, staging=staging)["committed"]
    table = pq.read_table(tmp_path / "parquet" / "part-k.parquet")
    assert table.column("image_id").to_pylist() == ids


def test_committed_file_carries_its_statistics(tmp_path: Path):
    out = Location.parse(tmp_path)
    parquet, staging = out.join("parquet"), out.join("_staging")
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rows = [_row("a", "ok", "r1", t0), _row("b", "error", "r1", t0), _row("c", "ok", "r0", t0)]
    rows[0].update(foreground_fraction=0.25, gt_foreground_fraction=0.5, dice=0.8)
    rows[1].update(error="b: not an image (cannot identify)")
    rows[2].update(foreground_fraction=0.75)
    staging.join("k", "p.parquet").write(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))
    assert commit_shard("k", 3, parquet=parquet, staging=staging)["committed"]
    footer = pq.read_metadata(tmp_path / "parquet" / "part-k.parquet")
    stats = json.loads(footer.metadata[b"segray.stats"])
    assert stats == shard_stats(pq.read_table(tmp_path / "parquet" / "part-k.parquet"))
    summary = summarise([stats], run_id="r1")
    assert (summary["rows"], summary["ok"], summary["error"]) == (3, 2, 1)
    assert (summary["processed"], summary["skipped"]) == (2, 1)
    assert summary["prediction"]["foreground_fraction"] == pytest.approx(0.5)
    assert summary["metrics"]["dice"] == pytest.approx(0.8)
    assert summary["error_reasons"] == {"not an image (cannot identify)": 1}


def _staged(out: Location, key: str, ids: list[str], status: str = "ok") -> None:
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rows = [_row(i, status, "r1", t0) for i in ids]
    out.join("_staging", key, f"r1-{ids[0]}.parquet").write(
        pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
    )


def test_resume_plan_and_validation_from_one_listing(tmp_path: Path):
    from segray.segment.plan import plan_inputs

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        (photos / f"{i}.png").write_bytes(b"x")
    shards = list(plan_inputs([str(photos)], shard_size=2))
    loc = Location.parse(tmp_path / "out")
    first = shards[0]
    ids = [i for i, _, _ in first.members()]
    _staged(loc, first.key, ids[:1])
    out = Output(loc)
    out.scan()
    pending, kept = out.resume_plan(shards, retry_errors=False)
    assert [s.key for s in pending] == [s.key for s in shards]  # nothing committed yet
    assert pending[0].skip == frozenset(ids[:1]) and kept[first.key] == 1
    assert all(not s.skip for s in pending[1:])
    with pytest.raises(SegmentError, match="not committed"):
        out.validate_and_summarise(shards, {}, run_id="r1")
    for shard in shards:
        _staged(loc, shard.key, [i for i, _, _ in shard.members()])
        commit_shard(shard.key, shard.rows, parquet=out.parquet, staging=out.staging)
    summary = out.validate_and_summarise(shards, {}, run_id="r1")
    assert (summary["rows"], summary["ok"], summary["processed"]) == (6, 6, 6)
    out.scan()
    assert out.resume_plan(shards, retry_errors=False) == ([], {})
    short = shards[0]
    with pytest.raises(SegmentError, match="rows, 99 input images"):
        out.validate_and_summarise(shards, {short.key: 99}, run_id="r1")


def test_validation_finds_an_id_in_two_shards(tmp_path: Path):
    from segray.segment.plan import Shard

    loc = Location.parse(tmp_path / "out")
    out = Output(loc)
    shards = [Shard(key=k, kind="files", root=loc, rows=2) for k in ("k1", "k2")]
    for shard, ids in zip(shards, (["a", "b"], ["b", "c"]), strict=True):
        _staged(loc, shard.key, ids)
        assert commit_shard(shard.key, 2, parquet=out.parquet, staging=out.staging)["committed"]
    with pytest.raises(SegmentError, match="4 rows but 3 distinct image ids"):
        out.validate_and_summarise(shards, {}, run_id="r1")


def test_a_committed_file_is_cut_into_row_groups_for_readers_of_a_few_rows(tmp_path: Path):
    """`segray report` decodes the masks of the row groups that hold its picks: a large shard
    is several row groups of `ROW_GROUP_ROWS`, not one."""
    from segray.segment.output import ROW_GROUP_ROWS

    out = Location.parse(tmp_path)
    n = ROW_GROUP_ROWS * 2 + 5
    _staged(out, "big", [f"{i:04d}" for i in range(n)])
    assert commit_shard("big", n, parquet=out.join("parquet"), staging=out.join("_staging"))[
        "committed"
    ]
    footer = pq.read_metadata(tmp_path / "parquet" / "part-big.parquet")
    sizes = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
    assert sizes == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 5]
