"""segray.storage on local disk and against a real S3 API (moto's server, tests/s3.py), with
faults injected by an HTTP proxy. No Ray."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from segray import storage
from segray.storage import (
    Location,
    glob,
    glob_regex,
    glob_root,
    is_hidden,
    is_transient,
    retry_counts,
    with_retries,
)
from tests.s3 import FaultProxy


def _table() -> pa.Table:
    return pa.table({"image_id": ["a", "b", "c"], "score": [0.1, 0.2, 0.3]})


def _tree(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())


# --------------------------------------------------------------------------- local disk
def test_parse_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    loc = Location.parse("out/run/")
    assert loc.path == loc.uri == str(tmp_path / "out" / "run")
    assert Location.parse(f"file://{tmp_path}/x/").path == str(tmp_path / "x")
    assert Location.parse(Path("~")).path == str(Path.home().resolve())
    assert loc.is_local and loc.atomic_rename
    assert loc.join("a", "b.parquet").path == str(tmp_path / "out" / "run" / "a" / "b.parquet")
    assert Location.parse("a").fs is Location.parse("b").fs  # one LocalFileSystem


def test_write_bytes_is_atomic_and_overwrites(tmp_path: Path):
    loc = Location.parse(tmp_path / "deep" / "file.bin")
    loc.write(b"first")
    loc.write(b"second")
    assert loc.read_bytes() == b"second"
    assert sorted(os.listdir(tmp_path / "deep")) == ["file.bin"]  # no temporary left


def test_failed_write_leaves_no_temporary(tmp_path: Path):
    (tmp_path / "target" / "inside").mkdir(parents=True)  # a non-empty folder: move fails
    with pytest.raises(OSError):
        Location.parse(tmp_path / "target").write(b"data")
    assert os.listdir(tmp_path) == ["target"]


def test_write_table_is_zstd_parquet_with_metadata(tmp_path: Path):
    table = _table().replace_schema_metadata({"kept": "yes"})
    loc = Location.parse(tmp_path / "t.parquet")
    loc.write(table, metadata={"segray_run": "r1"})
    meta = pq.read_metadata(tmp_path / "t.parquet")
    assert meta.metadata[b"segray_run"] == b"r1" and meta.metadata[b"kept"] == b"yes"
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_table(tmp_path / "t.parquet").select(["image_id", "score"]).equals(_table())
    with pytest.raises(TypeError, match="metadata applies to tables only"):
        loc.write(b"x", metadata={"a": "b"})


def test_list_files_hidden_rule_and_delete(tmp_path: Path):
    _tree(tmp_path, ["b.png", "a/c.png", "a/.d.png", ".cache/e.png", "a/.git/f.png"])
    loc = Location.parse(tmp_path)
    assert [rel for rel, _ in loc.list_files()] == ["a/c.png", "b.png"]
    everything = [rel for rel, _ in loc.list_files(hidden=True)]
    assert everything == [".cache/e.png", "a/.d.png", "a/.git/f.png", "a/c.png", "b.png"]
    assert all(info.type == pafs.FileType.File for _, info in loc.list_files())
    assert is_hidden("a/.git/f.png") and not is_hidden("a/b.c/d.png")
    assert loc.join("missing").list() == [] and loc.join("missing").list_files() == []
    loc.join("b.png").delete()
    loc.join("a").delete()
    loc.join("missing").delete()  # fine
    assert [rel for rel, _ in loc.list_files(hidden=True)] == [".cache/e.png"]
    assert not loc.join("a").exists()


@pytest.mark.parametrize(
    ("pattern", "root", "rel"),
    [
        ("s3://b/data/shard-*.tar", "s3://b/data", "shard-*.tar"),
        ("s3://b/*.tar", "s3://b", "*.tar"),
        ("s3://b/data/**/*.png", "s3://b/data", "**/*.png"),
        ("s3://b/d/x[0-9]/y?.png", "s3://b/d", "x[0-9]/y?.png"),
        ("/abs/dir/*.png", "/abs/dir", "*.png"),
        ("/*.png", "/", "*.png"),
        ("rel/dir/*.png", "rel/dir", "*.png"),
        ("*.png", ".", "*.png"),
        ("gs://bucket/a/b/c.parquet", "gs://bucket/a/b", "c.parquet"),
    ],
)
def test_glob_root(pattern: str, root: str, rel: str):
    assert glob_root(pattern) == (root, rel)


def test_glob_root_rejects_a_glob_in_the_bucket():
    with pytest.raises(ValueError, match="bucket or host"):
        glob_root("s3://bucket-*/x.tar")


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("*.png", ["a.png", ".png"], ["d/a.png", "a.jpg"]),
        ("**/*.png", ["a.png", "d/a.png", "d/e/a.png"], ["a.jpg"]),
        ("d/**/x", ["d/x", "d/e/x", "d/e/f/x"], ["x", "e/x"]),
        ("shard-?.tar", ["shard-1.tar"], ["shard-10.tar", "shard-/.tar"]),
        ("[ab]*.png", ["a1.png", "b.png"], ["c.png"]),
        ("[!ab]*.png", ["c.png"], ["a.png", "/x.png"]),
        ("x[.png", ["x[.png"], ["x.png"]),
        ("**", ["a", "a/b/c"], []),
    ],
)
def test_glob_regex(pattern: str, matches: list[str], misses: list[str]):
    regex = glob_regex(pattern)
    assert all(regex.match(m) for m in matches), [m for m in matches if not regex.match(m)]
    assert not any(regex.match(m) for m in misses), [m for m in misses if regex.match(m)]


def test_glob_skips_hidden_unless_named(tmp_path: Path):
    _tree(tmp_path, ["a.png", "d/b.png", "d/.c.png", ".cache/d.png", "d/e.jpg"])
    root, found = glob(f"{tmp_path}/**/*.png")
    assert root.path == str(tmp_path)
    assert [rel for rel, _ in found] == ["a.png", "d/b.png"]
    assert [rel for rel, _ in glob(f"{tmp_path}/.cache/*.png")[1]] == ["d.png"]
    assert [rel for rel, _ in glob(f"{tmp_path}/**/.c.png")[1]] == ["d/.c.png"]


# --------------------------------------------------------------------------- files
def test_is_uri_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """One URI test: a scheme makes a URI, except file:// (a local path, made absolute)."""
    monkeypatch.chdir(tmp_path)
    assert storage.is_uri("s3://b/run") and storage.is_uri("gs://b/x")
    assert (
        not storage.is_uri("runs/a")
        and not storage.is_uri("file:///x")
        and not storage.is_uri(None)
    )
    assert storage.where("s3://b/run/") == "s3://b/run"  # a URI is kept (no trailing '/')
    assert storage.where("runs/a") == str(tmp_path / "runs" / "a")
    assert storage.where(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert storage.where("runs/a") == Location.parse("runs/a").uri


def test_walk_is_sorted_lazy_per_folder_and_skips_hidden(tmp_path: Path):
    """The local walk gives what one listing gives: sorted relative paths, hidden skipped."""
    rels = ["a.png", "a/b.png", "a-z.png", "b/.h.png", ".cache/x.png", "b/c/d.png", "z.txt"]
    _tree(tmp_path, rels)
    root = Location.parse(tmp_path)
    walked = list(root.walk())
    assert walked == ["a-z.png", "a.png", "a/b.png", "b/c/d.png", "z.txt"]
    assert walked == [rel for rel, _ in root.list_files()]
    assert list(root.walk(hidden=True)) == [rel for rel, _ in root.list_files(hidden=True)]
    assert list(root.join("missing").walk()) == []


def test_text_json_and_copies(tmp_path: Path):
    """Text and JSON round-trip (None for no file); copy_tree merges, publish_folder replaces."""
    assert storage.read_text(tmp_path / "none.txt") is None
    assert storage.read_json(tmp_path / "none.json") is None
    storage.write_json(tmp_path / "out" / "s.json", {"uri": "s3://KEY:SECRET@bucket/x", "n": 1})
    assert storage.read_json(tmp_path / "out" / "s.json") == {"uri": "s3://bucket/x", "n": 1}
    _tree(tmp_path / "src", ["p/a.png", "p/.tmp", "b.txt"])
    _tree(tmp_path / "dst", ["old.txt"])
    storage.copy_tree(tmp_path / "src", tmp_path / "dst")
    assert storage.list_files(tmp_path / "dst") == ["b.txt", "old.txt", "p/a.png"]
    assert (tmp_path / "dst" / "p" / "a.png").read_bytes() == b"p/a.png"
    storage.publish_folder(tmp_path / "src", tmp_path / "dst")
    assert storage.list_files(tmp_path / "dst", hidden=True) == ["b.txt", "p/a.png"]
    assert (
        storage.subfolders(tmp_path / "dst") == ["p"] and storage.subfolders(tmp_path / "x") == []
    )
    storage.remove(tmp_path / "dst")
    storage.remove(tmp_path / "dst")  # a missing one is fine
    assert not (tmp_path / "dst").exists()


# --------------------------------------------------------------------------- retries
def _failing(times: int, error: BaseException):
    calls = []

    def fn(value: str) -> str:
        calls.append(value)
        if len(calls) <= times:
            raise error
        return value

    return fn, calls


def test_with_retries_retries_transient_errors_and_counts_them():
    before = retry_counts().get("unit-transient", 0)
    fn, calls = _failing(2, ConnectionResetError("connection reset by peer"))
    assert with_retries(fn, "ok", what="unit-transient", base_delay=0.0) == "ok"
    assert len(calls) == 3
    assert retry_counts()["unit-transient"] == before + 2

    fn, calls = _failing(10, TimeoutError("timed out"))
    with pytest.raises(TimeoutError):
        with_retries(fn, "x", what="unit-transient", attempts=3, base_delay=0.0)
    assert len(calls) == 3


def test_with_retries_raises_permanent_errors_at_once():
    fn, calls = _failing(1, FileNotFoundError("no such file"))
    with pytest.raises(FileNotFoundError):
        with_retries(fn, "x", what="unit-permanent", base_delay=0.0)
    assert len(calls) == 1 and "unit-permanent" not in retry_counts()
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        with_retries(fn, "x", what="unit-permanent", attempts=0)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError("timed out"), True),
        (OSError("AWS Error SERVICE_UNAVAILABLE during PutObject operation: slow down"), True),
        (OSError("AWS Error THROTTLING during GetObject operation: Rate exceeded"), True),
        (OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body."), False),
        (PermissionError("denied"), False),
        (IsADirectoryError("is a directory"), False),
        (ValueError("timeout in the message of a non-I/O error"), False),
        (OSError("Parquet magic bytes not found in footer"), False),
    ],
)
def test_is_transient_by_type_and_message(error: BaseException, transient: bool):
    assert is_transient(error) is transient


