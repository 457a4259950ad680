"""Which config keys a resolved config ignores: ``loss.bce_weight`` does nothing unless
``loss.name`` is ``bce_dice``, ``optim.momentum`` unless the optimizer is SGD, a model key
unless the model takes it, and so on.

A search refuses to sample such a key (`segray.search.space`: the trials would spend their
budget on a value that changes nothing), and every trial checks the same table again at run
time (`segray.train.check_applied`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segray.config.schema import Config

__all__ = ["USED_ONLY_WHEN", "unused_reason"]


def _model_takes(field: str) -> Callable[[Config], bool]:
    def takes(cfg: Config) -> bool:
        from segray.models import model_kwargs

        return field in model_kwargs(cfg.model.name)

    return takes


# Dotted key (or a section prefix ending in ".") -> (is it used by this config?, when it is).
USED_ONLY_WHEN: dict[str, tuple[Callable[[Config], bool], str]] = {
    "loss.bce_weight": (lambda c: c.loss.name == "bce_dice", "loss.name is bce_dice"),
    "loss.smooth": (lambda c: c.loss.name in ("bce_dice", "dice"), "loss.name is bce_dice or dice"),
    "optim.momentum": (lambda c: c.optim.name == "sgd", "optim.name is sgd"),
    "optim.plateau_factor": (
        lambda c: c.optim.scheduler == "plateau",
        "optim.scheduler is plateau",
    ),
    "optim.plateau_patience": (
        lambda c: c.optim.scheduler == "plateau",
        "optim.scheduler is plateau",
    ),
    "optim.min_lr": (lambda c: c.optim.scheduler != "none", "optim.scheduler is cosine or plateau"),
    "model.dilation_rates": (
        lambda c: _model_takes("dilation_rates")(c) and c.model.atrous,
        "model.name takes it and model.atrous is true",
    ),
    "model.kernel_sizes": (
        lambda c: _model_takes("kernel_sizes")(c) and c.model.atrous,
        "model.name takes it and model.atrous is true",
    ),
    "train.gpus_per_worker": (lambda c: c.train.use_gpu, "train.use_gpu is true"),
    "data.mask_threshold": (
        lambda c: c.data.mask_mode == "threshold",
        "data.mask_mode is threshold",
    ),
    "data.mask_values": (lambda c: c.data.mask_mode == "values", "data.mask_mode is values"),
    "data.trimap_uncertain": (lambda c: c.data.mask_mode == "trimap", "data.mask_mode is trimap"),
    "data.synthetic.": (lambda c: c.data.source == "synthetic", "data.source is synthetic"),
    "segment.": (lambda c: False, "segray segment runs (no trial reads it)"),
    "tune.": (lambda c: False, "the search itself is configured (no trial reads it)"),
}
_CONDITIONS = (
    "loss.name",
    "optim.name",
    "optim.scheduler",
    "model.name",
    "model.atrous",
    "train.use_gpu",
    "data.mask_mode",
    "data.source",
)
# model.* fields that every model takes or that the model rule reads itself
_MODEL_GENERIC = {"name", "in_channels", "pretrained", "weights_path"}


def _current(cfg: Config, dotted: str) -> str:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return f"{dotted}={node!r}"


def unused_reason(key: str, cfg: Config) -> str | None:
    """Why ``cfg`` ignores the value of ``key`` (one line), or None when it uses it."""
    rule = USED_ONLY_WHEN.get(key) or next(
        (
            r
            for prefix, r in USED_ONLY_WHEN.items()
            if prefix.endswith(".") and key.startswith(prefix)
        ),
        None,
    )
    if rule is not None:
        used, when = rule
        if used(cfg):
            return None
        now = ", ".join(_current(cfg, d) for d in _CONDITIONS if d in when)
        return f"it is used only when {when}" + (f" (here {now})" if now else "")
    section, _, field = key.partition(".")
    if section == "model" and field not in _MODEL_GENERIC and not _model_takes(field)(cfg):
        return f"model {cfg.model.name!r} does not take it"
    return None
