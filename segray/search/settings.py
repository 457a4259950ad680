"""The search's settings, derived from the config in one place.

    s = search_settings(cfg)
    s.metric, s.mode          # what trials are ranked by (``tune.metric``, ``tune.mode``)
    s.max_epochs              # a full trial's epochs: ``tune.max_epochs``, else ``train.epochs``
    s.trial_resources         # one whole trial: its DDP workers (its driver reserves none)
    s.concurrency()           # trials at once on the connected cluster (autoscaling included)
    s.concurrency(total)      # ... on a cluster of ``total`` resources (a plan, no Ray needed)

`score_key` and `best_score` rank metric values the same way everywhere (NaN and infinities
are the worst score, never the best). Importing this module imports no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from segray.config import Config

__all__ = ["SearchSettings", "best_score", "score_key", "search_settings", "trials_that_fit"]


@dataclass(frozen=True)
class SearchSettings:
    """What every part of a search (driver, searcher, scheduler, results, cv, auto) reads."""

    metric: str  # the metric trials are ranked by
    mode: str  # "max" or "min"
    max_epochs: int  # the epoch a full trial reaches (ASHA's max_t)
    trial_resources: dict[str, float] = field(default_factory=dict)  # one whole trial
    max_concurrent_trials: int | None = None  # pins the trials at once; None: the cluster's size

    def concurrency(self, total: Mapping[str, float] | None = None) -> int:
        """Trials at once: ``tune.max_concurrent_trials``, else as many whole trials as
        ``total`` holds (default: the connected cluster, at the largest size its autoscaler
        allows)."""
        if self.max_concurrent_trials:
            return self.max_concurrent_trials
        return trials_that_fit(self.trial_resources, total)


def search_settings(cfg: Config) -> SearchSettings:
    """The search settings of ``cfg``."""
    from segray.train import worker_resources

    per_worker = worker_resources(cfg)
    return SearchSettings(
        metric=cfg.tune.metric,
        mode=cfg.tune.mode,
        max_epochs=cfg.tune.max_epochs or cfg.train.epochs,
        trial_resources={k: v * cfg.train.num_workers for k, v in per_worker.items()},
        max_concurrent_trials=cfg.tune.max_concurrent_trials,
    )


def trials_that_fit(
    per_trial: Mapping[str, float], total: Mapping[str, float] | None = None
) -> int:
    """Whole trials of ``per_trial`` resources that ``total`` holds at once (at least 1).
    ``total`` None: the connected cluster, at its largest size if it autoscales (the trials'
    pending workers are what makes the autoscaler start nodes)."""
    if total is None:
        from segray.cluster import max_resources  # Ray: only when asked about the cluster

        total = max_resources()
    fits = [int(total.get(k, 0.0) // v) for k, v in per_trial.items() if v > 0]
    return max(1, min(fits)) if fits else 1


def score_key(value: Any, mode: str) -> float:
    """A sort key where larger is better: the value (negated for ``mode="min"``), and -inf for
    NaN, +-inf and anything that is not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return -math.inf
    if not math.isfinite(v):
        return -math.inf
    return v if mode == "max" else -v


def best_score(values: Iterable[Any], mode: str) -> float:
    """The best finite value, or the worst possible one (-inf for max, +inf for min) if none."""
    finite = [float(v) for v in values if score_key(v, mode) > -math.inf]
    if finite:
        return max(finite) if mode == "max" else min(finite)
    return -math.inf if mode == "max" else math.inf
