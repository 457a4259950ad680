"""Distributed training with Ray Train: the per-worker loop (`worker.py`), the TorchTrainer
around it (`driver.py`), the function Ray Train pickles (`entry.py`) and the hooks the loop
calls after each epoch (`hooks.py`). ``run_training`` is the one entry point: `segray train`,
`jobs/train.py` and every Tune trial call it.

``segray.train.NAME`` imports the module that defines NAME on first use (the driver's names
first), so that a Train worker, which imports `worker.py`, does not also import the driver's
(pandas, result tables, MLflow artefacts).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = ("driver", "worker", "hooks")


def __getattr__(name: str) -> Any:
    for module in _MODULES:
        found = importlib.import_module(f"{__name__}.{module}")
        if name in getattr(found, "__all__", ()):
            return getattr(found, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
