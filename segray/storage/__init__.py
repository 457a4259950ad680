"""One storage layer for every stage, and the only way to files: URI -> pyarrow filesystem,
reads and atomic writes, listings, globs, text and JSON, copies, folder publish and retries.
No Ray, no torch: pyarrow and the standard library only.

    out = Location.parse("s3://bucket/run")            # or a local path, file://, gs://, hdfs://
    with_retries(out.join("part-0.parquet").write, table, what="commit", metadata={"k": "v"})
    root, pattern = glob_root("s3://bucket/data/shard-*.tar")   # list s3://bucket/data only
    write_json("s3://bucket/run/summary.json", summary)          # retried, credentials scrubbed
    publish_folder(local_checkpoint, "s3://bucket/run/best")     # readers see it whole

- `filesystems`: the pyarrow filesystem of a URI, cached (S3 settings: the AWS variables).
- `location`: `Location` (read, atomic write, list, walk, delete), globs, `is_uri` / `where`.
- `retry`: `with_retries` around whole operations, `is_transient`, `retry_counts`.
- `publish`: `publish_folder` / `resolve_published` and the local staging folders.
- `files`: text and JSON, `copy_file` / `copy_tree`, retried listings, `remove`.

**Ray workers** read the AWS variables in their own process. A local Ray started by the driver
inherits the driver's ``os.environ``; on a cluster the workers see the environment of the
``ray start`` nodes, so set the AWS variables there or pass them in ``runtime_env["env_vars"]``.
A pickled ``S3FileSystem`` keeps its endpoint and region but looks credentials up again.
"""

from __future__ import annotations

from segray.storage.files import (
    copy_file,
    copy_tree,
    list_entries,
    list_files,
    read_json,
    read_text,
    remove,
    subfolders,
    write_json,
    write_text,
)
from segray.storage.filesystems import (
    FileInfo,
    FileSystem,
    FileType,
    LocalFileSystem,
    forget_filesystems,
)
from segray.storage.location import (
    Location,
    glob,
    glob_regex,
    glob_root,
    is_hidden,
    is_uri,
    where,
)
from segray.storage.publish import (
    POINTER,
    VERSIONS,
    publish_folder,
    published,
    published_file,
    published_folder,
    resolve_published,
)
from segray.storage.retry import is_transient, retry_counts, with_retries

__all__ = [
    "POINTER",
    "VERSIONS",
    "FileInfo",
    "FileSystem",
    "FileType",
    "LocalFileSystem",
    "Location",
    "copy_file",
    "copy_tree",
    "forget_filesystems",
    "glob",
    "glob_regex",
    "glob_root",
    "is_hidden",
    "is_transient",
    "is_uri",
    "list_entries",
    "list_files",
    "publish_folder",
    "published",
    "published_file",
    "published_folder",
    "read_json",
    "read_text",
    "remove",
    "resolve_published",
    "retry_counts",
    "subfolders",
    "where",
    "with_retries",
    "write_json",
    "write_text",
]
