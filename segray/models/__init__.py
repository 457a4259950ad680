"""Segmentation models and their registry.

Each architecture lives in its own module and registers its class under a name with
``@register_model``; everything else builds models by name::

    from segray.models import create_model, list_models
    model = create_model("resnet_unet", encoder="resnet34", num_classes=1)

Every model takes ``in_channels`` (any N >= 1: 1 grayscale, 3 RGB, N bands), ``num_classes``
(1 = binary, one logit channel), ``pretrained`` and ``weights_path``, maps
(N, in_channels, H, W) to logits (N, num_classes, H, W) for any H, W >= 32, and reports the
hyperparameters it was actually built with through ``applied_hparams()``. Pretrained RGB
stems are adapted to ``in_channels`` by timm's rule (`segray.models.weights.adapt_input_weight`:
1 channel sums the RGB filters; N channels repeat them R, G, B, R, ... scaled by 3/N).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from segray.models.weights import PretrainedWeightsError

__all__ = [
    "PretrainedWeightsError",
    "create_model",
    "list_models",
    "model_info",
    "model_kwargs",
    "register_model",
]


@dataclass(frozen=True)
class _Entry:
    constructor: Callable[..., nn.Module]  # the model class (keyword-only constructor)
    description: str  # one line for `segray` listings
    encoders: tuple[str, ...]  # values of the model's `encoder` kwarg; empty if it has none


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, *, description: str, encoders: tuple[str, ...] = ()
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a model to the registry under ``name``.

    Args:
        name: registry key passed to :func:`create_model`.
        description: one-line summary shown by :func:`model_info`.
        encoders: values the model's ``encoder`` argument accepts; empty for models without
            that argument (so ``"encoder" in model_kwargs(name)`` iff ``encoders``).

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(
                f"model '{name}' is already registered "
                f"(by {_REGISTRY[name].constructor.__qualname__})"
            )
        _REGISTRY[name] = _Entry(cls, description, tuple(encoders))
        return cls

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}'; valid models: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_kwargs(name: str) -> dict[str, object]:
    """Keyword arguments model ``name`` accepts, mapped to their defaults.

    Read from the constructor's signature; tuple defaults are returned as lists (YAML/JSON
    friendly) and every call returns fresh copies.

    Raises:
        ValueError: ``name`` is not registered.
    """
    parameters = inspect.signature(_entry(name).constructor).parameters.values()
    return {
        p.name: list(p.default) if isinstance(p.default, tuple) else copy.deepcopy(p.default)
        for p in parameters
    }


def model_info(name: str) -> dict[str, object]:
    """``{"name", "description", "encoders", "defaults"}`` of model ``name``.

    Raises:
        ValueError: ``name`` is not registered.
    """
    entry = _entry(name)
    return {
        "name": name,
        "description": entry.description,
        "encoders": list(entry.encoders),
        "defaults": model_kwargs(name),
    }


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build registered model ``name`` with ``kwargs`` (see :func:`model_kwargs`).

    Raises:
        ValueError: unknown model name, unknown keyword argument, or an invalid value.
        PretrainedWeightsError: ``pretrained=True`` without network and without ``weights_path``.
        FileNotFoundError: ``weights_path`` does not exist.
    """
    entry = _entry(name)
    valid = model_kwargs(name)
    unexpected = sorted(set(kwargs) - set(valid))
    if unexpected:
        plural = "s" if len(unexpected) > 1 else ""
        raise ValueError(
            f"model '{name}' got unexpected argument{plural} "
            f"{', '.join(repr(k) for k in unexpected)}; valid: {', '.join(sorted(valid))}"
        )
    return entry.constructor(**kwargs)


# Importing the architecture modules registers them (they import register_model from here).
from segray.models import deeplabv3, resnet_unet, unet  # noqa: E402, F401
