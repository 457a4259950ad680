"""The search's searcher: Optuna (TPE) told the score segray ranks trials by.

Ray's `OptunaSearch` tells Optuna each trial's *last* reported value, so a trial ASHA stopped
after one epoch enters TPE as complete, with an early score, and a trial whose last epoch was
worse than its best is under-rated. segray ranks a trial by its best epoch (the checkpoint that
``OUT/best/`` copies), so `RankedOptunaSearch` tells Optuna:

* every epoch's value as an intermediate value (step = the reported ``epoch``, which stays
  monotone across a trial's retries), so the learning curve is in the study;
* a trial that trained to the end (``max_epochs``, or its own early stopping) as COMPLETE with
  its best score over those epochs;
* a trial the scheduler stopped before the end as PRUNED at the epoch it reached (TPE ranks
  pruned trials by how far they got, then by their value there);
* a failed trial as FAIL.

NaN and infinite values are the worst possible score, never the best (`score_key`,
`best_score`). Trials that are still running count in TPE through Optuna's constant liar.
The per-trial curves live on the searcher, so they are saved and restored with it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

__all__ = [
    "BestPlateauStopper",
    "ClusterSizedLimiter",
    "RankedOptunaSearch",
    "best_score",
    "score_key",
]

logger = logging.getLogger(__name__)


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


class RankedOptunaSearch(OptunaSearch):
    """`OptunaSearch` that tells Optuna each trial's best epoch, prunes what the scheduler
    stopped and scores NaN/inf as worst.

    Args:
        metric, mode: what to optimise, as in Tune.
        sampler: the Optuna sampler (TPE with ``constant_liar=True`` for parallel trials).
        max_epochs: the epoch a trial that is not stopped early reaches (ASHA's ``max_t``).
    """

    def __init__(self, *, metric: str, mode: str, sampler: Any, max_epochs: int) -> None:
        super().__init__(metric=metric, mode=mode, sampler=sampler)
        self._max_epochs = max_epochs
        self._curves: dict[str, dict[int, float]] = {}  # trial id -> epoch -> value
        self._stopped_itself: dict[str, bool] = {}  # trial id -> stopped by its early stopping

    def _record(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.metric not in result or "epoch" not in result:
            return
        self._curves.setdefault(trial_id, {})[int(result["epoch"])] = float(result[self.metric])
        self._stopped_itself[trial_id] = bool(result.get("stopped_early", False))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Optuna learns the curve at completion (running trials only count as constant lies).
        if trial_id not in self._completed_trials:
            self._record(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            logger.warning("trial %s: completion without a running Optuna trial", trial_id)
            return
        if result:  # the result the scheduler stopped the trial on arrives only here
            self._record(trial_id, result)
        curve = self._curves.pop(trial_id, {})
        stopped_itself = self._stopped_itself.pop(trial_id, False)
        ot_trial = self._ot_trials[trial_id]
        for epoch, value in sorted(curve.items()):
            # NaN is the one value every Optuna sampler takes as the worst (+inf is the best
            # when minimising, -inf when maximising).
            ot_trial.report(value if math.isfinite(value) else math.nan, epoch)
        from optuna.trial import TrialState

        if error:
            state, value = TrialState.FAIL, None
        elif curve and (max(curve) >= self._max_epochs or stopped_itself):
            state, value = TrialState.COMPLETE, best_score(curve.values(), self.mode)
        else:  # stopped by the scheduler (or never reported): pruned at its last epoch
            state, value = TrialState.PRUNED, None
        self._ot_study.tell(ot_trial, value, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)


class ClusterSizedLimiter(ConcurrencyLimiter):
    """At most as many live trials as the cluster holds *now*: whole trials of ``per_trial``
    resources (a trial's DDP workers) by the current `ray.cluster_resources()`, re-read at
    every suggestion. Nodes that join (an autoscaler, a worker added by hand) raise the limit
    for the next trial; a resumed search reads the cluster it resumes on. A trial driver
    itself reserves no CPU, so Tune alone would start every trial's driver at once and let
    their worker groups queue inside Ray Train, each with a suggestion made blind; this keeps
    suggestions just in time.

    ``fixed`` (``tune.max_concurrent_trials``) pins the limit instead.
    """

    def __init__(self, searcher: Any, per_trial: dict[str, float], fixed: int | None = None):
        self.per_trial, self.fixed = dict(per_trial), fixed
        super().__init__(searcher, max_concurrent=fixed or self.capacity())

    def capacity(self) -> int:
        """Whole trials the cluster holds now; on an autoscaling cluster, at its largest size
        (the trials' pending workers are what makes the autoscaler start nodes)."""
        import ray

        from segray.cluster import autoscaling_limits

        limits = autoscaling_limits()
        total = limits[0] if limits is not None else ray.cluster_resources()
        fits = [int(total.get(k, 0.0) // v) for k, v in self.per_trial.items() if v > 0]
        return max(1, min(fits)) if fits else 1

    def suggest(self, trial_id: str) -> Any:
        if self.fixed is None:
            self.max_concurrent = self.capacity()
        return super().suggest(trial_id)


class BestPlateauStopper(Stopper):
    """Stops the whole search once ``patience`` full trials' worth of epochs (``patience *
    max_epochs`` epoch reports, summed over all trials, ASHA-stopped ones included) passed
    without a better best score: the search's compute, not its wall time, measures the
    plateau, so it means the same with 1 or 16 trials in parallel.

    A better score must beat the best by more than ``min_delta``. State is plain numbers, so
    the stopper is saved and restored with the search.
    """

    def __init__(
        self, metric: str, mode: str, *, patience: float, max_epochs: int, min_delta: float = 1e-4
    ):
        self.metric, self.mode = metric, mode
        self.budget = max(1, math.ceil(patience * max_epochs))
        self.min_delta = min_delta
        self.best = -math.inf
        self.since = 0  # epoch reports since the best last moved

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.metric not in result:
            return False
        key = score_key(result[self.metric], self.mode)
        if key > self.best + self.min_delta or self.best == -math.inf:
            self.best = max(self.best, key)
            self.since = 0
        else:
            self.since += 1
        return False  # a trial is never stopped alone: ASHA does that

    def stop_all(self) -> bool:
        if self.since >= self.budget:
            logger.info("search stopped: %d epochs without a better %s", self.since, self.metric)
            return True
        return False