# --------------------------------------------------------------------------- S3 (moto)
def test_s3_write_read_list_delete(s3_bucket: str):
    root = Location.parse(s3_bucket + "/run/")
    assert root.uri == s3_bucket + "/run" and root.path == s3_bucket[5:] + "/run"
    assert not root.is_local and not root.atomic_rename
    root.join("a", "x.bin").write(b"hello")
    root.join("a", "x.bin").write(b"hello again")  # overwrite
    root.join("t.parquet").write(_table(), metadata={"run": "r1"})
    root.join(".staging", "y.bin").write(b"hidden")
    assert root.join("a", "x.bin").read_bytes() == b"hello again"
    shipped = pickle.loads(pickle.dumps(root.join("a", "x.bin")))  # as Ray ships it to a worker
    assert shipped.read_bytes() == b"hello again"
    table = pq.read_table(io.BytesIO(root.join("t.parquet").read_bytes()))
    assert table.schema.metadata[b"run"] == b"r1" and table.select([0, 1]).equals(_table())
    assert [rel for rel, _ in root.list_files()] == ["a/x.bin", "t.parquet"]
    # one object per write: no temporaries, no folder markers
    assert [rel for rel, _ in root.list_files(hidden=True)] == [
        ".staging/y.bin",
        "a/x.bin",
        "t.parquet",
    ]
    assert root.join("a", "x.bin").info().size == len(b"hello again")
    root.join("a", "x.bin").delete()
    root.join(".staging").delete()
    root.join("nothing-here").delete()
    assert [rel for rel, _ in root.list_files(hidden=True)] == ["t.parquet"]
    assert not root.join("a", "x.bin").exists()
    assert Location.parse(s3_bucket + "/nothing").list_files() == []


