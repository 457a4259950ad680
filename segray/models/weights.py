"""Pretrained weights: torchvision's weights API, a local-file alternative, a clear offline error.

Models are always built with random initialisation first; :func:`load_pretrained` then
fetches a state dict (:func:`fetch_state_dict`) and copies it in. The state dict comes either
from torchvision's weights API (``WeightsEnum.get_state_dict``, which downloads into
``$TORCH_HOME/hub/checkpoints/`` once and reuses the cached file) or, when ``weights_path`` is
given, from that local file, which is what an offline cluster node uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models import WeightsEnum

from segray.errors import UserError


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights were requested but could not be downloaded (typically no network)."""


def check_pretrained_args(
    model_name: str, pretrained: bool, weights_path: str | None, *, available: bool = True
) -> None:
    """Validate the ``pretrained`` / ``weights_path`` pair every model accepts.

    Args:
        model_name: registry name, used in the error messages.
        pretrained: whether the caller asked for pretrained weights.
        weights_path: local weights file, only meaningful with ``pretrained=True``.
        available: ``False`` for models that have no pretrained weights at all.
    """
    if not available and (pretrained or weights_path is not None):
        raise ValueError(f"model '{model_name}' has no pretrained weights")
    if weights_path is not None and not pretrained:
        raise ValueError(
            f"model '{model_name}' got weights_path={weights_path!r} with pretrained=False; "
            "set pretrained=True to load that file"
        )


def fetch_state_dict(weights: WeightsEnum, weights_path: str | None) -> dict[str, torch.Tensor]:
    """Return the state dict of ``weights``, from ``weights_path`` if given, else downloaded.

    Args:
        weights: the torchvision weights entry, e.g. ``ResNet50_Weights.IMAGENET1K_V2``.
        weights_path: a local copy of that file (``.pth``); skips the weights API entirely.

    Raises:
        FileNotFoundError: ``weights_path`` does not exist.
        PretrainedWeightsError: the download failed (no network, DNS, proxy, HTTP error).
    """
    if weights_path is not None:
        path = os.path.expanduser(weights_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(
                f"pretrained weights file {path} holds a {type(state).__name__}, "
                "expected a state dict (parameter name -> tensor)"
            )
        return dict(state)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # URLError, HTTPError, ConnectionError and socket timeouts are OSErrors
        cause = " ".join(f"{type(err).__name__}: {err}".split())
        hub_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise PretrainedWeightsError(
            f"cannot download pretrained weights {weights!r} ({weights.url}): {cause}; "
            "no network? Download that file on a machine with network and pass "
            "model.weights_path=/path/to/file.pth "
            f"(or put it in $TORCH_HOME/hub/checkpoints/, here {hub_dir}/)"
        ) from err


def adapt_input_weight(rgb: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Pretrained RGB filters ``(O, 3, k, k)`` -> filters ``(O, in_channels, k, k)``.

    timm's rule (``timm.models._manipulate.adapt_input_conv``): 1 channel takes the sum of the
    three RGB filters (a gray image then gives the response an RGB image of that gray gave);
    N channels take the RGB filters repeated in order (R, G, B, R, G, ...) and scaled by 3/N,
    so the first three bands of an RGB + NIR image keep their colour filters and the
    activations keep their scale (exactly so for N a multiple of 3).
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected RGB conv filters (O, 3, k, k), got shape {tuple(rgb.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 1:
        return rgb.sum(dim=1, keepdim=True)
    if in_channels == 3:
        return rgb.clone()
    repeats = -(-in_channels // 3)
    return rgb.repeat(1, repeats, 1, 1)[:, :in_channels] * (3.0 / in_channels)


def load_pretrained(
    module: nn.Module,
    weights: WeightsEnum,
    weights_path: str | None,
    *,
    input_conv: str,
    ignore_prefixes: tuple[str, ...] = (),
    skip_mismatched: bool = False,
) -> None:
    """Copy pretrained weights into ``module`` (in place).

    Args:
        module: the freshly built network (or encoder) to fill; the state dict must fit it.
        weights: torchvision weights entry to download when ``weights_path`` is None.
        weights_path: local file to load instead of downloading.
        input_conv: key of the first conv's weight (e.g. ``"conv1.weight"``). When ``module``
            takes N != 3 input channels there, the pretrained RGB filters are adapted to N
            (`adapt_input_weight`).
        ignore_prefixes: keys of the file to drop (a classifier ``module`` no longer has).
        skip_mismatched: keep ``module``'s own initialisation for keys whose shapes differ
            (a replaced classifier); when False any difference is an error.

    Raises:
        ValueError: the file's keys or shapes do not fit ``module`` (after the rules above).
    """
    source = weights_path or repr(weights)
    state = {
        key: value
        for key, value in fetch_state_dict(weights, weights_path).items()
        if not key.startswith(ignore_prefixes)
    }
    target = module.state_dict()
    rgb = state.get(input_conv)
    if rgb is not None and rgb.ndim == 4 and input_conv in target:
        wanted = target[input_conv].shape[1]
        if rgb.shape[1] == 3 and wanted != 3:
            state[input_conv] = adapt_input_weight(rgb, wanted)

    mismatched = sorted(
        key for key in state.keys() & target.keys() if state[key].shape != target[key].shape
    )
    if skip_mismatched:
        for key in mismatched:
            del state[key]
    elif mismatched:
        key = mismatched[0]
        raise ValueError(
            f"pretrained weights {source} do not fit {type(module).__name__}: {key} has shape "
            f"{tuple(state[key].shape)}, the model {tuple(target[key].shape)} "
            f"({len(mismatched)} mismatched tensors)"
        )

    missing = sorted(target.keys() - state.keys() - set(mismatched))
    unexpected = sorted(state.keys() - target.keys())
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights {source} do not fit {type(module).__name__}: "
            f"{len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    module.load_state_dict(state, strict=False)
