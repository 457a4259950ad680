"""The search's searcher, scheduler and stoppers: Optuna (TPE) told the score segray ranks
trials by; ASHA that records whom it stopped; the time budget and plateau stop.

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

NaN and infinite values are the worst possible score, never the best
(`segray.search.settings.score_key`). Trials that are still running count in TPE through
Optuna's constant liar. The per-trial curves live on the searcher, so they are saved and
restored with it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from segray.search.results import ASHA_MARKER, config_from_yaml
from segray.search.settings import best_score, score_key, trials_that_fit
from segray.storage import read_text, write_json

__all__ = [
    "BestPlateauStopper",
    "ClusterSizedLimiter",
    "RankedOptunaSearch",
    "RecordingASHA",
    "SearchStop",
]

logger = logging.getLogger(__name__)


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
    resources (a trial's DDP workers) by the cluster's current resources, re-read at
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
        (`segray.search.settings.trials_that_fit`)."""
        return trials_that_fit(self.per_trial)

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


class RecordingASHA(ASHAScheduler):
    """ASHA that leaves a marker in the folder of each trial it stops at a rung, so that the
    results tell a trial ASHA stopped from one the time budget or an interrupt stopped."""

    def __init__(self, *, trials_uri: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.trials_uri = trials_uri

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        epoch = result.get("epoch")
        if decision == self.STOP and epoch is not None and epoch < self._max_t:
            marker = f"{self.trials_uri}/trial_{trial.trial_id}/{ASHA_MARKER}"
            write_json(marker, {"by": "asha", "epoch": epoch})
        return decision


class SearchStop(Stopper):
    """The whole search's stop: the time budget (``tune.time_budget_s``: seconds the search
    runs, summed over its resumes) and the plateau stop; the first that fires is written to
    ``record`` (``OUT/ray/segray_search_stop.json``), which labels the trials it cut short.

    Tune saves the stopper with the search. Restored (a resume), it reads the budget again
    from ``config`` (``OUT/config.yaml``), so a resume may change it."""

    def __init__(
        self,
        record: str,
        plateau: Stopper | None,
        budget_s: float | None,
        config: str | None = None,
    ):
        self.record, self.config = record, config
        self.plateau = plateau
        self.budget_s = budget_s
        self.used_s = 0.0  # seconds the search ran, over all its starts
        self.last: float | None = None
        self.fired: str | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(self.plateau is not None and self.plateau(trial_id, result))

    def stop_all(self) -> bool:
        now = time.monotonic()
        self.used_s += 0.0 if self.last is None else now - self.last
        self.last = now
        for name, hit in (
            ("plateau", self.plateau is not None and self.plateau.stop_all()),
            ("time budget", self.budget_s is not None and self.used_s >= self.budget_s),
        ):
            if hit:
                if self.fired is None:
                    self.fired = name
                    logger.info("search stopped by its %s", name)
                    write_json(self.record, {"by": name})
                return True
        return False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.last = None  # the time between two runs of the search is not the search's
        text = read_text(self.config) if self.config else None
        if text is not None:
            self.budget_s = config_from_yaml(text).tune.time_budget_s
            self.fired = None