def test_s3_text_walk_and_copy_tree(s3_bucket: str, tmp_path: Path):
    root = Location.parse(s3_bucket + "/files")
    storage.write_text(root.join("a.txt"), "hello")
    assert storage.read_text(f"{s3_bucket}/files/a.txt") == "hello"
    assert storage.read_text(root.join("missing.txt")) is None
    _tree(tmp_path / "plots", ["x.png", "sub/y.png", ".hidden"])
    storage.copy_tree(tmp_path / "plots", root.join("plots"))
    assert list(root.walk()) == ["a.txt", "plots/sub/y.png", "plots/x.png"]
    assert storage.subfolders(root) == ["plots"]
    storage.copy_file(root.join("plots", "x.png"), tmp_path / "back.png")
    assert (tmp_path / "back.png").read_bytes() == b"x.png"


def test_s3_multipart_upload(s3_bucket: str):
    """Above pyarrow's part size (10 MiB) a write is a multipart upload, completed at close."""
    data = os.urandom(12 << 20)
    loc = Location.parse(s3_bucket + "/big.bin")
    loc.write(data)
    assert loc.read_bytes() == data


def test_s3_glob_lists_the_fixed_prefix(s3_bucket: str):
    for rel in ["data/shard-0.tar", "data/shard-1.tar", "data/.shard-2.tar", "other/shard-3.tar"]:
        Location.parse(f"{s3_bucket}/{rel}").write(b"t")
    root, found = glob(f"{s3_bucket}/data/shard-*.tar")
    assert root.uri == f"{s3_bucket}/data"
    assert [rel for rel, _ in found] == ["shard-0.tar", "shard-1.tar"]


