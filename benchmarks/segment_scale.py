"""Bulk segmentation at scale, without and with a model: what the driver pays to plan, resume
and validate 10k / 100k / 1M inputs, and how fast `segray segment` runs with S3 in and out
against local disk.

Usage::

    python benchmarks/segment_scale.py [--part scale|s3|all] [--sizes 10000,100000,1000000]
        [--kinds parquet,files] [--shard-size 256] [--row-group 1000] [--per-folder 1000]
        [--images 400] [--size 256] [--rounds 3] [--tmp /tmp]
        [--output benchmarks/results/segment_scale.json]

**Part 1 (``--part scale``, no Ray).** For each input kind and size N:

- ``parquet``: one Parquet file of N rows, column ``image`` = the same 8x8 PNG, row groups of
  ``--row-group`` rows (a shard is one row group when it holds more than ``--shard-size``);
- ``files``: N copies of that PNG on local disk, ``--per-folder`` per sub-folder.

A setup subprocess (not timed; its time is reported) plans the input and fakes a complete
output without a model: one staged part per shard (``empty_row`` filled with id, source,
status ``ok``, model, version, run id, time; no masks) committed with `commit_shard`, as a run
would. A fresh measuring subprocess then times the driver's three passes over the inputs:
``plan_inputs`` (shard_size ``--shard-size``), ``Output.scan`` + ``resume_plan`` of the complete
output (nothing left to do), and ``validate_and_summarise``. Its peak RSS (``VmHWM``, which
``exec`` resets; ``ru_maxrss`` is reported too) covers only those passes, and its RSS right
after the imports is the baseline. Targets: peak RSS at the largest N <= 1.5x at 10k (per
kind), planning under 60 s per million inputs.

**Part 2 (``--part s3``, Ray).** moto's S3 server (``tests/s3.py``) on 127.0.0.1 in this
process; ``--images`` generated images (``--size`` squared, PNG and 1 in 4 JPEG) in a local
folder and uploaded to ``s3://segray-bench/in``. ``run_segment`` in a fresh process (its own
local Ray, the AWS variables inherited) with the same checkpoint (resnet18-U-Net, seeded random
weights) and overrides, local folder -> local folder and ``s3://segray-bench/in`` ->
``s3://segray-bench/out``, interleaved for ``--rounds`` rounds; images/s is the summary's
``images_per_s`` (the pipeline, Ray start-up excluded); the best round of each counts. Target:
S3 / local >= 0.8. Runs under the machine-wide Ray lock. Note that the S3 server shares this
machine's CPUs with the pipeline.

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import publish, ray_lock  # noqa: E402

RUN_ID = "bench-scale"
BUCKET = "segray-bench"
MAX_GROWTH = 1.5  # target: peak RSS at the largest N / at 10k
PLAN_S_PER_MILLION = 60.0  # target: planning time per million inputs
S3_OVER_LOCAL = 0.8  # target: S3 images/s / local images/s


# --------------------------------------------------------------------------- helpers
def tiny_png(side: int = 8) -> bytes:
    """A valid ``side`` x ``side`` grey PNG, built with the standard library only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\0" + bytes(range(i, i + side)) for i in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str, spec: dict) -> dict:
    """Run ``mode`` of this script in a fresh Python process; its RESULT line as a dict."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{mode} {spec} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads(line[len("RESULT ") :])


# --------------------------------------------------------------------------- part 1: children
def build_parquet(spec: dict) -> dict:
    """One Parquet file of ``n`` rows of the same tiny PNG, row groups of ``row_group`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    images = pa.repeat(pa.scalar(tiny_png(), pa.binary()), spec["n"])
    pq.write_table(pa.table({"image": images}), spec["path"], row_group_size=spec["row_group"])
    return {"build_s": time.perf_counter() - start, "bytes": os.path.getsize(spec["path"])}


def setup_output(spec: dict) -> dict:
    """A complete output for the planned shards, without a model: per shard one staged part
    of ``ok`` rows, committed by `commit_shard` exactly as a run commits it."""
    from datetime import datetime, timezone

    import pyarrow as pa

    from segray import __version__
    from segray.segment.output import Output, commit_shard
    from segray.segment.plan import plan_inputs
    from segray.segment.schema import OUTPUT_SCHEMA, empty_row
    from segray.storage import Location

    start = time.perf_counter()
    shards = list(plan_inputs([spec["input"]], shard_size=spec["shard_size"]))
    out = Output(Location.parse(spec["out"]))
    now = datetime.now(timezone.utc)
    fixed = {
        "status": "ok",
        "model_id": "bench-model",
        "segray_version": __version__,
        "run_id": RUN_ID,
        "segmented_at": now,
    }
    rows_total = 0
    for shard in shards:
        if shard.kind == "files":
            ids = [(image_id, uri) for image_id, _, uri in shard.members()]
        else:
            first, n = shard.first_row, shard.rows or 0
            ids = [(f"{shard.id_prefix}/{i}", shard.source) for i in range(first, first + n)]
        rows = [empty_row() | fixed | {"image_id": i, "source": src} for i, src in ids]
        table = pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
        out.staging.join(shard.key, "x.parquet").write(table)
        result = commit_shard(shard.key, len(ids), parquet=out.parquet, staging=out.staging)
        if not result["committed"]:
            raise RuntimeError(f"setup: shard {shard.key} not committed: {result['reason']}")
        rows_total += len(ids)
    return {"setup_s": time.perf_counter() - start, "shards": len(shards), "rows": rows_total}


def measure(spec: dict) -> dict:
    """Plan, resume (a complete output) and validate, timed; peak and baseline RSS."""
    maxrss_at_start = _maxrss_mb()
    from segray.segment.output import Output
    from segray.segment.plan import plan_inputs
    from segray.storage import Location

    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    shards = list(plan_inputs([spec["input"]], shard_size=spec["shard_size"]))
    plan_s = time.perf_counter() - start

    start = time.perf_counter()
    out = Output(Location.parse(spec["out"]))
    out.scan()
    pending, _ = out.resume_plan(shards, retry_errors=False)
    resume_s = time.perf_counter() - start
    if pending:
        raise RuntimeError(f"resume of a complete output: {len(pending)} shard(s) left to do")

    start = time.perf_counter()
    summary = out.validate_and_summarise(shards, {}, run_id=RUN_ID)
    validate_s = time.perf_counter() - start
    if summary["rows"] != spec["n"] or summary["ok"] != spec["n"]:
        raise RuntimeError(f"validation counted {summary['rows']} rows, expected {spec['n']}")
    return {
        "shards": len(shards),
        "plan_s": plan_s,
        "resume_s": resume_s,
        "validate_s": validate_s,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _status_mb("VmHWM"),
        "ru_maxrss_mb": _maxrss_mb(),
        "ru_maxrss_at_start_mb": maxrss_at_start,
    }


CHILDREN = {"build-parquet": build_parquet, "setup": setup_output, "measure": measure}


# --------------------------------------------------------------------------- part 1: driver
def make_files(root: Path, n: int, per_folder: int) -> float:
    """``n`` copies of the tiny PNG under ``root/<folder>/<i>.png``; seconds taken."""
    data = tiny_png()
    start = time.perf_counter()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    folder = ""
    for i in range(n):
        if i % per_folder == 0:
            folder = str(root / f"{i // per_folder:05d}")
            os.makedirs(folder)
        fd = os.open(f"{folder}/{i:07d}.png", flags, 0o644)
        os.write(fd, data)
        os.close(fd)
    return time.perf_counter() - start


def scale_one(kind: str, n: int, args: argparse.Namespace, tmp: Path) -> dict:
    work = tmp / f"{kind}-{n}"
    work.mkdir()
    try:
        if kind == "parquet":
            path = work / "images.parquet"
            built = _child(
                "build-parquet", {"n": n, "row_group": args.row_group, "path": str(path)}
            )
            input_, build_s = str(path), built["build_s"]
        else:
            input_ = str(work / "images")
            build_s = make_files(Path(input_), n, args.per_folder)
        print(f"{kind} {n}: input built in {build_s:.1f} s", flush=True)
        spec = {"input": input_, "out": str(work / "out"), "shard_size": args.shard_size, "n": n}
        setup = _child("setup", spec)
        print(f"{kind} {n}: output faked in {setup['setup_s']:.1f} s", flush=True)
        result = _child("measure", spec)
        print(f"{kind} {n}: {result}", flush=True)
    finally:
        start = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)
        cleanup_s = time.perf_counter() - start
    return {
        "kind": kind,
        "inputs": n,
        "build_s": build_s,
        "setup_s": setup["setup_s"],
        "cleanup_s": cleanup_s,
        **result,
        "per_100k": {
            phase: result[f"{phase}_s"] * 1e5 / n for phase in ("plan", "resume", "validate")
        },
    }


def part_scale(args: argparse.Namespace, tmp: Path) -> dict:
    inodes = os.statvfs(tmp).f_ffree
    needed = sum(args.sizes) * 1.01 if "files" in args.kinds else 0
    if needed > inodes:
        raise SystemExit(f"--tmp {tmp}: {inodes} free inodes, the files inputs need {needed:.0f}")
    runs = [scale_one(kind, n, args, tmp) for kind in args.kinds for n in args.sizes]
    targets = []
    for kind in args.kinds:
        by_n = {r["inputs"]: r for r in runs if r["kind"] == kind}
        small, large = min(by_n), max(by_n)
        growth = by_n[large]["peak_rss_mb"] / by_n[small]["peak_rss_mb"]
        targets.append(
            {
                "kind": kind,
                "what": f"peak RSS at {large} / at {small}",
                "value": growth,
                "target": f"<= {MAX_GROWTH}",
                "pass": growth <= MAX_GROWTH,
            }
        )
    worst = max(r["plan_s"] * 1e6 / r["inputs"] for r in runs)
    targets.append(
        {
            "kind": "all",
            "what": "planning s per million inputs (worst)",
            "value": worst,
            "target": f"< {PLAN_S_PER_MILLION:g}",
            "pass": worst < PLAN_S_PER_MILLION,
        }
    )
    return {"runs": runs, "targets": targets}


def scale_table(part: dict, settings: dict) -> str:
    lines = [
        f"{'kind':<8}{'inputs':>9}{'shards':>7}{'build s':>9}{'setup s':>9}{'plan s':>8}"
        f"{'resume s':>9}{'valid s':>8}{'s/100k':>8}{'base MB':>9}{'peak MB':>9}",
        "-" * 93,
    ]
    for r in part["runs"]:
        per = sum(r["per_100k"].values())
        lines.append(
            f"{r['kind']:<8}{r['inputs']:>9}{r['shards']:>7}{r['build_s']:>9.1f}"
            f"{r['setup_s']:>9.1f}{r['plan_s']:>8.2f}{r['resume_s']:>9.2f}"
            f"{r['validate_s']:>8.2f}{per:>8.2f}{r['baseline_rss_mb']:>9.0f}"
            f"{r['peak_rss_mb']:>9.0f}"
        )
    lines.append("-" * 93)
    for t in part["targets"]:
        verdict = "PASS" if t["pass"] else "FAIL"
        lines.append(
            f"{verdict}  {t['kind']}: {t['what']} = {t['value']:.2f} (target {t['target']})"
        )
    lines.append(
        f"shard_size {settings['shard_size']}; parquet: one file, row groups of "
        f"{settings['row_group']} rows; files: {settings['per_folder']} per folder on local "
        "disk. build: creating the input; setup: faking the complete output (commit_shard per "
        "shard), not timed in the measurement; s/100k: plan + resume + validate per 100k "
        "inputs; base: RSS after imports, peak: VmHWM of the measuring process (plan + resume + "
        "validate only)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- part 2
def segment(ckpt: Path, inputs: list[str], output: str, overrides: list[str]) -> dict:
    import segment_throughput

    """``run_segment`` in a fresh process with its own local Ray (this process's env)."""
    args = {
        "checkpoint": str(ckpt),
        "inputs": inputs,
        "output": output,
        "overrides": overrides,
        "overwrite": True,
        "progress": False,
    }
    proc = subprocess.run(
        [sys.executable, "-c", segment_throughput._DRIVER, json.dumps(args)],
        env={**os.environ, "RAY_ADDRESS": ""},
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SUMMARY ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"segray segment {inputs} -> {output} failed:\n{out[-4000:]}")
    summary = json.loads(line[len("SUMMARY ") :])
    return {
        "images": summary["rows"],
        "processed": summary["processed"],
        "images_per_s": summary["images_per_s"],
        "pipeline_s": summary["pipeline_s"],
        "end_to_end_s": summary["end_to_end_s"],
    }


def part_s3(args: argparse.Namespace, tmp: Path) -> dict:
    import segment_throughput  # its images, checkpoint and driver (imports torch: Part 2 only)

    from segray.storage import Location
    from tests.s3 import S3Server, s3_environ, set_environ

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    cpus = os.cpu_count() or 1
    io_cpus = 0.25
    overrides = [
        "segment.batch_size=8",
        f"segment.concurrency={cpus}",
        f"segment.cpus_per_actor={(cpus - io_cpus) / cpus:g}",
        f"segment.io_cpus={io_cpus:g}",
        "segment.shard_size=100",
        "segment.precision=auto",
    ]
    folder = tmp / "s3-bench" / "in"
    paths = segment_throughput.generate(folder, args.images, args.size, mixed=0.0)
    ckpt = segment_throughput.checkpoint(tmp / "s3-bench" / "ckpt", "resnet18-unet", args.size)
    rounds: dict[str, list[dict]] = {"local": [], "s3": []}
    with ray_lock(), S3Server() as server:
        old = set_environ(s3_environ(server.endpoint))  # before Ray starts: workers inherit
        try:
            bucket = server.bucket(BUCKET)
            start = time.perf_counter()
            for path in paths:
                rel = path.relative_to(folder).as_posix()
                Location.parse(f"{bucket}/in/{rel}").write(path.read_bytes())
            upload_s = time.perf_counter() - start
            runs = {
                "local": ([str(folder)], str(tmp / "s3-bench" / "out")),
                "s3": ([f"{bucket}/in"], f"{bucket}/out"),
            }
            for r in range(args.rounds):
                for name, (inputs, output) in runs.items():
                    result = segment(ckpt, inputs, output, overrides)
                    if result["images"] != args.images:
                        raise RuntimeError(f"{name}: {result['images']} rows, {args.images} images")
                    rounds[name].append(result)
                    print(f"round {r + 1} {name}: {result}", flush=True)
        finally:
            set_environ(old)
    best = {name: max(rs, key=lambda x: x["images_per_s"]) for name, rs in rounds.items()}
    ratio = best["s3"]["images_per_s"] / best["local"]["images_per_s"]
    return {
        "overrides": overrides,
        "upload_s": upload_s,
        "rounds": rounds,
        "best": best,
        "s3_over_local": ratio,
        "pass": ratio >= S3_OVER_LOCAL,
    }


def s3_table(part: dict, settings: dict) -> str:
    lines = [
        f"{'run':<34}{'images':>7}{'img/s':>8}{'pipeline s':>12}{'end to end s':>14}"
        f"{'rounds img/s':>20}",
        "-" * 95,
    ]
    labels = {"local": "local folder -> local folder", "s3": "s3://in -> s3://out (moto)"}
    for name, label in labels.items():
        b = part["best"][name]
        each = ", ".join(f"{r['images_per_s']:.2f}" for r in part["rounds"][name])
        lines.append(
            f"{label:<34}{b['images']:>7}{b['images_per_s']:>8.2f}{b['pipeline_s']:>12.1f}"
            f"{b['end_to_end_s']:>14.1f}{each:>20}"
        )
    lines.append("-" * 95)
    verdict = "PASS" if part["pass"] else "FAIL"
    lines.append(
        f"{verdict}  S3 / local = {part['s3_over_local']:.2f} (target >= {S3_OVER_LOCAL}), best "
        "round of each"
    )
    lines.append(
        f"{settings['images']} images {settings['size']}x{settings['size']} (1 in 4 JPEG), "
        f"resnet18-U-Net (random weights), {' '.join(part['overrides'])}; img/s: the summary's "
        f"images_per_s (pipeline, Ray start excluded); upload {part['upload_s']:.1f} s; the "
        "moto server runs in the benchmark's process, on the same CPUs"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # a measurement in a fresh process (see _child)
        print("RESULT " + json.dumps(CHILDREN[argv[1]](json.loads(argv[2]))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["scale", "s3", "all"], default="all")
    parser.add_argument(
        "--sizes",
        type=lambda s: sorted(int(x) for x in s.split(",")),
        default=[10_000, 100_000, 1_000_000],
        help="input counts of part 1, comma-separated",
    )
    parser.add_argument(
        "--kinds", type=lambda s: s.split(","), default=["parquet", "files"], help="part 1 inputs"
    )
    parser.add_argument("--shard-size", type=int, default=256, help="plan_inputs shard_size")
    parser.add_argument("--row-group", type=int, default=1000, help="parquet: rows per group")
    parser.add_argument("--per-folder", type=int, default=1000, help="files: files per folder")
    parser.add_argument("--images", type=int, default=400, help="part 2: images")
    parser.add_argument("--size", type=int, default=256, help="part 2: image side")
    parser.add_argument("--rounds", type=int, default=3, help="part 2: interleaved rounds")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "segment_scale.json"
    )
    args = parser.parse_args(argv)
    if unknown := set(args.kinds) - {"parquet", "files"}:
        parser.error(f"--kinds: unknown {', '.join(sorted(unknown))}; use parquet and/or files")

    settings = {k: v for k, v in vars(args).items() if k not in ("tmp", "output")}
    report: dict = {"settings": settings, "cpus": os.cpu_count(), "load_average": {}}
    tables = []
    report["load_average"]["before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="segray-scale-", dir=args.tmp) as tmp:
        if args.part in ("scale", "all"):
            report["scale"] = part_scale(args, Path(tmp))
            tables.append(scale_table(report["scale"], settings))
        if args.part in ("s3", "all"):
            report["s3"] = part_s3(args, Path(tmp))
            tables.append(s3_table(report["s3"], settings))
    report["load_average"]["after"] = os.getloadavg()[0]
    tables.append(
        f"load average {report['load_average']['before']:.2f} before, "
        f"{report['load_average']['after']:.2f} after; {report['cpus']} CPUs"
    )
    publish(report, "\n\n".join(tables), args.output)


if __name__ == "__main__":
    main()
