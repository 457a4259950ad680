"""Bulk-segmentation throughput on this machine: `segray segment` against a plain PyTorch loop
and against the model alone, on the same checkpoint and the same generated images.

Usage::

    python benchmarks/segment_throughput.py [--images 2000] [--rss 1000 10000] [--size 256]
        [--mixed 0.2] [--model resnet18-unet|unet-w8|resnet50-unet] [--concurrency CPUS]
        [--cpus-per-actor auto] [--batch 8] [--precision auto|fp32|bf16]
        [--set segment.compile=true ...] [--baseline segment.precision=fp32 ... --rounds 3
        --ab-images N]
        [--output benchmarks/results/segment_throughput.json]

Images: ``--size`` squared (``--mixed`` of them of random sizes from 96 to 2.5 x size, so some
are tiled), smooth random scenes saved as PNG and JPEG, generated once into a cache folder.
Checkpoint (``--model``, seeded random weights, ``segment.tile_size = --size``):
``resnet18-unet``, the atrous ResNet18-U-Net that ``segray demo`` trains and segments with, or
``unet-w8``, a classic U-Net of base width 8 whose forward pass costs about as much as decoding
the image: a stress test of the pipeline's own per-image overhead, or ``resnet50-unet``, the
flagship atrous ResNet50-U-Net of ``configs/tune_cluster.yaml``.

(a) ``run_segment`` in a fresh Python process with its own local Ray (images/s over the
    pipeline, the summary's ``images_per_s``; end-to-end including Ray start-up is reported too),
(b) a plain PyTorch loop: DataLoader (``cpu_count`` workers) decoding with segray's decoder ->
    the same `Segmenter` -> the same mask statistics and PNG encoding -> pyarrow ParquetWriter,
(c) the model alone: `Segmenter.predict_batch_proba` on images decoded beforehand (the ceiling),
    in the best precision this CPU runs (`segray.precision` ``auto``: bf16 + channels_last
    where the CPU has native bf16), whatever ``--precision`` (a) and (b) run.

``--precision`` is ``segment.precision`` of (a) and the `Segmenter` precision of (b).
``--set K=V ...`` adds overrides to (a). ``--baseline K=V ...`` also runs (a) at ``--images``
with those overrides on top (e.g. ``segment.precision=fp32``, the CPU default before the
precision policy), interleaved with (a) for ``--rounds`` rounds so that other work on the
machine slows both alike; the report gives each one's best and median round and their ratio.

Peak memory of (a) is sampled from /proc: the driver's RSS every 0.25 s, and every 5 s the
summed PSS of the driver and every process it started (Ray's raylet, GCS, workers, the actors;
shared object-store pages counted once), at each ``--rss`` image count. Runs under the machine-wide Ray
lock of the tests (``SEGRAY_RAY_LOCK``), so no test's Ray competes for the CPUs. Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import publish, ray_lock  # noqa: E402

from segray.checkpoint import build_model, save_checkpoint  # noqa: E402
from segray.config import load_config  # noqa: E402
from segray.data.io import decode_image  # noqa: E402
from segray.inference.segmenter import load_segmenter  # noqa: E402
from segray.segment.infer import encode_mask_png, mask_stats  # noqa: E402

FOLDER = 200  # images per generated sub-folder; a run over N images takes the first N / FOLDER


# --------------------------------------------------------------------------- data
def generate(
    cache: Path, count: int, size: int, mixed: float, seed: int = 0, folder_size: int = FOLDER
) -> list[Path]:
    """``count`` smooth random scenes (cached): folders of ``folder_size`` images, 1 in 4 a
    JPEG."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        big = size * 5 // 2
        h, w = rng.integers(96, big, 2) if rng.random() < mixed else (size, size)
        folder = cache / f"{i // folder_size:03d}"
        path = folder / (f"{i:06d}.jpg" if i % 4 == 3 else f"{i:06d}.png")
        paths.append(path)
        if path.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((int(w), int(h)), Image.BICUBIC)
        image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
    return paths


# The models a run can use: the one `segray demo` trains and segments with (an atrous
# ResNet18-U-Net), and a tiny classic U-Net whose forward pass costs little more than decoding,
# a stress test of the pipeline's own overhead.
MODELS = {
    "resnet18-unet": [
        "model.name=resnet_unet",
        "model.encoder=resnet18",
        "model.decoder_channels=[64,32,16,8]",
    ],
    "unet-w8": ["model.name=unet", "model.base_width=8"],
    # the flagship of configs/tune_cluster.yaml: atrous ResNet50-U-Net, default decoder
    "resnet50-unet": ["model.name=resnet_unet", "model.encoder=resnet50"],
}


