"""Bulk segmentation with Ray Data: folders, globs, tar shards and Parquet files of images in,
masks and per-image statistics out as Parquet; streaming, resumable, nothing lost or doubled.

    summary = run_segment("runs/a/checkpoints/best", ["photos/", "s3://b/shard-*.tar"], "out/")
    pandas.read_parquet("out/parquet")         # one row per input image, schema OUTPUT_SCHEMA

The stages, one module each, in the order the data goes through them:

    plan.py     inputs -> shards with stable keys (folder chunks, tar files, Parquet row groups)
    read.py     a shard -> raw bytes + stable ids (+ ground truth), retried, never short
    infer.py    decode (tasks) and segment (actors): pixels -> mask PNG + statistics
    output.py   staging, the atomic shard commit, resume, validation from Parquet footers
    stage.py    rows staged as Parquet parts per shard; the driver commits complete shards
    run.py      the Ray Data pipeline that joins them; `run_segment`
    schema.py   the output columns (OUTPUT_SCHEMA)

Storage goes through `segray.storage` (local paths or any pyarrow URI: s3://, gs://, hdfs://).
"""

from segray.segment.infer import actor_options, actor_precision
from segray.segment.output import SegmentError
from segray.segment.plan import InputError
from segray.segment.run import run_segment, summary_line
from segray.segment.schema import OUTPUT_SCHEMA, schema_markdown

__all__ = [
    "OUTPUT_SCHEMA",
    "InputError",
    "SegmentError",
    "actor_options",
    "actor_precision",
    "run_segment",
    "schema_markdown",
    "summary_line",
]
