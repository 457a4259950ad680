"""Build registered models by name; and the registry as the classes themselves say it.

What each model is (defaults, encoders, parameter counts) is also in `segray.models.catalog`,
which needs no torch; `registered()` reads the same from the classes, and a test keeps the two
equal. Importing this module imports (and so registers) every architecture.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from torch import nn

from segray.models import deeplabv3, resnet_unet, unet  # noqa: F401  (registers them)
from segray.models.catalog import model_kwargs
from segray.models.registry import _REGISTRY

__all__ = ["create_model", "registered"]


def registered() -> dict[str, dict[str, Any]]:
    """Every registered model, read from its class: ``{name: {"description", "encoders",
    "defaults"}}``; defaults from the constructor's signature, tuples as lists."""
    out = {}
    for name, entry in sorted(_REGISTRY.items()):
        parameters = inspect.signature(entry.constructor).parameters.values()
        defaults = {
            p.name: list(p.default) if isinstance(p.default, tuple) else copy.deepcopy(p.default)
            for p in parameters
        }
        out[name] = {
            "description": entry.description,
            "encoders": list(entry.encoders),
            "defaults": defaults,
        }
    return out


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build registered model ``name`` with ``kwargs`` (see `segray.models.model_kwargs`).

    Raises:
        ValueError: unknown model name, unknown keyword argument, or an invalid value.
        PretrainedWeightsError: ``pretrained=True`` without network and without ``weights_path``.
        FileNotFoundError: ``weights_path`` does not exist.
    """
    valid = model_kwargs(name)  # an unknown name: one line listing the valid ones
    unexpected = sorted(set(kwargs) - set(valid))
    if unexpected:
        plural = "s" if len(unexpected) > 1 else ""
        raise ValueError(
            f"model '{name}' got unexpected argument{plural} "
            f"{', '.join(repr(k) for k in unexpected)}; valid: {', '.join(sorted(valid))}"
        )
    return _REGISTRY[name].constructor(**kwargs)