def test_parse_s3_honours_endpoint_env_and_caches(
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
):
    Location.parse(s3_bucket + "/k").write(b"v")
    assert Location.parse(s3_bucket + "/a").fs is Location.parse("s3://other-bucket/b").fs
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL (here: a port nobody listens on)
    from tests.s3 import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    assert Location.parse(s3_bucket + "/k").read_bytes() == b"v"
    assert (Location.parse(s3_bucket + "/a").fs.region, storage.__name__) == (
        "us-east-1",
        "segray.storage",
    )


def test_storage_imports_neither_ray_nor_torch():
    code = "import sys, segray.storage; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_s3_errors_for_missing_bucket_and_key_are_not_transient(s3_bucket: str):
    with pytest.raises(FileNotFoundError) as missing_key:
        Location.parse(s3_bucket + "/missing").read_bytes()
    with pytest.raises(OSError, match="NO_SUCH_BUCKET") as missing_bucket:
        Location.parse("s3://no-such-bucket-here/k").write(b"x")
    assert not is_transient(missing_key.value)
    assert not is_transient(missing_bucket.value)


# --------------------------------------------------------------------------- faults
def test_fault_proxy_errors_are_transient(
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
):
    """Real errors, after pyarrow's own 3 attempts: a 503 SlowDown and a dropped connection."""
    errors = {}
    for name, p, p_drop in [("503", 1.0, 0.0), ("drop", 0.0, 1.0)]:
        with FaultProxy(s3_server.endpoint, p=p, p_drop=p_drop) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
            before = retry_counts().get(f"fault-{name}", 0)
            with pytest.raises(OSError) as caught:
                loc = Location.parse(s3_bucket + "/x.bin")
                with_retries(loc.write, b"x", what=f"fault-{name}", attempts=2, base_delay=0.0)
            errors[name] = caught.value
            assert retry_counts()[f"fault-{name}"] == before + 1
            assert proxy.requests == 6  # 2 of ours x 3 of pyarrow's
            assert (proxy.failed_503, proxy.dropped) == ((6, 0) if name == "503" else (0, 6))
    assert "SLOW_DOWN" in str(errors["503"]) and is_transient(errors["503"])
    assert "curlCode" in str(errors["drop"]) and is_transient(errors["drop"])


def test_writes_through_a_flaky_proxy_succeed_with_retries(
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
):
    payloads = {f"obj-{i}.bin": os.urandom(1000 + i) for i in range(8)}
    with FaultProxy(s3_server.endpoint, p=0.3, p_drop=0.1, seed=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        root = Location.parse(s3_bucket + "/flaky")
        for name, data in payloads.items():
            with_retries(root.join(name).write, data, what="flaky-write", base_delay=0.01)
        with_retries(root.join("t.parquet").write, _table(), what="flaky-write", base_delay=0.01)
        listed = with_retries(root.list_files, what="flaky-list", base_delay=0.01)
        assert proxy.failed_503 > 0 and proxy.dropped > 0
        assert proxy.requests > len(payloads) + 2
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    direct = Location.parse(s3_bucket + "/flaky")  # the server, not the proxy
    assert direct.fs is not root.fs
    assert [rel for rel, _ in listed] == sorted([*payloads, "t.parquet"])
    assert {name: direct.join(name).read_bytes() for name in payloads} == payloads


def test_fault_proxy_forwards_boto3_requests(s3_server, s3_bucket: str):
    """boto3 sends other encodings (e.g. aws-chunked with trailing checksums); all pass."""
    import boto3

    with FaultProxy(s3_server.endpoint) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.endpoint)
        bucket = s3_bucket.removeprefix("s3://")
        client.put_object(Bucket=bucket, Key="k1", Body=b"abc" * 1000)
        client.upload_fileobj(io.BytesIO(b"xyz" * 1000), bucket, "k2")
        assert client.get_object(Bucket=bucket, Key="k1")["Body"].read() == b"abc" * 1000
        assert client.get_object(Bucket=bucket, Key="k2")["Body"].read() == b"xyz" * 1000
        assert client.head_object(Bucket=bucket, Key="k2")["ContentLength"] == 3000
        client.delete_object(Bucket=bucket, Key="k1")
        assert proxy.requests == 6 and proxy.failed_503 == proxy.dropped == 0


