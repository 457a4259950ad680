"""Forward-pass throughput of every segray model variant on this machine's CPU.

Usage::

    python benchmarks/forward.py [--sizes 256 512] [--models unet resnet_unet-resnet50 ...]
                                 [--batch 2] [--repeats N] [--min-time 3]
                                 [--precision auto|fp32|bf16]
                                 [--output benchmarks/results/forward.json]

For each variant and square input size: eval mode under ``torch.inference_mode``, one warm-up
forward, then timed forwards (``--repeats`` exactly, or as many as fit in ``--min-time``
seconds, at least one). FLOPs per image are counted with
``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy (convolutions and matmuls,
2 FLOPs per multiply-add; norms, activations and resizes are not counted). Forwards run in
``--precision`` (`segray.precision`; default ``auto``: bf16 autocast + channels_last on a CPU
with native bf16, else fp32 + channels_last), the best this CPU runs. The ceilings are the
best GFLOP/s of a 2048 x 2048 @ 2048 x 2048 matmul in fp32 and in bf16, timed in the same run;
"% ceil" is against the ceiling of the precision the forwards ran in. The "cpu %"
column (CPU time of this process / (wall time x threads)) shows whether other processes
competed for the cores during a cell. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from _common import publish
from torch.utils.flop_counter import FlopCounterMode

from segray.models import create_model
from segray.precision import Precision, resolve_precision

# variant name -> (registry name, kwargs); all take 3 channels and produce 1 class.
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "unet": ("unet", {"base_width": 64}),
    "resnet_unet-resnet18": ("resnet_unet", {"encoder": "resnet18"}),
    "resnet_unet-resnet34": ("resnet_unet", {"encoder": "resnet34"}),
    "resnet_unet-resnet50": ("resnet_unet", {"encoder": "resnet50"}),
    "resnet_unet-resnet34-plain": ("resnet_unet", {"encoder": "resnet34", "atrous": False}),
    "deeplabv3": ("deeplabv3", {}),
}
MATMUL_SIZE = 2048  # square fp32 matmul used as the machine's GFLOP/s ceiling
CEILING_SECONDS = 2.0  # how long the matmul ceiling is sampled


def matmul_ceiling_gflops(
    size: int = MATMUL_SIZE, seconds: float = CEILING_SECONDS, dtype: torch.dtype = torch.float32
) -> float:
    """Best GFLOP/s of ``size x size @ size x size`` matmuls in ``dtype`` for ``seconds``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def gflops_per_image(name: str, kwargs: dict[str, object], size: int) -> float:
    """Forward GFLOPs of one ``3 x size x size`` image, counted on the meta device (no compute)."""
    with torch.device("meta"):
        model = create_model(name, in_channels=3, num_classes=1, **kwargs).eval()
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def time_forward(
    model: torch.nn.Module,
    x: torch.Tensor,
    repeats: int | None,
    min_time: float,
    precision: Precision | None = None,
) -> tuple[int, float, float]:
    """Warm up once, then time forwards.

    Returns (number of forwards, wall seconds, CPU seconds of this process). CPU seconds well
    below ``wall * threads`` mean other processes competed for the cores.
    """
    count, elapsed = 0, 0.0

    def enough() -> bool:
        return count >= repeats if repeats else count >= 1 and elapsed >= min_time

    precision = precision or Precision()
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), precision.autocast("cpu"):
        model(x)
        cpu_start = time.process_time()
        while not enough():
            start = time.perf_counter()
            model(x)
            elapsed += time.perf_counter() - start
            count += 1
    return count, elapsed, time.process_time() - cpu_start