def checkpoint(directory: Path, model: str, size: int) -> Path:
    """A checkpoint of ``model`` (a key of MODELS) with seeded random weights."""
    torch.manual_seed(0)
    cfg = load_config(None, [*MODELS[model], f"segment.tile_size={size}"])
    return save_checkpoint(
        directory, model=build_model(cfg, pretrained=False), config=cfg, metrics={}
    )


# --------------------------------------------------------------------------- (c) model alone
def model_alone(ckpt: Path, paths: list[Path], batch: int) -> tuple[float, int]:
    """Best images/s of 1 thread and of every CPU's thread (on a busy machine, fewer threads
    than cores can be faster), and the thread count that gave it; best precision (auto)."""
    seg = load_segmenter(ckpt, device="cpu", batch_size=batch, precision="auto")
    arrays = [decode_image(p, channels=3) for p in paths]
    best = (0.0, 1)
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        seg.predict_batch_proba(arrays[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(arrays), batch):
            seg.predict_batch_proba(arrays[i : i + batch])
        best = max(best, (len(arrays) / (time.perf_counter() - start), threads))
    return best


# --------------------------------------------------------------------------- (b) plain loop
class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return str(self.paths[i]), decode_image(self.paths[i], channels=3)
        except ValueError as e:
            return str(self.paths[i]), str(e)


def plain_loop(
    ckpt: Path, paths: list[Path], batch: int, out: Path, workers: int, precision: str
) -> float:
    """The loop one would write by hand: ``workers`` decode, the other CPUs run the model."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    start = time.perf_counter()
    seg = load_segmenter(ckpt, device="cpu", batch_size=batch, precision=precision)
    loader = torch.utils.data.DataLoader(
        _Files(paths),
        batch_size=batch,
        num_workers=workers,
        collate_fn=lambda items: items,
        persistent_workers=False,
    )
    schema = pa.schema(
        [
            ("image_id", pa.string()),
            ("mask_png", pa.binary()),
            ("foreground_fraction", pa.float32()),
            ("mean_confidence", pa.float32()),
            ("uncertain_fraction", pa.float32()),
            ("num_components", pa.int32()),
        ]
    )
    with pq.ParquetWriter(out, schema) as writer:
        for items in loader:
            good = [(name, image) for name, image in items if not isinstance(image, str)]
            probas = seg.predict_batch_proba([image for _, image in good])
            rows = []
            for (name, _), proba in zip(good, probas, strict=True):
                mask = seg.mask_from_proba(proba)
                stats = mask_stats(proba, mask, low=0.3, high=0.7)
                rows.append(
                    {
                        "image_id": name,
                        "mask_png": encode_mask_png(mask, 2),
                        **{k: stats[k] for k in schema.names[2:]},
                    }
                )
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return len(paths) / (time.perf_counter() - start)


# --------------------------------------------------------------------------- (a) segray segment
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _kb(pid: int, file: str, *keys: str) -> list[int]:
    """The kB values of ``keys`` (e.g. ``"Pss:"``) in ``/proc/PID/FILE``; 0 where absent."""
    found = dict.fromkeys(keys, 0)
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in found:
                found[key] = int(line.split()[1])
    except OSError:
        pass
    return list(found.values())


def _process_name(pid: int) -> str:
    """A process's kind: Ray's title (``ray::IDLE``, ``ray::MapWorker(...)``) or its program."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace")
    name = first.split()[0] if first.strip() else "?"
    return name[:60] if name.startswith("ray::") else Path(name).name or "?"


