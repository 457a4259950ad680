"""Tests of segray.precision: the policy (probes monkeypatched) and bf16 vs fp32 mask parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segray import precision as P
from segray.checkpoint import build_model
from segray.config import ConfigError, load_config
from segray.data.synth import render
from segray.engine import StepConfig
from segray.inference.segmenter import Segmenter
from segray.losses import create_loss


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr(P, "cuda_native_bf16", lambda: False)


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(P, "cuda_native_bf16", lambda: True)


# --------------------------------------------------------------------------- the policy
def test_auto_is_fp32_on_a_cpu_without_native_bf16(no_native_bf16: None) -> None:
    p = P.resolve_precision("auto", "cpu")
    assert p.dtype is None and p.name == "fp32" and not p.needs_scaler
    assert "no native bf16" in p.describe()


def test_auto_is_bf16_on_a_cpu_with_native_bf16(native_bf16: None) -> None:
    p = P.resolve_precision("auto", "cpu")
    assert p.dtype == torch.bfloat16 and not p.needs_scaler
    assert p.record() == {"precision": "bf16", "channels_last": p.channels_last}


def test_auto_on_cuda_is_bf16_where_native_else_fp16_with_a_scaler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(P, "cuda_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "cuda").dtype == torch.bfloat16
    monkeypatch.setattr(P, "cuda_native_bf16", lambda: False)  # T4, V100: bf16 only emulated
    p = P.resolve_precision("auto", "cuda")
    assert p.dtype == torch.float16 and p.needs_scaler and p.channels_last


def test_explicit_bf16_on_cpu_runs_bf16(no_native_bf16: None) -> None:
    p = P.resolve_precision("bf16", "cpu")
    assert p.dtype == torch.bfloat16
    conv = torch.nn.Conv2d(3, 4, 3)
    with p.autocast("cpu"):
        out = conv(torch.randn(1, 3, 8, 8))
    assert out.dtype == torch.bfloat16


def test_fp16_on_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(P.PrecisionError, match=r"^precision 'fp16' needs a CUDA GPU.*bf16") as e:
        P.resolve_precision("fp16", "cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"train: precision 'fp16' needs use_gpu"):
        load_config(None, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match=r"segment: precision 'fp16' needs gpus_per_actor"):
        load_config(None, ["segment.precision=fp16"])


def test_fp16_training_gets_a_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "cuda_native_bf16", lambda: False)
    cfg = load_config(None, ["train.use_gpu=true", "train.precision=fp16"])
    step = StepConfig.from_config(cfg.train, cfg.optim, torch.device("cuda"))
    assert step.precision.needs_scaler and step.precision.dtype == torch.float16
    assert P.resolve_precision("bf16", "cuda").needs_scaler is False


def test_channels_last_auto_true_false(no_native_bf16: None) -> None:
    assert P.resolve_precision("fp32", "cuda").channels_last
    assert P.resolve_precision("fp32", "cpu").channels_last == torch.backends.mkldnn.is_available()
    assert not P.resolve_precision("bf16", "cuda", channels_last=False).channels_last
    assert P.resolve_precision("fp32", "cpu", channels_last=True).channels_last


def test_old_amp_keys_name_their_replacement(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^train\.amp='bf16': replaced by train\.precision"):
        load_config(None, ["train.amp=bf16"])
    path = tmp_path / "old.yaml"
    path.write_text("segment:\n  amp: true\n")
    with pytest.raises(ConfigError, match=r"segment\.amp=True: replaced by segment\.precision"):
        load_config(path)


def test_the_probe_agrees_with_the_cpu_flags() -> None:
    flags = P._cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"} and torch.backends.mkldnn.is_available():
        assert P.cpu_native_bf16()
    if flags and not flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        assert not P.cpu_native_bf16()


# --------------------------------------------------------------------------- parity
SIZE, STEPS = 64, 160


def _scenes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = [render(rng, SIZE, 2) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(np.int64)


@pytest.fixture(scope="module")
def trained() -> Segmenter:
    """A small U-Net trained for a few hundred steps on synthetic scenes (fp32, seconds)."""
    cfg = load_config(None, ["model.name=unet", "model.base_width=8", "optim.lr=3e-3"])
    torch.manual_seed(0)
    model = build_model(cfg)
    loss_fn = create_loss(
        cfg.loss.name, num_classes=cfg.num_classes, bce_weight=cfg.loss.bce_weight
    )
    seg = Segmenter(model, cfg, device="cpu", precision="fp32", channels_last=False)
    images, masks = _scenes(64, seed=0)
    x_all = seg.preprocess(torch.from_numpy(images))
    y_all = torch.from_numpy(masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(STEPS):
        idx = torch.randint(0, len(images), (8,), generator=gen)
        loss, _ = loss_fn.compute(model(x_all[idx]), y_all[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return seg


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    inter = np.logical_and(pred == 1, target == 1).sum()
    return float(2 * inter / max(1, (pred == 1).sum() + (target == 1).sum()))


def test_bf16_masks_agree_with_fp32_on_a_trained_model(trained: Segmenter) -> None:
    images, targets = _scenes(24, seed=1)  # held out
    fp32 = np.stack(trained.predict_batch(list(images)))
    bf16_seg = Segmenter(trained.model, trained.config, device="cpu", precision="bf16")
    assert bf16_seg.precision.dtype == torch.bfloat16 and bf16_seg.channels_last
    bf16 = np.stack(bf16_seg.predict_batch(list(images)))
    dice32, dice16 = _dice(fp32, targets), _dice(bf16, targets)
    assert dice32 > 0.6, "the model did not learn: parity would be trivial"
    assert (fp32 == bf16).mean() >= 0.995
    assert abs(dice32 - dice16) <= 0.002