def run(
    variants: list[str],
    sizes: list[int],
    batch: int,
    repeats: int | None,
    min_time: float,
    precision: str = "auto",
) -> dict[str, object]:
    """Benchmark ``variants`` x ``sizes``; return the JSON-ready report."""
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    resolved = resolve_precision(precision, "cpu")
    ceiling_fp32 = matmul_ceiling_gflops()
    ceiling_bf16 = matmul_ceiling_gflops(dtype=torch.bfloat16)
    ceiling = ceiling_bf16 if resolved.dtype == torch.bfloat16 else ceiling_fp32
    print(
        f"{os.cpu_count()} CPU threads, torch {torch.__version__}, load average {load_before:.2f}; "
        f"ceilings ({MATMUL_SIZE}^3 matmul): fp32 {ceiling_fp32:.1f}, bf16 {ceiling_bf16:.1f} "
        f"GFLOP/s; forwards in {resolved.describe()}",
        flush=True,
    )
    rows = []
    for variant in variants:
        name, kwargs = VARIANTS[variant]
        torch.manual_seed(0)
        model = create_model(name, in_channels=3, num_classes=1, **kwargs).eval()
        params = sum(p.numel() for p in model.parameters())
        for size in sizes:
            flops = gflops_per_image(name, kwargs, size)
            count, elapsed, cpu = time_forward(
                model, torch.randn(batch, 3, size, size), repeats, min_time, resolved
            )
            images_per_s = batch * count / elapsed
            achieved = flops * images_per_s
            row = {
                "variant": variant,
                "model": name,
                "kwargs": kwargs,
                "size": size,
                "batch": batch,
                "params_m": params / 1e6,
                "forwards": count,
                "seconds_per_forward": elapsed / count,
                "images_per_s": images_per_s,
                "gflops_per_image": flops,
                "achieved_gflops": achieved,
                "pct_of_ceiling": 100 * achieved / ceiling,
                "cpu_share_pct": 100 * cpu / (elapsed * torch.get_num_threads()),
            }
            rows.append(row)
            print(
                f"  {variant} @ {size}: {images_per_s:.2f} img/s, {achieved:.1f} GFLOP/s",
                flush=True,
            )
    return {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
            "ceiling_gflops": ceiling,
            "ceiling_fp32_gflops": ceiling_fp32,
            "ceiling_bf16_gflops": ceiling_bf16,
            "ceiling": f"{MATMUL_SIZE}x{MATMUL_SIZE} @ {MATMUL_SIZE}x{MATMUL_SIZE} "
            f"{resolved.name} matmul",
        },
        "settings": {
            "batch": batch,
            "repeats": repeats,
            "min_time_s": min_time,
            "sizes": sizes,
            "precision": resolved.name,
            "channels_last": resolved.channels_last,
        },
        "results": rows,
    }


def format_table(report: dict[str, object]) -> str:
    """The report's results as a fixed-width text table."""
    header = (
        f"{'variant':<27}{'size':>5}{'params M':>10}{'GFLOP/img':>11}{'img/s':>8}"
        f"{'s/fwd':>8}{'GFLOP/s':>9}{'% ceil':>8}{'n':>4}{'cpu %':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in report["results"]:
        lines.append(
            f"{r['variant']:<27}{r['size']:>5}{r['params_m']:>10.1f}{r['gflops_per_image']:>11.1f}"
            f"{r['images_per_s']:>8.2f}{r['seconds_per_forward']:>8.2f}"
            f"{r['achieved_gflops']:>9.1f}{r['pct_of_ceiling']:>8.1f}{r['forwards']:>4}"
            f"{r['cpu_share_pct']:>7.0f}"
        )
    machine = report["machine"]
    lines.append(
        f"batch {report['settings']['batch']}, {report['settings']['precision']}"
        f"{' + channels_last' if report['settings']['channels_last'] else ''}; ceiling "
        f"{machine['ceiling_gflops']:.1f} GFLOP/s ({machine['ceiling']}, {machine['threads']} "
        f"threads; fp32 {machine['ceiling_fp32_gflops']:.1f}, bf16 "
        f"{machine['ceiling_bf16_gflops']:.1f}); load average "
        f"{machine['load_average_before']:.2f} before, {machine['load_average_after']:.2f} after; "
        "cpu % = this process's CPU time / (wall time x threads) while timing"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the benchmark, print the table and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square H = W")
    parser.add_argument(
        "--models", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="variants"
    )
    parser.add_argument("--batch", type=int, default=2, help="images per forward")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed forwards per cell (default: --min-time)"
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=3.0,
        help="without --repeats: time forwards until this many seconds (at least one forward)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="forward precision (segray.precision); auto = the best this CPU runs natively",
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/forward.json"))
    args = parser.parse_args(argv)

    report = run(args.models, args.sizes, args.batch, args.repeats, args.min_time, args.precision)
    publish(report, format_table(report), args.output)


if __name__ == "__main__":
    main()