class MemorySampler(threading.Thread):
    """Peak driver RSS (every ``every`` s) and peak summed PSS of a process and all its
    descendants (every ``pss_every`` s), split into anonymous memory (the processes' heaps:
    what a leak grows) and shared memory (Ray's object store, mapped by every worker).

    Reading ``smaps_rollup`` walks a process's page tables, and Ray's processes map the whole
    object store: sampling the tree's PSS every 0.25 s cost (a) 13% of its throughput here,
    so PSS is sampled rarely (its peak moves slowly), the cheap driver RSS often."""

    def __init__(self, pid: int, every: float = 0.25, pss_every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.pss_every = pid, every, pss_every
        self.peak_driver_mb = self.peak_tree_mb = self.peak_anon_mb = self.peak_shmem_mb = 0.0
        self.anon_by_process: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        next_pss = time.monotonic() + 1.0
        while not self.stop.is_set():
            rss = _kb(self.pid, "status", "VmRSS:")[0] / 1024
            self.peak_driver_mb = max(self.peak_driver_mb, rss)
            if time.monotonic() >= next_pss:
                next_pss = time.monotonic() + self.pss_every
                tree, todo, pids = _children(), [self.pid], []
                while todo:
                    pid = todo.pop()
                    pids.append(pid)
                    todo.extend(tree.get(pid, []))
                pss = [_kb(p, "smaps_rollup", "Pss:", "Pss_Anon:", "Pss_Shmem:") for p in pids]
                total, anon, shmem = (sum(col) / 1024 for col in zip(*pss, strict=True))
                self.peak_tree_mb = max(self.peak_tree_mb, total)
                self.peak_shmem_mb = max(self.peak_shmem_mb, shmem)
                if anon > self.peak_anon_mb:  # whose heaps, at the peak
                    self.peak_anon_mb = anon
                    by: dict[str, float] = {}
                    for pid, (_, pid_anon, _) in zip(pids, pss, strict=True):
                        name = _process_name(pid)
                        by[name] = by.get(name, 0.0) + pid_anon / 1024
                    self.anon_by_process = dict(sorted(by.items(), key=lambda kv: -kv[1]))
            self.stop.wait(self.every)


_DRIVER = """
import json, sys, time
from segray.segment import run_segment
args = json.loads(sys.argv[1])
start = time.perf_counter()
summary = run_segment(**args)
summary["end_to_end_s"] = time.perf_counter() - start
print("SUMMARY " + json.dumps(summary))
"""


def segray_segment(ckpt: Path, folders: list[Path], out: Path, overrides: list[str]) -> dict:
    args = {
        "checkpoint": str(ckpt),
        "inputs": [str(f) for f in folders],
        "output": str(out),
        "overrides": overrides,
        "overwrite": True,
        "progress": False,
    }
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, json.dumps(args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = MemorySampler(proc.pid)
    sampler.start()
    output = proc.communicate()[0]
    sampler.stop.set()
    sampler.join()
    line = next((x for x in output.splitlines() if x.startswith("SUMMARY ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"segray segment failed:\n{output[-4000:]}")
    summary = json.loads(line[len("SUMMARY ") :])
    return {
        "images": summary["rows"],
        "pipeline_s": summary["pipeline_s"],
        "images_per_s": summary["images_per_s"],
        "end_to_end_images_per_s": summary["rows"] / summary["end_to_end_s"],
        "peak_driver_rss_mb": round(sampler.peak_driver_mb, 1),
        "peak_total_pss_mb": round(sampler.peak_tree_mb, 1),
        "peak_anon_pss_mb": round(sampler.peak_anon_mb, 1),
        "peak_shmem_pss_mb": round(sampler.peak_shmem_mb, 1),
        "anon_pss_mb_by_process_at_peak": {
            k: round(v, 1) for k, v in sampler.anon_by_process.items()
        },
    }


# --------------------------------------------------------------------------- report
def _runs(runs: list[float] | None) -> str:
    """The reference's separate runs, when it was measured before and after (a)."""
    if not runs or len(runs) < 2:
        return ""
    return f"   (best of {runs[0]:.2f} before (a), {runs[1]:.2f} after)"


def _actor_heaps(memory: dict) -> float:
    """The inference actors' anonymous memory (MB) at the run's heap peak."""
    by = memory.get("anon_pss_mb_by_process_at_peak", {})
    return sum(mb for name, mb in by.items() if "_SegmentActor" in name)


def _ab_lines(report: dict) -> list[str]:
    ab = report["results"].get("ab")
    if not ab:
        return []
    s = report["settings"]
    return [
        f"(a) vs (a) with {' '.join(s['baseline'])}, interleaved rounds: "
        f"best {ab['a_best']:.2f} vs {ab['baseline_best']:.2f} img/s = "
        f"{ab['a_over_baseline']:.2f}x (median {ab['a_median']:.2f} vs "
        f"{ab['baseline_median']:.2f} = {ab['a_over_baseline_median']:.2f}x); best a/c = "
        f"{ab['best_a_over_c']:.2f}"
    ]


def format_table(report: dict) -> str:
    r, s = report["results"], report["settings"]
    lines = [
        f"{'variant':<44}{'images':>7}{'img/s':>9}",
        "-" * 60,
        f"{'(a) segray segment (pipeline)':<44}{r['a']['images']:>7}{r['a']['images_per_s']:>9.2f}",
        f"{'    segray segment (end to end, Ray start)':<44}{r['a']['images']:>7}"
        f"{r['a']['end_to_end_images_per_s']:>9.2f}",
        f"{'    segray segment (marginal, at scale)':<44}{r['marginal']['images']:>7}"
        f"{r['marginal']['images_per_s']:>9.2f}",
        f"{'(b) plain PyTorch loop (DataLoader)':<44}{s['images']:>7}{r['b_images_per_s']:>9.2f}"
        f"{_runs(r.get('b_runs'))}",
        f"{'(c) model alone, preloaded (ceiling)':<44}{s['images']:>7}{r['c_images_per_s']:>9.2f}"
        f"{_runs(r.get('c_runs'))}",
        "-" * 60,
        f"a/b = {r['a_over_b']:.2f} (target >= 1.0)   a/c = {r['a_over_c']:.2f} (target >= 0.85)"
        f"   at scale: a/b = {r['marginal_over_b']:.2f}, a/c = {r['marginal_over_c']:.2f}",
        *_ab_lines(report),
        "",
        f"{'segray segment memory':<28}{'images':>7}{'driver RSS MB':>15}{'all PSS MB':>12}"
        f"{'heaps MB':>10}{'actors MB':>11}{'shm MB':>8}",
    ]
    for m in r["memory"]:
        lines.append(
            f"{'':<28}{m['images']:>7}{m['peak_driver_rss_mb']:>15.0f}"
            f"{m['peak_total_pss_mb']:>12.0f}{m.get('peak_anon_pss_mb', 0):>10.0f}"
            f"{_actor_heaps(m):>11.0f}{m.get('peak_shmem_pss_mb', 0):>8.0f}"
        )
    lines.append(
        f"{s['size']}x{s['size']} images ({100 * s['mixed']:.0f}% of other sizes, tiled when larger), "
        f"model {s['model']}, batch {s['batch']}, {s['cpus']} CPUs, precision "
        f"{s.get('precision', 'fp32')} ((c): auto); (b) "
        f"{s['loader_workers']} DataLoader worker(s) + {s['b_threads']} torch thread(s); (c) "
        f"{s['c_threads']} thread(s); (a) {' '.join(s['overrides'])}; marginal = (images "
        f"{r['marginal']['between'][1]} - {r['marginal']['between'][0]}) / (pipeline time "
        "difference), start-up excluded; memory: peaks of the driver's RSS and of the PSS "
        "summed over the driver and all Ray processes, split into heaps (anonymous) and shared "
        "memory (the object store); actors: the inference actors' share of the heaps at their "
        "peak; load average "
        f"{report['load_average'][0]:.2f} "
        f"before, {report['load_average'][1]:.2f} after"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images for a, b and c")
    parser.add_argument(
        "--rss",
        type=int,
        nargs="+",
        default=[1000, 10000],
        help="image counts at which (a)'s peak memory is measured",
    )
    parser.add_argument("--size", type=int, default=256, help="side of most images; tile size")
    parser.add_argument("--mixed", type=float, default=0.2, help="fraction of other sizes")
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet18-unet")
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="segment.precision of (a) and (b); (c) always runs auto",
    )
    parser.add_argument(
        "--baseline",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="also run (a) with these overrides on top, interleaved with (a), --rounds times",
    )
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="more overrides of (a)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="--baseline: interleaved rounds")
    parser.add_argument(
        "--ab-images",
        type=int,
        default=None,
        help="--baseline: images per interleaved round (default --images; more for slow "
        "models, so start-up weighs less)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="segment.concurrency (default: one single-threaded actor per CPU)",
    )
    parser.add_argument(
        "--cpus-per-actor",
        default="auto",
        help="segment.cpus_per_actor (auto: the CPUs but io_cpus, / concurrency)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="(b) DataLoader workers (default: 1 up to 4 CPUs, else CPUs / 4)",
    )
    parser.add_argument(
        "--folder-size",
        type=int,
        default=FOLDER,
        help="images per generated folder: image counts are multiples of it (small for slow "
        "models)",
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "segray-bench")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "segment_throughput.json"
    )
    args = parser.parse_args(argv)

    cpus = os.cpu_count() or 1
    io_cpus = 0.25
    concurrency = args.concurrency or cpus
    per_actor = (
        float(args.cpus_per_actor)
        if args.cpus_per_actor != "auto"
        else (cpus - io_cpus) / concurrency
    )
    workers = args.workers or (1 if cpus <= 4 else cpus // 4)
    overrides = [
        f"segment.batch_size={args.batch}",
        f"segment.concurrency={concurrency}",
        f"segment.cpus_per_actor={per_actor:g}",
        f"segment.io_cpus={io_cpus:g}",
        f"segment.shard_size={max(1, args.folder_size // 2)}",
        f"segment.precision={args.precision}",
        *args.set,
    ]
    ab_images = args.ab_images or args.images
    counts = sorted({args.images, *args.rss})
    with ray_lock(), tempfile.TemporaryDirectory() as tmp:
        load_before = os.getloadavg()[0]
        cache = args.cache / f"{args.size}-{args.mixed}"
        if args.folder_size != FOLDER:
            cache = cache.with_name(f"{cache.name}-f{args.folder_size}")
        paths = generate(
            cache, max(*counts, ab_images), args.size, args.mixed, folder_size=args.folder_size
        )
        ckpt = checkpoint(Path(tmp) / "ckpt", args.model, args.size)
        subset = paths[: args.images]
        c_runs, b_runs = [], []

        def references() -> int:
            c, c_threads = model_alone(ckpt, subset, args.batch)
            print(f"(c) model alone: {c:.2f} images/s ({c_threads} threads)", flush=True)
            b = plain_loop(
                ckpt, subset, args.batch, Path(tmp) / "plain.parquet", workers, args.precision
            )
            print(f"(b) plain loop: {b:.2f} images/s", flush=True)
            c_runs.append(c)
            b_runs.append(b)
            return c_threads

        c_threads = references()
        memory = []
        for n in counts:
            folders = sorted({p.parent for p in paths[:n]})
            if n % args.folder_size:
                raise SystemExit(f"image counts must be multiples of {args.folder_size}, got {n}")
            result = segray_segment(ckpt, folders, Path(tmp) / f"out-{n}", overrides)
            print(f"(a) segray segment, {n} images: {result}", flush=True)
            memory.append(result)
        ab: dict[str, list[float]] = {}
        if args.baseline:  # (a) new vs (a) baseline, interleaved
            folders = sorted({p.parent for p in paths[:ab_images]})
            for r in range(args.rounds):
                for name, over in (("a", overrides), ("baseline", overrides + args.baseline)):
                    result = segray_segment(ckpt, folders, Path(tmp) / f"ab-{name}", over)
                    ab.setdefault(name, []).append(result["images_per_s"])
                    print(f"({name}) round {r + 1}: {result['images_per_s']:.2f} img/s", flush=True)
        # This machine's speed drifts over half an hour: (b) and (c) once more, after (a), and
        # the faster of each run is the reference (the ratios err on the low side).
        references()
    b, c = max(b_runs), max(c_runs)
    a = next(m for m in memory if m["images"] == args.images)
    lo, hi = memory[0], memory[-1]
    marginal = (hi["images"] - lo["images"]) / max(hi["pipeline_s"] - lo["pipeline_s"], 1e-9)
    marginal = marginal if hi is not lo else a["images_per_s"]
    report = {
        "settings": {
            "images": args.images,
            "size": args.size,
            "mixed": args.mixed,
            "model": args.model,
            "batch": args.batch,
            "cpus": cpus,
            "loader_workers": workers,
            "b_threads": max(1, cpus - workers),
            "c_threads": c_threads,
            "overrides": overrides,
            "torch": torch.__version__,
        },
        "load_average": [load_before, os.getloadavg()[0]],
        "results": {
            "a": a,
            "b_images_per_s": b,
            "c_images_per_s": c,
            "b_runs": b_runs,
            "c_runs": c_runs,
            "a_over_b": a["images_per_s"] / b,
            "a_over_c": a["images_per_s"] / c,
            "marginal": {
                "images": hi["images"],
                "images_per_s": marginal,
                "between": [lo["images"], hi["images"]],
            },
            "marginal_over_b": marginal / b,
            "marginal_over_c": marginal / c,
            "memory": memory,
        },
    }
    report["settings"]["precision"] = args.precision
    if ab:
        same = [a["images_per_s"]] if ab_images == args.images else []  # same image count
        new, old = max(ab["a"] + same), max(ab["baseline"])
        report["settings"]["baseline"] = args.baseline
        report["settings"]["ab_images"] = ab_images
        report["results"]["ab"] = {
            "rounds": ab,
            "a_best": new,
            "baseline_best": old,
            "a_median": statistics.median(ab["a"]),
            "baseline_median": statistics.median(ab["baseline"]),
            "a_over_baseline": new / old,
            "a_over_baseline_median": statistics.median(ab["a"])
            / statistics.median(ab["baseline"]),
            "best_a_over_c": new / c,
        }
    publish(report, format_table(report), args.output)


if __name__ == "__main__":
    main()
