"""Tests of segray.segment_io: the input plan, shard reading, results and the commit (no Ray)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segray.segment_io import (
    METRIC_COLUMNS,
    OUTPUT_SCHEMA,
    InputError,
    Location,
    MaskIndex,
    ShardIncomplete,
    commit_shard,
    empty_row,
    encode_mask_png,
    ground_truth_metrics,
    mask_stats,
    merge_shard,
    metrics_summary,
    plan_inputs,
    read_shard,
    schema_markdown,
)


def _png(h: int = 8, w: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _rows(tables) -> list[dict]:
    return [r for t in tables for r in t.to_pylist()]


# --------------------------------------------------------------------------- plan
def test_plan_folder_recursive_chunks_and_stable_ids(tmp_path: Path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.tif", ".hidden.png", "notes.txt"):
        (root / name).write_bytes(_png())
    shards = plan_inputs([str(root)], shard_size=2)
    assert [s.kind for s in shards] == ["files", "files"]
    assert [[m.image_id for m in s.members] for s in shards] == [["a.jpg", "b.png"], ["sub/c.tif"]]
    assert all(Path(m.path).is_absolute() for s in shards for m in s.members)
    # the same inputs give the same shard keys (they name the committed files)
    assert [s.key for s in plan_inputs([str(root)], shard_size=2)] == [s.key for s in shards]


def test_plan_several_inputs_prefix_folders_and_keep_archive_names(tmp_path: Path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.png").write_bytes(_png())
    tar = _tar(tmp_path / "shard.tar", [("m.png", _png())])
    pq.write_table(pa.table({"image": [_png()]}), tmp_path / "t.parquet")
    shards = plan_inputs(
        [str(tmp_path / "photos"), str(tar), str(tmp_path / "t.parquet")], shard_size=8
    )
    assert [(s.kind, s.id_prefix or s.members[0].image_id) for s in shards] == [
        ("files", "photos/x.png"),
        ("tar", "shard.tar"),
        ("parquet", "t.parquet"),
    ]


def test_plan_glob_and_archives_inside_folders(tmp_path: Path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    _tar(tmp_path / "d" / "e" / "s1.tar", [("m.png", _png())])
    _tar(tmp_path / "d" / "s0.tar", [("m.png", _png())])
    (tmp_path / "d" / "x.png").write_bytes(_png())
    shards = plan_inputs([str(tmp_path / "d" / "**" / "*.tar")], shard_size=8)
    assert sorted(s.id_prefix for s in shards) == ["e/s1.tar", "s0.tar"]
    shards = plan_inputs([str(tmp_path / "d")], shard_size=8)
    assert sorted((s.kind, s.id_prefix) for s in shards) == [
        ("files", ""),
        ("tar", "e/s1.tar"),
        ("tar", "s0.tar"),
    ]


def test_plan_errors_name_the_input(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        plan_inputs([str(tmp_path / "missing")], shard_size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        plan_inputs([str(tmp_path / "empty")], shard_size=4)
    for parent in ("a", "b"):
        (tmp_path / parent / "same").mkdir(parents=True)
        (tmp_path / parent / "same" / "x.png").write_bytes(_png())
    with pytest.raises(InputError, match="same image id 'same/x.png'"):
        plan_inputs([str(tmp_path / "a" / "same"), str(tmp_path / "b" / "same")], shard_size=4)


# --------------------------------------------------------------------------- reading
def test_read_tar_members_errors_duplicates_and_end_marker(tmp_path: Path):
    good = _png()
    tar = _tar(
        tmp_path / "s.tar",
        [
            ("a.png", good),
            ("a.json", b"{}"),
            ("a.png", good),
            ("./d/b.jpg", b"x"),
        ],
    )
    (shard,) = plan_inputs([str(tar)], shard_size=4)
    rows = _rows(read_shard(shard, chunk_rows=2))
    assert [r["image_id"] for r in rows] == ["s.tar/a.png", "s.tar/a.png#2", "s.tar/d/b.jpg", ""]
    assert rows[0]["data"] == good and rows[0]["source"] == str(tar)
    assert rows[-1]["_total"] == 3 and all(r["_total"] == -1 for r in rows[:-1])


def test_read_broken_archives_become_error_rows(tmp_path: Path):
    data = _tar(tmp_path / "ok.tar", [("a.png", _png()), ("b.png", _png(64, 64))]).read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1600])  # cut inside b.png
    (tmp_path / "zero.tar").write_bytes(b"")
    for name in ("cut.tar", "zero.tar"):
        (shard,) = plan_inputs([str(tmp_path / name)], shard_size=4)
        rows = _rows(read_shard(shard))
        errors = [r for r in rows if r["read_error"]]
        assert errors, name
        assert rows[-1]["_total"] == len(rows) - 1


def test_read_parquet_ids_nulls_structs_and_missing_column(tmp_path: Path):
    good = _png()
    images = pa.array([{"bytes": good, "path": "x"}, {"bytes": None, "path": "y"}])
    pq.write_table(pa.table({"img": images, "name": ["p0", None]}), tmp_path / "t.parquet")
    (shard,) = plan_inputs(
        [str(tmp_path / "t.parquet")], shard_size=4, image_column="img", id_column="name"
    )
    rows = _rows(read_shard(shard))
    assert [r["image_id"] for r in rows[:-1]] == ["t.parquet/p0", "t.parquet/1"]
    assert rows[0]["data"] == good and "null" in rows[1]["read_error"]
    (shard,) = plan_inputs([str(tmp_path / "t.parquet")], shard_size=4, image_column="nope")
    rows = _rows(read_shard(shard))
    assert "no column 'nope'" in rows[0]["read_error"] and rows[-1]["_total"] == 1


def test_read_skips_ids_but_counts_them(tmp_path: Path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(_png())
    (shard,) = plan_inputs([str(tmp_path)], shard_size=8)
    shard = type(shard)(**{**shard.__dict__, "skip": frozenset({"b.png"})})
    rows = _rows(read_shard(shard))
    assert [r["image_id"] for r in rows] == ["a.png", "c.png", ""] and rows[-1]["_total"] == 3


def test_mask_index_matches_relative_path_then_stem(tmp_path: Path):
    for rel in ("sub/a.png", "b.png", "x/dup.png", "y/dup.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(_png())
    index = MaskIndex.build(str(tmp_path))
    assert index.find("photos/sub/a.jpg") == str(tmp_path / "sub/a.png")
    assert index.find("shard.tar/deep/b.png") == str(tmp_path / "b.png")
    assert index.find("q/a.png") == str(tmp_path / "sub/a.png")  # unique stem
    assert index.find("dup.png") is None  # ambiguous stem
    assert index.find("x/dup.png") == str(tmp_path / "x/dup.png")


# --------------------------------------------------------------------------- results
def test_mask_png_keeps_class_indices():
    mask = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    decoded = Image.open(io.BytesIO(encode_mask_png(mask, 3)))
    assert decoded.mode == "P" and np.array_equal(np.asarray(decoded), mask)


def test_mask_stats_binary_and_multiclass():
    proba = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.65]], np.float32)
    mask = (proba >= 0.5).astype(np.uint8)
    s = mask_stats(proba, mask, low=0.3, high=0.7)
    assert s["foreground_fraction"] == pytest.approx(4 / 6)
    assert s["class_fraction"] == pytest.approx([2 / 6, 4 / 6])
    assert s["uncertain_fraction"] == pytest.approx(2 / 6)
    assert s["mean_confidence"] == pytest.approx(np.mean([0.9, 0.9, 0.5, 0.8, 0.8, 0.65]))
    assert s["num_components"] == 1  # (1,0) touches (0,1) diagonally: 8-connected
    two = np.array([[0.9, 0.1, 0.9], [0.9, 0.1, 0.9]], np.float32)
    assert mask_stats(two, (two >= 0.5).astype(np.uint8), low=0.3, high=0.7)["num_components"] == 2
    proba3 = np.stack([1 - proba, proba * 0.5, proba * 0.5])
    mask3 = proba3.argmax(0).astype(np.uint8)
    s3 = mask_stats(proba3, mask3, low=0.3, high=0.7)
    assert len(s3["class_fraction"]) == 3 and sum(s3["class_fraction"]) == pytest.approx(1)


def test_ground_truth_metrics_are_null_where_undefined():
    none = np.zeros((4, 4), np.uint8)
    some = none.copy()
    some[0] = 1
    some[1, 0] = 255  # ignored
    empty = ground_truth_metrics(none, none.astype(np.int32), num_classes=1, ignore_index=255)
    assert empty == {
        "gt_foreground_fraction": 0.0,
        "dice": None,  # nothing to find, nothing found: undefined, not 1.0
        "iou": None,
        "precision": None,
        "recall": None,
        "accuracy": 1.0,
    }
    missed = ground_truth_metrics(none, some.astype(np.int32), num_classes=1, ignore_index=255)
    assert missed["gt_foreground_fraction"] == pytest.approx(4 / 15)
    assert (missed["dice"], missed["recall"], missed["precision"]) == (0.0, 0.0, None)
    hit = ground_truth_metrics(
        some.clip(0, 1), some.astype(np.int32), num_classes=1, ignore_index=255
    )
    assert (hit["dice"], hit["precision"], hit["recall"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="class indices"):
        ground_truth_metrics(none, none.astype(np.int32) + 7, num_classes=1, ignore_index=255)


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
    nan = pa.table(
        {"gt_foreground_fraction": [0.5, 0.5], **{k: [float("nan"), 0.5] for k in METRIC_COLUMNS}}
    )
    assert metrics_summary(nan)["dice"] == 0.5  # a NaN (not null) is skipped too
    assert metrics_summary(ok.slice(0, 0))["images_with_ground_truth"] == 0


def test_schema_constant_and_markdown_agree():
    table = schema_markdown()
    assert all(f"`{name}`" in table for name in OUTPUT_SCHEMA.names)
    assert not OUTPUT_SCHEMA.field("image_id").nullable and OUTPUT_SCHEMA.field("error").nullable


# --------------------------------------------------------------------------- commit
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
    staging.join("k", "r1-a.parquet").write_atomic(
        pa.Table.from_pylist([_row("a", "ok", "r1", t0)], schema=OUTPUT_SCHEMA)
    )
    assert commit_shard("k", 2, parquet=parquet, staging=staging)["committed"] is False
    assert not (tmp_path / "parquet" / "part-k.parquet").exists()
    staging.join("k", "r1-b.parquet").write_atomic(
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
    staging.join("k", "r2-b.parquet").write_atomic(
        pa.Table.from_pylist(
            [_row("b", "ok", "r2", t0 + timedelta(seconds=5))], schema=OUTPUT_SCHEMA
        )
    )
    assert commit_shard("k", 2, parquet=parquet, staging=staging)["committed"]
    table = pq.read_table(tmp_path / "parquet" / "part-k.parquet")
    assert table.schema.equals(OUTPUT_SCHEMA)
    assert table.column("run_id").to_pylist() == ["r1", "r2"]


def test_segment_settings_from_a_config_file_then_overrides(tmp_path: Path):
    from segray.checkpoint import save_checkpoint
    from segray.config import ConfigError, load_config
    from segray.models import create_model
    from segray.segment import _segment_config

    cfg = load_config(None, ["model.name=unet", "model.base_width=4", "segment.batch_size=2"])
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, model=create_model("unet", base_width=4), config=cfg, metrics={})
    cluster = Path(__file__).resolve().parents[1] / "configs" / "segment_cluster.yaml"
    cfg = _segment_config(str(ckpt), ["segment.concurrency=3"], cluster)
    assert cfg.model.name == "unet"  # the model stays the checkpoint's
    assert cfg.segment.gpus_per_actor == 1 and cfg.segment.batch_size == 16  # from the file
    assert cfg.segment.concurrency == 3  # the command line wins
    bad = tmp_path / "bad.yaml"
    bad.write_text("segment: {batch_size: 4}\nmodel: {base_width: 8}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.base_width"):
        _segment_config(str(ckpt), [], bad)


# --------------------------------------------------------------------------- actor options
@pytest.mark.parametrize(("heap_reuse", "onednn_cache"), [(True, "0"), (False, "null")])
def test_actor_options_carry_resources_and_env(heap_reuse: bool, onednn_cache: str) -> None:
    from segray.cluster import HEAP_REUSE_ENV
    from segray.config import load_config
    from segray.segment import actor_options

    cfg = load_config(
        None,
        [
            "segment.concurrency=3",
            "segment.cpus_per_actor=1.5",
            "segment.gpus_per_actor=0.5",
            f"segment.heap_reuse={str(heap_reuse).lower()}",
            f"segment.onednn_cache={onednn_cache}",
        ],
    )
    options = actor_options(cfg.segment)
    assert (options["compute"].min_size, options["compute"].max_size) == (3, 3)
    assert (options["num_cpus"], options["num_gpus"]) == (1.5, 0.5)
    expected = dict(HEAP_REUSE_ENV) if heap_reuse else {}
    if onednn_cache == "0":  # no per-shape kernel cache; ideep's LRU cache takes at least 1
        expected |= {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "LRU_CACHE_CAPACITY": "1"}
    assert options["runtime_env"] == {"env_vars": expected}


def test_pipeline_modules_import_without_torch() -> None:
    """Ray starts fresh workers for read/decode/write tasks; they must not pay for torch."""
    code = (
        "import sys, segray.segment, segray.segment_io, segray.data.io, segray.data.masks; "
        "heavy = [m for m in ('torch', 'albumentations') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
