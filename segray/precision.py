"""The numeric precision policy of every forward pass: training, evaluation and inference.

One setting, ``train.precision`` / ``segment.precision`` (and `Segmenter`'s ``precision``):

* ``auto``: bf16 autocast where the device runs bf16 natively, fp16 (+ GradScaler when
  training) on a CUDA GPU without native bf16 (T4, V100: their bf16 is emulated and slow),
  else fp32. Native bf16 means ``torch.cuda.is_bf16_supported(including_emulation=False)``
  on CUDA (Ampere and newer); on a CPU, oneDNN bf16 support together with the instructions
  that run it natively (x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``).
* ``fp32``: no autocast.  ``bf16``: bf16 autocast on any device.  ``fp16``: fp16 autocast,
  CUDA only (CPUs have no fast fp16 convolutions; it is refused there).

``channels_last`` (``auto | true | false``): ``auto`` runs NHWC where it is faster: on CUDA,
and on CPUs with oneDNN in both fp32 and bf16 (measured on 2 AVX-512 cores, ResNet18-U-Net
training steps: fp32 NHWC 1.5x NCHW, bf16 NHWC 2.8x; inference: 1.4x and 2.8x).

Autocast covers the model only: losses, metrics and the sigmoid/softmax that decide a mask
take the logits cast to float32. No Ray import: every process can resolve its own device.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch

from segray.config import ConfigError

__all__ = [
    "CHANNELS_LAST",
    "PRECISIONS",
    "ChannelsLast",
    "Precision",
    "PrecisionError",
    "PrecisionName",
    "native_bf16",
    "resolve_precision",
]

PrecisionName: TypeAlias = Literal["auto", "fp32", "bf16", "fp16"]
ChannelsLast: TypeAlias = Literal["auto"] | bool
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
CHANNELS_LAST: tuple[str, ...] = ("auto", "true", "false")

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {v: k for k, v in _DTYPES.items()}


class PrecisionError(ConfigError):
    """A precision the device cannot run (one-line message)."""


@dataclass(frozen=True)
class Precision:
    """How forward passes run: autocast dtype (None = fp32), memory format, and why.

    ``needs_scaler``: fp16 training needs a GradScaler (bf16 has fp32's exponent range).
    """

    dtype: torch.dtype | None = None
    channels_last: bool = False
    reason: str = ""

    @property
    def name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``."""
        return _NAMES[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)

    def describe(self) -> str:
        """One line for the logs, e.g. ``bf16 autocast, channels_last (auto: native bf16 ...)``."""
        text = ("fp32" if self.dtype is None else f"{self.name} autocast") + (
            ", channels_last" if self.channels_last else ""
        )
        return f"{text} ({self.reason})" if self.reason else text

    def record(self) -> dict[str, str | bool]:
        """What checkpoints' metrics.json and segment's summary.json record."""
        return {"precision": self.name, "channels_last": self.channels_last}


# --------------------------------------------------------------------------- capability probes
# Module-level functions, so tests can monkeypatch a device's capabilities.
def cuda_native_bf16() -> bool:
    """The current CUDA device computes bf16 natively (compute capability >= 8.0)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


@functools.cache
def cpu_native_bf16() -> bool:
    """oneDNN runs bf16 convolutions/matmuls on this CPU's native bf16 instructions."""
    if not torch.backends.mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is not None and not probe():
        return False
    flags = _cpu_flags()
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return "bf16" in flags  # aarch64: FEAT_BF16 (e.g. Graviton3, Neoverse V1/V2)


def _cpu_flags() -> set[str]:
    """Feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device | str) -> bool:
    """``device`` runs bf16 natively (not emulated)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return cuda_native_bf16()
    if kind == "cpu":
        return cpu_native_bf16()
    return False


# --------------------------------------------------------------------------- the policy
def resolve_precision(
    precision: str, device: torch.device | str, channels_last: ChannelsLast = "auto"
) -> Precision:
    """The `Precision` of ``precision`` (auto | fp32 | bf16 | fp16) on ``device``.

    Raises:
        PrecisionError: fp16 on a CPU, or an unknown name.
    """
    device = torch.device(device)
    kind = device.type
    if precision == "auto":
        if native_bf16(device):
            dtype, reason = torch.bfloat16, f"auto: native bf16 on {kind}"
        elif kind == "cuda":
            dtype, reason = torch.float16, "auto: no native bf16 on this GPU"
        else:
            dtype, reason = None, f"auto: no native bf16 on {kind}"
    elif precision in _DTYPES:
        if precision == "fp16" and kind != "cuda":
            raise PrecisionError(
                f"precision 'fp16' needs a CUDA GPU, the device is {kind}: use 'bf16' or 'fp32'"
            )
        dtype, reason = _DTYPES[precision], ""
    else:
        raise PrecisionError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if channels_last == "auto":
        nhwc = kind == "cuda" or (kind == "cpu" and torch.backends.mkldnn.is_available())
    else:
        nhwc = bool(channels_last)
    return Precision(dtype, nhwc, reason)
