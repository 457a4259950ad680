"""The ``tune`` section (the hyperparameter search) and the ``tracking`` section (MLflow) of
`segray train` and `segray tune`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from segray.config.base import Section, optional

__all__ = ["TrackingConfig", "TuneConfig"]


class TuneConfig(Section):
    """Hyperparameter search: Ray Tune + Optuna; each trial a DDP training."""

    num_samples: int = Field(8, ge=1, description="number of trials")
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="dotted config key -> {choice|uniform|loguniform|quniform|randint|"
        "qrandint|qloguniform: ...}",
    )
    metric: str = Field("val_dice", description="reported metric to optimise")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    searcher: Literal["optuna", "random"] = Field("optuna", description="TPE or random search")
    scheduler: Literal["asha", "none"] = Field("asha", description="early stopping of trials")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/rf per rung")
    max_epochs: int | None = optional(ge=1, description="ASHA max_t; default train.epochs")
    seed: int = Field(0, description="searcher seed")
    startup_trials: int | None = optional(
        ge=1, description="TPE's random start-up trials; default num_samples // 3 (2..10)"
    )
    max_concurrent_trials: int | None = optional(
        ge=1, description="default: cluster resources // one trial's resources"
    )
    max_failures: int = Field(1, ge=0, description="retries of a failed trial (from its ckpt)")
    time_budget_s: float | None = optional(
        gt=0,
        description="wall-clock budget of the whole search in seconds, enforced by Tune: "
        "trials still running then are stopped and keep their best checkpoint; null = none",
    )
    plateau_trials: float | None = optional(
        gt=0,
        description="stop the search once this many full trials' worth of epochs (summed over "
        "all trials) passed without a better best score; null = never",
    )


# --------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    """MLflow experiment tracking of `segray train` and `segray tune` (`segray.tracking`);
    off unless a tracking URI is set here or in $MLFLOW_TRACKING_URI."""

    mlflow_uri: str | None = optional(
        description="MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, ...); null: "
        "$MLFLOW_TRACKING_URI, and no tracking when that is unset too. Needs the mlflow extra",
    )
    experiment: str = Field("segray", min_length=1, description="MLflow experiment name")
    run_name: str | None = optional(
        description="name of the run (of a search: its parent run); null: a default"
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="tags set on every run this config opens"
    )