# --------------------------------------------------------------------------- folder publish
def _stage(root: Path, tag: str) -> Path:
    """A search's staged outputs holding only best/: a checkpoint whose files all say ``tag``."""
    for name in ("model.pt", "config.yaml", "metrics.json"):
        (root / "best").mkdir(parents=True, exist_ok=True)
        (root / "best" / name).write_text(f"{tag} {name}")
    return root


def _read_best(out: str, tmp: Path) -> set[str]:
    """What a reader of OUT/best gets, fetched as inference fetches a checkpoint."""
    from segray.checkpoint import download_checkpoint

    got = download_checkpoint(f"{out}/best", tmp, ("model.pt", "config.yaml", "metrics.json"))
    return {p.read_text().split()[0] for p in got.iterdir()}


def test_best_on_object_storage_is_published_whole_or_not_at_all(
    s3_server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A publish of best/ cut off after 3 uploads leaves readers the previous best
    whole (never trial B's config.yaml with trial A's model.pt); the next publish replaces it."""
    from segray.search.results import _publish

    out = f"{s3_bucket}/search"
    _publish(_stage(tmp_path / "a", "A"), out)
    assert _read_best(out, tmp_path / "r1") == {"A"}
    with FaultProxy(s3_server.endpoint, puts=3) as proxy:  # 3 uploads go in, then none
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        with pytest.raises(OSError):
            _publish(_stage(tmp_path / "b", "B"), out)
        assert proxy.failed_503 > 0
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    assert _read_best(out, tmp_path / "r2") == {"A"}
    _publish(_stage(tmp_path / "b", "B"), out)
    assert _read_best(out, tmp_path / "r3") == {"B"}
    # Readers follow the pointer; the previous version stays for readers that resolved it
    # just before, the cut-off one is gone.
    best = Location.parse(f"{out}/best")
    resolved = storage.resolve_published(best)
    assert resolved.uri.startswith(f"{out}/best/versions/")
    assert resolved.join("model.pt").read_bytes() == b"B model.pt"
    versions = {rel.split("/")[1] for rel, _ in best.list_files() if rel.startswith("versions/")}
    assert len(versions) == 2 and resolved.uri.rsplit("/", 1)[1] in versions
    assert {rel for rel, _ in best.list_files() if not rel.startswith("versions/")} == {
        storage.POINTER
    }


def test_publish_folder_on_local_disk_replaces_the_folder_whole(tmp_path: Path):
    """Local disk: a rename, no pointer; a local copy of an object-store layout still reads."""
    from segray.checkpoint import fetch_checkpoint

    dst = tmp_path / "out" / "best"
    storage.publish_folder(_stage(tmp_path / "a", "A") / "best", dst)
    storage.publish_folder(_stage(tmp_path / "b", "B") / "best", dst)
    assert {p.name: p.read_text() for p in dst.iterdir()} == {
        n: f"B {n}" for n in ("model.pt", "config.yaml", "metrics.json")
    }
    assert sorted(p.name for p in dst.parent.iterdir()) == ["best"]  # no temporaries left
    copy = tmp_path / "copy"
    _tree(copy, ["versions/v1/model.pt", "versions/v1/config.yaml"])
    (copy / storage.POINTER).write_text(
        '{"format": "segray-published-folder", "path": "versions/v1"}'
    )
    assert fetch_checkpoint(copy) == copy / "versions" / "v1"
    # published_folder: written in a local folder, then published the same way.
    with storage.published_folder(tmp_path / "ensemble") as local:
        (local / "members").mkdir(parents=True)
        (local / "members" / "m.txt").write_text("member")
        assert not (tmp_path / "ensemble").exists()  # nothing there until the block ends
    assert (tmp_path / "ensemble" / "members" / "m.txt").read_text() == "member"
