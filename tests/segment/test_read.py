"""segray.segment.read: shards -> raw bytes with stable ids; nothing lost when a read fails."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from segray.segment.plan import plan_inputs
from segray.segment.read import INDEX_FILE, MaskIndex, read_shard
from segray.storage import Location
from tests.segment.helpers import make_tar, png, rows


def _one(path, **kw):
    (shard,) = plan_inputs([str(path)], shard_size=kw.pop("shard_size", 64), **kw)
    return shard


def test_tar_members_duplicates_odd_names_and_end_marker(tmp_path: Path):
    good = png()
    tar = make_tar(
        tmp_path / "s.tar",
        [
            ("a.png", good),
            ("a.json", b"{}"),
            ("a.png", good),
            ("./d/b.jpg", b"x"),
            ("../up.png", good),
            ("e/./f.png", good),
            (".hidden.png", good),
            ("g/.cache/h.png", good),
        ],
    )
    out = rows(read_shard(_one(tar), chunk_rows=2))
    assert [r["image_id"] for r in out] == [
        "s.tar/a.png",
        "s.tar/a.png#2",
        "s.tar/d/b.jpg",
        "s.tar/../up.png",  # kept: a row of its own, never a file outside anything
        "s.tar/e/f.png",
        "",
    ]
    assert out[0]["data"] == good and out[0]["source"] == str(tar)
    assert out[-1]["_total"] == 5 and out[-1]["read_error"] is None
    assert all(r["_total"] == -1 for r in out[:-1])


def test_truncated_tar_is_reported_not_committed_and_restoring_it_completes(tmp_path: Path):
    members = [(f"m{i}.png", png(32, 32, i)) for i in range(6)]
    full = make_tar(tmp_path / "ok.tar", members).read_bytes()
    path = tmp_path / "s.tar"
    path.write_bytes(full[: len(full) // 2])  # cut inside the archive
    shard = _one(path)
    staging = Location.parse(tmp_path / "staging")
    out = rows(read_shard(shard, index_to=staging))
    marker = out[-1]
    read = [r["image_id"] for r in out[:-1]]
    assert 0 < len(read) < 6 and marker["_total"] == len(read)
    assert "s.tar: archive unreadable after" in marker["read_error"]
    assert not (tmp_path / "staging" / INDEX_FILE).exists()  # no listing: no commit
    path.write_bytes(full)  # restored
    resumed = dataclasses.replace(shard, skip=frozenset(read))
    out = rows(read_shard(resumed, index_to=staging))
    assert [r["image_id"] for r in out[:-1]] == [f"s.tar/m{i}.png" for i in range(len(read), 6)]
    assert out[-1]["_total"] == 6 and out[-1]["read_error"] is None
    index = pq.read_table(tmp_path / "staging" / INDEX_FILE).column("image_id").to_pylist()
    assert index == [f"s.tar/m{i}.png" for i in range(6)]


def test_empty_or_foreign_archive_is_reported(tmp_path: Path):
    (tmp_path / "zero.tar").write_bytes(b"")
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive at all" * 40)
    for name in ("zero.tar", "junk.tar"):
        out = rows(read_shard(_one(tmp_path / name)))
        assert len(out) == 1 and out[0]["read_error"].startswith(name), out


class _FlakyHandler(pafs.FileSystemHandler):
    """Local files whose input streams break once, after ``after`` bytes, with the error an
    S3 client gives for a connection reset mid-download."""

    def __init__(self, after: int) -> None:
        self.local, self.after, self.broken = pafs.LocalFileSystem(), after, 0

    def open_input_stream(self, path):
        data = self.local.open_input_stream(path).read()
        if self.broken:
            return pa.PythonFile(io.BytesIO(data), mode="r")
        self.broken += 1
        after = self.after

        class Breaks(io.RawIOBase):
            pos = 0

            def readable(self):
                return True

            def readinto(self, b):
                if self.pos >= after:
                    raise OSError("AWS Error NETWORK_CONNECTION during GetObject: curl error 56")
                n = min(len(b), after - self.pos, len(data) - self.pos)
                b[:n] = data[self.pos : self.pos + n]
                self.pos += n
                return n

        return pa.PythonFile(io.BufferedReader(Breaks()), mode="r")

    # the rest: plain local files
    def get_type_name(self):
        return "flaky"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def equals(self, other):
        return self is other

    def _unused(self, *args):
        raise NotImplementedError

    copy_file = create_dir = delete_dir = delete_dir_contents = delete_file = _unused
    delete_root_dir_contents = move = open_append_stream = open_output_stream = _unused


def test_tar_stream_broken_mid_way_is_reopened_and_read_on(tmp_path: Path):
    members = [(f"m{i}.png", png(32, 32, i)) for i in range(6)]
    path = make_tar(tmp_path / "s.tar", members)
    handler = _FlakyHandler(after=path.stat().st_size // 2)
    shard = _one(path)
    flaky = dataclasses.replace(
        shard, root=Location(pafs.PyFileSystem(handler), shard.root.path, shard.root.uri)
    )
    out = rows(read_shard(flaky))
    assert handler.broken == 1  # it did break
    assert [r["image_id"] for r in out[:-1]] == [f"s.tar/m{i}.png" for i in range(6)]
    assert [r["data"] for r in out[:-1]] == [data for _, data in members]
    assert out[-1]["_total"] == 6 and out[-1]["read_error"] is None


def test_parquet_ids_nulls_structs_across_row_group_shards(tmp_path: Path):
    good = png()
    images = pa.array([{"bytes": good, "path": "x"}, {"bytes": None, "path": "y"}] * 3)
    names = ["p0", None, "p2", "p3", None, "p5"]
    pq.write_table(
        pa.table({"img": images, "name": names}), tmp_path / "t.parquet", row_group_size=2
    )
    shards = list(
        plan_inputs(
            [str(tmp_path / "t.parquet")], shard_size=2, image_column="img", id_column="name"
        )
    )
    assert len(shards) == 3 and all(s.needs_index for s in shards)
    out = [rows(read_shard(s, index_to=Location.parse(tmp_path / s.key))) for s in shards]
    ids = [r["image_id"] for part in out for r in part if r["image_id"]]
    assert ids == [
        "t.parquet/p0",
        "t.parquet/1",
        "t.parquet/p2",
        "t.parquet/p3",
        "t.parquet/4",
        "t.parquet/p5",
    ]
    assert out[0][0]["data"] == good and "null" in out[0][1]["read_error"]
    assert [part[-1]["_total"] for part in out] == [2, 2, 2]
    assert (tmp_path / shards[2].key / INDEX_FILE).is_file()


def test_unreadable_parquet_is_reported_then_read_once_restored(tmp_path: Path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [png()] * 3}), path)
    full = path.read_bytes()
    path.write_bytes(full[:-20])  # footer cut off
    shard = _one(path)
    out = rows(read_shard(shard))
    assert len(out) == 1 and "t.parquet: not a readable Parquet file" in out[0]["read_error"]
    path.write_bytes(full)
    out = rows(read_shard(shard))  # the same shard (footer unread at plan) reads all rows now
    assert [r["image_id"] for r in out[:-1]] == ["t.parquet/0", "t.parquet/1", "t.parquet/2"]
    assert out[-1]["read_error"] is None


def test_skipped_ids_are_counted_not_read(tmp_path: Path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(png())
    shard = dataclasses.replace(_one(tmp_path), skip=frozenset({"b.png"}))
    out = rows(read_shard(shard))
    assert [r["image_id"] for r in out] == ["a.png", "c.png", ""] and out[-1]["_total"] == 3


def test_missing_file_is_an_error_row(tmp_path: Path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(png())
    shard = _one(tmp_path)
    (tmp_path / "b.png").unlink()  # gone between plan and read
    out = rows(read_shard(shard))
    assert [r["image_id"] for r in out] == ["a.png", "b.png", ""]
    assert "b.png: cannot read file" in out[1]["read_error"] and out[-1]["_total"] == 2


def test_mask_index_matches_the_relative_path_and_never_another_folder(tmp_path: Path):
    for rel in ("sub/a.png", "b.png", "x/dup.png", "y/dup.png", ".hidden/z.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png())
    index = MaskIndex.build(str(tmp_path))
    assert len(index) == 4 and not index.flat
    # the path inside the input (an id without the input's name) or the id itself
    assert index.find("photos/sub/a.jpg", "sub/a.jpg") == str(tmp_path / "sub" / "a.png")
    assert index.find("sub/a.jpg") == str(tmp_path / "sub" / "a.png")
    assert index.find("photos/sub/a.jpg") is None  # no dropping of folders: another tree
    assert index.find("deep/b.jpg") is None  # a nested masks tree: no match by name
    assert index.find("x/dup.png") == str(tmp_path / "x" / "dup.png")
    assert index.find("z/dup.png") is None and index.find("dup.png") is None
    assert index.find("z.png") is None


def test_a_flat_masks_folder_matches_by_name_one_to_one(tmp_path: Path):
    from segray.segment.plan import InputError, plan_inputs

    masks, images = tmp_path / "masks", tmp_path / "images"
    for rel in ("masks/s1.png", "masks/s2.png", "images/a/s1.png", "images/b/s2.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png())
    index = MaskIndex.build(str(masks))
    assert index.flat and index.find("b/s2.png") == str(masks / "s2.png")
    index.check(plan_inputs([str(images)], shard_size=4))  # one image per mask
    (images / "c").mkdir()
    (images / "c" / "s2.png").write_bytes(png())
    with pytest.raises(InputError, match=r"b/s2\.png and c/s2\.png would both take s2\.png"):
        index.check(plan_inputs([str(images)], shard_size=4))
    (masks / "s1.tif").write_bytes(png())
    with pytest.raises(InputError, match=r"s1\.png and s1\.tif are both the mask of s1: keep one$"):
        MaskIndex.build(str(masks))


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr("segray.segment.read._BACKOFF_S", 0.0)
