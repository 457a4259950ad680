"""The fastest CPU runtime for segray's models, chosen by measurement.

Usage::

    python benchmarks/cpu_runtime.py [--models demo flagship] [--batch 8] [--threads 2]
        [--rounds 3] [--batches 2] [--runtimes eager-fp32 eager-fp32-cl eager-bf16-cl ...]
        [--output benchmarks/results/cpu_runtime.json]

Models (random seeded weights, eval mode, ``torch.inference_mode``):

* ``demo``: the atrous ResNet18-U-Net that ``segray demo`` trains, 256 x 256;
* ``flagship``: the atrous ResNet50-U-Net, 512 x 512;
* ``demo-narrow``: the demo's ResNet18-U-Net with the narrow decoder (64, 32, 16, 8) that
  ``benchmarks/segment_throughput.py`` segments with, 256 x 256.

Runtimes, all taking the same normalised float32 NCHW batch and returning probabilities:

* ``eager-fp32``: plain PyTorch, NCHW;
* ``eager-fp32-old``: what segray's CPU default ran before ``segment.precision``: fp32, NCHW
  weights, but a channels_last input, because the batch is a permuted (N, H, W, C) uint8
  array (``Preprocess``), so its convolutions already ran channels_last;
* ``eager-fp32-cl``: channels_last;
* ``eager-bf16-cl``: bf16 autocast + channels_last (`segray.precision`'s ``auto`` on a CPU with
  native bf16: what ``segray segment`` runs);
* ``compile-bf16-cl``: ``torch.compile`` (inductor, CPU C++/OpenMP codegen) of the same, shapes
  static; compile time reported separately, never in img/s;
* ``ort-fp32``: ONNX Runtime, CPUExecutionProvider, graph optimisations on, the TorchScript-based
  ONNX export of `segray.export` (opset 17).

ONNX Runtime has no bf16 convolution kernels on its CPU execution provider (bf16 there means
casting around fp32 kernels), so there is no ``ort-bf16`` row.

Runtimes are timed in interleaved rounds (every runtime once per round, ``--batches`` batches
each), so a machine shared with other work slows them alike; img/s is the best round, the
median is reported too. Parity: max |probability difference| and the fraction of equal masks
(threshold 0.5) against ``eager-fp32`` on the timed batch. With random weights many
probabilities sit near 0.5, so mask agreement here is a lower bound; the trained-model parity
check is ``tests/test_precision.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import publish  # noqa: E402

from segray.models import create_model  # noqa: E402
from segray.precision import cpu_native_bf16  # noqa: E402

MODELS: dict[str, tuple[str, dict[str, object], int]] = {
    "demo": ("resnet_unet", {"encoder": "resnet18", "pretrained": False}, 256),
    "flagship": ("resnet_unet", {"encoder": "resnet50", "pretrained": False}, 512),
    # the narrow-decoder variant that benchmarks/segment_throughput.py segments with
    "demo-narrow": (
        "resnet_unet",
        {"encoder": "resnet18", "decoder_channels": (64, 32, 16, 8), "pretrained": False},
        256,
    ),
}
RUNTIMES = (
    "eager-fp32",
    "eager-fp32-old",
    "eager-fp32-cl",
    "eager-bf16-cl",
    "compile-bf16-cl",
    "ort-fp32",
)
Runner = Callable[[torch.Tensor], torch.Tensor]


def _eager(
    model: torch.nn.Module, dtype: torch.dtype | None, nhwc: bool, nhwc_input: bool | None = None
) -> Runner:
    net = model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    nhwc_input = nhwc if nhwc_input is None else nhwc_input

    def run(x: torch.Tensor) -> torch.Tensor:
        if nhwc_input:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return torch.sigmoid(net(x).float())

    return run


def _compiled(model: torch.nn.Module) -> Runner:
    net = torch.compile(model.to(memory_format=torch.channels_last), dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.sigmoid(net(x).float())

    return run


def _ort(model: torch.nn.Module, example: torch.Tensor, threads: int, tmp: Path) -> Runner:
    import onnxruntime as ort

    path = tmp / "model.onnx"
    net = model.to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (example,), str(path), input_names=["x"], output_names=["y"],
            opset_version=17, dynamo=False,
        )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads spin after each run by default, stealing the cores from the runtimes
    # timed next (measured: eager PyTorch 20x slower beside an idle spinning session).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (y,) = session.run(None, {"x": x.numpy()})
        return torch.sigmoid(torch.from_numpy(y))

    return run


def build(runtime: str, model: torch.nn.Module, x: torch.Tensor, threads: int, tmp: Path):
    if runtime == "eager-fp32":
        return _eager(model, None, False)
    if runtime == "eager-fp32-old":
        return _eager(model, None, False, nhwc_input=True)
    if runtime == "eager-fp32-cl":
        return _eager(model, None, True)
    if runtime == "eager-bf16-cl":
        return _eager(model, torch.bfloat16, True)
    if runtime == "compile-bf16-cl":
        return _compiled(model)
    if runtime == "ort-fp32":
        return _ort(model, x, threads, tmp)
    raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")


def bench_model(key: str, runtimes: list[str], batch: int, threads: int, rounds: int, batches: int):
    name, kwargs, size = MODELS[key]
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=1, **kwargs).eval()
    x = torch.randn(batch, 3, size, size)
    rows: dict[str, dict] = {}
    runners: dict[str, Runner] = {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for runtime in runtimes:
            start = time.perf_counter()
            runners[runtime] = build(runtime, model, x, threads, Path(tmp))
            out = runners[runtime](x)  # warm-up (and compilation)
            rows[runtime] = {
                "setup_s": time.perf_counter() - start,
                "probs": out,
                "rounds": [],
            }
            print(f"  {key}: {runtime} ready in {rows[runtime]['setup_s']:.1f} s", flush=True)
        for r in range(rounds):
            for runtime in runtimes:
                start = time.perf_counter()
                for _ in range(batches):
                    runners[runtime](x)
                rate = batch * batches / (time.perf_counter() - start)
                rows[runtime]["rounds"].append(rate)
                print(f"  {key} round {r + 1}: {runtime} {rate:.2f} img/s", flush=True)
    reference = rows.get("eager-fp32", next(iter(rows.values())))["probs"]
    results = []
    for runtime in runtimes:
        row = rows[runtime]
        probs = row.pop("probs")
        results.append(
            {
                "model": key,
                "size": size,
                "runtime": runtime,
                "images_per_s": max(row["rounds"]),
                "median_images_per_s": statistics.median(row["rounds"]),
                "rounds": row["rounds"],
                "setup_s": row["setup_s"],
                "max_abs_diff": float((probs - reference).abs().max()),
                "mask_agreement": float(((probs >= 0.5) == (reference >= 0.5)).float().mean()),
            }
        )
    base = next((r["images_per_s"] for r in results if r["runtime"] == "eager-fp32"), None)
    old = next((r["images_per_s"] for r in results if r["runtime"] == "eager-fp32-old"), None)
    for r in results:
        r["speedup_vs_fp32"] = r["images_per_s"] / base if base else None
        r["speedup_vs_old"] = r["images_per_s"] / old if old else None
    return results


def format_table(report: dict) -> str:
    header = (
        f"{'model':<12}{'size':>5}  {'runtime':<17}{'img/s':>8}{'median':>8}{'x fp32':>8}{'x old':>7}"
        f"{'setup s':>9}{'max|dp|':>9}{'masks =':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in report["results"]:
        lines.append(
            f"{r['model']:<12}{r['size']:>5}  {r['runtime']:<17}{r['images_per_s']:>8.2f}"
            f"{r['median_images_per_s']:>8.2f}{r['speedup_vs_fp32'] or 0:>8.2f}"
            f"{r['speedup_vs_old'] or 0:>7.2f}"
            f"{r['setup_s']:>9.1f}{r['max_abs_diff']:>9.4f}{100 * r['mask_agreement']:>8.2f}%"
        )
    s = report["settings"]
    lines.append(
        f"batch {s['batch']}, {s['threads']} threads, {s['rounds']} interleaved rounds x "
        f"{s['batches']} batches (img/s: best round); native CPU bf16: {s['native_bf16']}; "
        f"load average {report['load_average'][0]:.2f} before, {report['load_average'][1]:.2f} "
        "after"
    )
    for model, w in report["winners"].items():
        lines.append(
            f"{model}: fastest {w['runtime']} ({w['over_eager_bf16_cl']:.2f}x eager-bf16-cl)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["demo", "flagship"])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--batches", type=int, default=2, help="timed batches per round")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_runtime.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = []
    for key in args.models:
        results += bench_model(
            key, args.runtimes, args.batch, args.threads, args.rounds, args.batches
        )
    winners = {}
    for key in args.models:
        rows = [r for r in results if r["model"] == key]
        best = max(rows, key=lambda r: r["images_per_s"])
        eager = next((r for r in rows if r["runtime"] == "eager-bf16-cl"), best)
        winners[key] = {
            "runtime": best["runtime"],
            "over_eager_bf16_cl": best["images_per_s"] / eager["images_per_s"],
        }
    report = {
        "settings": {
            "batch": args.batch,
            "threads": args.threads,
            "rounds": args.rounds,
            "batches": args.batches,
            "native_bf16": cpu_native_bf16(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "load_average": [load_before, os.getloadavg()[0]],
        "results": results,
        "winners": winners,
    }
    publish(report, format_table(report), args.output)


if __name__ == "__main__":
    main()
