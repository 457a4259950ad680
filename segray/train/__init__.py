"""Distributed training with Ray Train: the per-worker loop (`worker.py`), the TorchTrainer
around it (`driver.py`) and the hooks the loop calls after each epoch (`hooks.py`).
``run_training`` is the one entry point: `segray train`, `jobs/train.py` and every Tune trial
call it.
"""

from segray.train.driver import (
    RUN_NAME,
    TrainResult,
    build_trainer,
    check_resume_config,
    run_training,
    worker_env,
    worker_resources,
)
from segray.train.worker import (
    AppliedMismatchError,
    applied_hparams,
    build_loss,
    build_metrics,
    check_applied,
    count_nodes,
    report_with_checkpoint,
    train_loop_per_worker,
)

__all__ = [
    "RUN_NAME",
    "AppliedMismatchError",
    "TrainResult",
    "applied_hparams",
    "build_loss",
    "build_metrics",
    "build_trainer",
    "check_applied",
    "check_resume_config",
    "count_nodes",
    "report_with_checkpoint",
    "run_training",
    "train_loop_per_worker",
    "worker_env",
    "worker_resources",
]
