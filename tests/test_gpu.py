"""The GPU paths, run where CUDA is (skipped elsewhere): a 1-worker NCCL DDP epoch with AMP,
CUDA vs CPU forward parity, and `segray segment` on a GPU actor against the CPU run.

    python -m pytest -q -m gpu      # on a machine with a GPU
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from segray.checkpoint import save_checkpoint
from segray.config import load_config
from segray.models import create_model
from tests.conftest import TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

# CUDA and CPU kernels sum in different orders; with TF32 off, fp32 probabilities of this
# small model agree to this absolute tolerance (measured margin: ~100x).
FP32_TOLERANCE = 1e-4
MASK_AGREEMENT = 0.999  # bf16/fp16 on the GPU vs fp32 on the CPU: share of equal mask pixels


def _checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    config = load_config(None, ["model.name=unet", "model.base_width=8", "segment.tile_size=64"])
    model = create_model("unet", in_channels=3, num_classes=1, base_width=8)
    with torch.no_grad():
        model.head.weight.mul_(20)  # confident logits: masks with both classes
    return save_checkpoint(directory, model=model, config=config, metrics={})


def test_nccl_ddp_epoch_with_amp(ray_local, tmp_path: Path):
    from segray.train import run_training

    cfg = load_config(
        None, [*TINY, "train.use_gpu=true", "train.num_workers=1", "train.precision=auto"]
    )
    result = run_training(cfg, tmp_path / "run")
    history = result.history
    assert len(history) == 2 and history["train_loss"].map(math.isfinite).all()
    # auto on a GPU: bf16 where it is native (Ampere and newer), else fp16 with a GradScaler
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert result.best_metrics["precision"] == ("bf16" if native else "fp16")


def test_cuda_forward_equals_cpu_forward(tmp_path: Path):
    from segray.inference.segmenter import load_segmenter

    ckpt = _checkpoint(tmp_path / "ckpt")
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    cpu = load_segmenter(ckpt, device="cpu", precision="fp32").predict_proba(image)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = load_segmenter(ckpt, device="cuda", precision="fp32").predict_proba(image)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert np.abs(cpu - gpu).max() <= FP32_TOLERANCE
    auto = load_segmenter(ckpt, device="cuda").predict(image)  # bf16 / fp16
    cpu_mask = (cpu >= 0.5).astype(np.uint8)
    assert (auto == cpu_mask).mean() >= MASK_AGREEMENT


def test_segment_on_a_gpu_actor_agrees_with_the_cpu_run(ray_local, tmp_path: Path):
    from segray.segment import run_segment

    ckpt = _checkpoint(tmp_path / "ckpt")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (80, 100 + i, 3), dtype=np.uint8)).save(
            photos / f"{i}.png"
        )
    common = ["segment.cpus_per_actor=0.5", "segment.batch_size=4"]
    cpu = run_segment(ckpt, [str(photos)], tmp_path / "cpu", overrides=common, progress=False)
    gpu = run_segment(
        ckpt,
        [str(photos)],
        tmp_path / "gpu",
        overrides=[*common, "segment.gpus_per_actor=1"],
        progress=False,
    )
    assert cpu["ok"] == gpu["ok"] == 12 and gpu["precision"] in ("bf16", "fp16")
    a = pd.read_parquet(tmp_path / "cpu" / "parquet").set_index("image_id").sort_index()
    b = pd.read_parquet(tmp_path / "gpu" / "parquet").set_index("image_id").sort_index()
    same = total = 0
    for x, y in zip(a.mask_png, b.mask_png, strict=True):
        mx, my = (np.asarray(Image.open(io.BytesIO(v))) for v in (x, y))
        same += int((mx == my).sum())
        total += mx.size
    assert same / total >= MASK_AGREEMENT
