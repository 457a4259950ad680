"""URI -> pyarrow filesystem, built once per (scheme, endpoint, region, credentials source).

**S3 settings** are the standard AWS ones: ``AWS_ENDPOINT_URL_S3`` (wins) or
``AWS_ENDPOINT_URL`` for MinIO, Ceph or a test server; ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
(with an endpoint: default ``us-east-1``; without: the bucket's own region, looked up once);
credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` as the AWS
SDK reads them.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

# The pyarrow names other modules need to type or test what a listing returns.
FileInfo = pafs.FileInfo
FileSystem = pafs.FileSystem
FileType = pafs.FileType
LocalFileSystem = pafs.LocalFileSystem

_FS_CACHE: dict[tuple[Any, ...], pafs.FileSystem] = {}
_URI_CACHE: dict[tuple[str, ...], tuple[pafs.FileSystem, bool]] = {}  # -> (fs, bucket-style)
_LOCK = threading.Lock()


def forget_filesystems() -> None:
    """Drop the cached filesystems (and collect them now). Registered to run at exit before
    pyarrow shuts its S3 subsystem down: an S3 client destroyed after that, by the interpreter's
    own teardown, can crash the process on its way out."""
    with _LOCK:
        _FS_CACHE.clear()
        _URI_CACHE.clear()
    import gc

    gc.collect()


atexit.register(forget_filesystems)  # after pyarrow.fs's own hook: atexit runs it first


def cached(key: tuple[Any, ...], build: Callable[[], pafs.FileSystem]) -> pafs.FileSystem:
    with _LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            fs = _FS_CACHE[key] = build()
        return fs


def local_filesystem() -> pafs.FileSystem:
    return cached(("local",), pafs.LocalFileSystem)


@lru_cache(maxsize=256)
def _bucket_region(bucket: str) -> str:
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:  # no network or no such bucket: the first real request says which
        return "us-east-1"


def s3_filesystem(bucket: str) -> pafs.FileSystem:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if endpoint:
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        scheme, override, region = url.scheme or "https", url.netloc, region or "us-east-1"
    else:
        scheme, override, region = "https", None, region or _bucket_region(bucket)
    creds = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_PROFILE"))
    return cached(
        ("s3", scheme, override, region, creds),
        lambda: pafs.S3FileSystem(
            endpoint_override=override,
            scheme=scheme,
            region=region,
            # Small writes become one PutObject instead of a multipart upload (3 requests).
            allow_delayed_open=True,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        ),
    )


def filesystem_from_uri(text: str) -> tuple[pafs.FileSystem, str]:
    """Any other scheme through ``from_uri``, built once per (scheme, host, query)."""
    url = urlsplit(text)
    key = ("uri", url.scheme, url.netloc, url.query)
    hit = _URI_CACHE.get(key)
    if hit is not None:
        fs, bucket_style = hit
        return fs, (url.netloc + url.path if bucket_style else url.path)
    fs, path = pafs.FileSystem.from_uri(text)
    if path in (url.netloc + url.path, url.path):  # learn how this scheme maps URIs to paths
        _URI_CACHE[key] = (fs, path == url.netloc + url.path)
    return fs, path
