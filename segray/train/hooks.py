"""Hooks the training loop calls on every worker after each epoch's report and checkpoint.

A seam for what runs beside training without being part of it: the fault-tolerance tests
register a hook that fails a worker once (in Ray's worker processes, through Ray's
``worker_process_setup_hook``), so that Ray Train or Tune retries the run from its checkpoint.
segray itself registers none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EpochContext", "EpochHook", "register_epoch_hook", "run_epoch_hooks"]


@dataclass(frozen=True)
class EpochContext:
    """Where a hook is called: this worker and the run it trains."""

    rank: int
    world_size: int
    run_name: str  # the Ray Train run (inside a search: the trial's name)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # what the epoch reported


EpochHook = Callable[[int, EpochContext], None]

_EPOCH_HOOKS: list[EpochHook] = []


def register_epoch_hook(hook: EpochHook) -> Callable[[], None]:
    """Call ``hook(epoch, context)`` after every epoch (1-based) in this process; returns the
    function that removes it again. An exception a hook raises fails the worker."""
    _EPOCH_HOOKS.append(hook)
    return lambda: _EPOCH_HOOKS.remove(hook)


def run_epoch_hooks(epoch: int, context: EpochContext) -> None:
    """Call the registered hooks in the order they were registered."""
    for hook in tuple(_EPOCH_HOOKS):
        hook(epoch, context)
