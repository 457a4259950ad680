"""segray.segment.plan: inputs -> shards with stable keys (no Ray)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segray.segment.plan import InputError, plan_inputs
from tests.segment.helpers import make_tar, png


def _plan(*inputs, **kw):
    kw.setdefault("shard_size", 4)
    return list(plan_inputs([str(i) for i in inputs], **kw))


def _ids(shards) -> list[str]:
    return [image_id for s in shards for image_id, _, _ in s.members()]


def test_folder_recursive_hidden_skipped_ids_and_paths(tmp_path: Path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.tif", ".hidden.png", "notes.txt"):
        (root / name).write_bytes(png())
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(png())
    shards = _plan(root)
    assert {s.kind for s in shards} == {"files"}
    assert _ids(shards) == ["a.jpg", "b.png", "sub/c.tif"]
    assert all(
        Path(p).is_absolute() and Path(p).is_file() for s in shards for _, p, _ in s.members()
    )
    assert sum(s.rows for s in shards) == 3
    # the same inputs give the same shard keys (they name the committed files)
    assert [s.key for s in _plan(root)] == [s.key for s in shards]
    # a glob follows the same hidden-file rule as a folder
    assert _ids(_plan(tmp_path / "photos" / "**" / "*.png")) == ["b.png"]


def test_adding_an_image_changes_only_the_shard_it_falls_in(tmp_path: Path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(400):
        (root / f"{i:04d}.png").write_bytes(b"x")
    before = _plan(root, shard_size=16)
    sizes = [s.rows for s in before]
    assert 10 <= len(before) <= 50 and max(sizes) <= 4 * 16  # about shard_size on average
    (root / "0123a.png").write_bytes(b"x")
    after = _plan(root, shard_size=16)
    changed_before = {s.key for s in before} - {s.key for s in after}
    changed_after = [s for s in after if s.key not in {b.key for b in before}]
    assert len(changed_before) == 1 and len(changed_after) in (1, 2)  # (2: it starts a chunk)
    assert any("0123a.png" in s.names for s in changed_after)
    assert sum(s.rows for s in after) == 401


def test_several_inputs_prefix_folders_and_keep_archive_names(tmp_path: Path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.png").write_bytes(png())
    tar = make_tar(tmp_path / "shard.tar", [("m.png", png())])
    pq.write_table(pa.table({"image": [png()]}), tmp_path / "t.parquet")
    shards = _plan(tmp_path / "photos", tar, tmp_path / "t.parquet", shard_size=8)
    assert [(s.kind, s.id_prefix) for s in shards] == [
        ("files", "photos"),
        ("tar", "shard.tar"),
        ("parquet", "t.parquet"),
    ]
    assert _ids(shards[:1]) == ["photos/x.png"]


def test_glob_and_archives_inside_folders(tmp_path: Path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    make_tar(tmp_path / "d" / "e" / "s1.tar", [("m.png", png())])
    make_tar(tmp_path / "d" / "s0.tar", [("m.png", png())])
    (tmp_path / "d" / "x.png").write_bytes(png())
    shards = _plan(tmp_path / "d" / "**" / "*.tar")
    assert sorted(s.id_prefix for s in shards) == ["e/s1.tar", "s0.tar"]
    shards = _plan(tmp_path / "d")
    assert sorted((s.kind, s.id_prefix) for s in shards) == [
        ("files", ""),
        ("tar", "e/s1.tar"),
        ("tar", "s0.tar"),
    ]


def test_parquet_splits_by_row_groups_with_continuous_ids(tmp_path: Path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [png()] * 30}), path, row_group_size=3)
    shards = _plan(path, shard_size=7)
    assert [s.rows for s in shards] == [6, 6, 6, 6, 6]  # whole row groups, <= shard_size
    assert [s.first_row for s in shards] == [0, 6, 12, 18, 24]
    assert [s.row_groups for s in shards][:2] == [(0, 1), (2, 3)]
    assert len({s.key for s in shards}) == 5 and not shards[0].needs_index
    assert [s.key for s in _plan(path, shard_size=7)] == [s.key for s in shards]
    assert _plan(path, shard_size=7, id_column=None)[0].needs_index is False
    one_big = tmp_path / "one.parquet"
    pq.write_table(pa.table({"image": [png()] * 5}), one_big, row_group_size=5)
    assert [s.rows for s in _plan(one_big, shard_size=2)] == [5]  # a row group is not split


def test_plan_errors_name_the_input_and_the_setting(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        _plan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        _plan(tmp_path / "empty")
    for parent in ("a", "b"):
        (tmp_path / parent / "same").mkdir(parents=True)
        (tmp_path / parent / "same" / "x.png").write_bytes(png())
    with pytest.raises(InputError, match="both give image ids under 'same'"):
        _plan(tmp_path / "a" / "same", tmp_path / "b" / "same")
    pq.write_table(pa.table({"img": [png()]}), tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t\.parquet: no column 'image'.*segment\.image_column"):
        _plan(tmp_path / "t.parquet")


def test_unreadable_parquet_footer_is_a_shard_its_read_reports(tmp_path: Path):
    (tmp_path / "cut.parquet").write_bytes(b"PAR1 not really")
    (shard,) = _plan(tmp_path / "cut.parquet")
    assert shard.row_groups is None and shard.rows is None and shard.needs_index
    assert dataclasses.replace(shard, skip=frozenset({"x"})).key == shard.key


def test_files_of_no_input_kind_are_counted_by_extension(tmp_path: Path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "b.jfif", "c.txt", "sub/d.TXT", "sub/README", ".e.txt", "f.xyz"):
        (root / name).write_bytes(png())
    ignored: Counter[str] = Counter()
    assert _ids(_plan(root, ignored=ignored)) == ["a.png", "b.jfif"]
    assert ignored == {".txt": 2, ".xyz": 1, "": 1}  # hidden files are not inputs at all
    ignored.clear()  # a glob counts only the files it matches
    assert _ids(_plan(f"{root}/*.*", ignored=ignored)) == ["a.png", "b.jfif"]
    assert ignored == {".txt": 1, ".xyz": 1}
