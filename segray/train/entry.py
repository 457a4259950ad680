"""The function Ray Train runs on every worker, importable without torch.

Ray pickles the training function by name, and its Train controller unpickles it too: a
function defined in `segray.train.worker` would make every trial's controller import torch
and the whole training stack before it starts a single worker. This one imports the loop
only where it runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train_loop_per_worker"]


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """`segray.train.worker.train_loop_per_worker`, imported on the worker."""
    from segray.train.worker import train_loop_per_worker as loop

    loop(loop_config)
