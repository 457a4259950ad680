"""The epoch hooks of the training loop (`segray.train.hooks`), without Ray."""

from __future__ import annotations

import pytest

from segray.train.hooks import EpochContext, register_epoch_hook, run_epoch_hooks


def test_hooks_run_in_order_with_the_epoch_and_context_until_removed():
    seen: list[tuple[str, int, int, str]] = []
    context = EpochContext(rank=1, world_size=2, run_name="trial_a", metrics={"val_dice": 0.5})
    remove_a = register_epoch_hook(lambda e, c: seen.append(("a", e, c.rank, c.run_name)))
    remove_b = register_epoch_hook(lambda e, c: seen.append(("b", e, c.world_size, "")))
    try:
        run_epoch_hooks(3, context)
    finally:
        remove_a()
        remove_b()
    run_epoch_hooks(4, context)  # removed: nothing more
    assert seen == [("a", 3, 1, "trial_a"), ("b", 3, 2, "")]


def test_a_hook_that_raises_fails_the_epoch():
    def fail(epoch: int, context: EpochContext) -> None:
        raise RuntimeError(f"injected after epoch {epoch}")

    remove = register_epoch_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="injected after epoch 2"):
            run_epoch_hooks(2, EpochContext(rank=0, world_size=1, run_name="train"))
    finally:
        remove()
    run_epoch_hooks(2, EpochContext(rank=0, world_size=1, run_name="train"))
