"""The plain-PyTorch loop: fixed collective keys, size batches, LR schedule, RNG state, refusals."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from segray.config import ConfigError, OptimConfig, load_config
from segray.data.loaders import EpochSampler, ShardSampler, SizeBatchSampler
from segray.engine import (
    LRSchedule,
    NonFiniteLossError,
    StepConfig,
    check_finite,
    evaluate,
    rng_state,
    set_rng_state,
    sum_keys,
    train_one_epoch,
)
from segray.losses import create_loss
from segray.metrics import SegMetrics

CPU = StepConfig(torch.device("cpu"))


def _batches(n: int, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(2, 3, size, size, generator=g),
            torch.randint(0, 2, (2, size, size), generator=g),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    "name, classes, parts",
    [
        ("bce_dice", 1, ["loss_bce", "loss_dice"]),
        ("bce_dice", 3, ["loss_ce", "loss_dice"]),
        ("dice", 1, ["loss_dice"]),
        ("ce", 3, ["loss_ce"]),
    ],
)
def test_sum_keys_are_fixed_by_the_loss(name, classes, parts):
    assert sum_keys(create_loss(name, num_classes=classes)) == ("loss", "n", *parts)


def test_evaluate_on_an_empty_shard_returns_the_same_keys():
    """A rank without a val image all-reduces exactly what a rank with images does."""
    model, loss = nn.Conv2d(3, 1, 1), create_loss("bce_dice", num_classes=1)
    full = evaluate(model, _batches(2), loss, SegMetrics(1), CPU)
    empty = evaluate(model, [], loss, SegMetrics(1), CPU)
    assert set(empty) == set(full)
    assert empty["num_images"] == 0 and full["num_images"] == 4
    assert empty["loss_bce"] == 0.0 and full["loss_bce"] > 0


def test_train_one_epoch_steps_the_schedule_and_stops_on_a_nan_loss():
    model, loss = nn.Conv2d(3, 1, 1), create_loss("bce", num_classes=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = LRSchedule(opt, OptimConfig(lr=0.1, min_lr=0.0, warmup_epochs=0), 6, 3)
    out = train_one_epoch(model, _batches(3), loss, opt, CPU, schedule=schedule)
    assert set(out) == {"loss", "loss_bce"}
    assert schedule.per_step.last_epoch == 3
    bad = _batches(3)
    bad[1][0][0, 0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 2, step 2/3 \(rank 0: nan\): lower optim.lr"
    ):
        train_one_epoch(model, bad, loss, opt, CPU, schedule=schedule, epoch=1)
    # The first batch trained; the NaN never reached the weights.
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_check_finite_passes_finite_and_names_inf():
    check_finite(torch.tensor(0.3), 0, 0, 1)
    with pytest.raises(NonFiniteLossError, match="rank 0: inf"):
        check_finite(torch.tensor(math.inf), 0, 0, 1)


# --------------------------------------------------------------------------- samplers
def test_size_batches_hold_one_size_and_every_index_once():
    sizes = {0: (5, 4), 1: (7, 7), 2: (5, 4), 3: (5, 4), 4: (7, 7), 5: (9, 2), 6: (5, 4)}
    shard = ShardSampler(7, 0, 1).indices
    batches = list(SizeBatchSampler(shard, 2, sizes.__getitem__))
    assert sorted(i for b in batches for i in b) == shard
    assert all(len({sizes[i] for i in b}) == 1 and 1 <= len(b) <= 2 for b in batches)
    assert batches == [[0, 2], [3, 6], [1, 4], [5]]
    assert list(SizeBatchSampler([1, 3, 5], 2)) == [[1, 3], [5]]  # one size: plain batches
    assert list(SizeBatchSampler([], 4, sizes.__getitem__)) == []  # an empty shard


def test_size_batches_let_mixed_full_resolution_images_collate():
    images = [torch.zeros(3, h, w) for h, w in [(8, 8), (6, 10), (8, 8), (6, 10), (6, 10)]]
    ds = [(im, torch.zeros(im.shape[1:], dtype=torch.long)) for im in images]
    sampler = SizeBatchSampler(range(5), 4, lambda i: tuple(images[i].shape))
    seen = [b[0].shape[0] for b in DataLoader(ds, batch_sampler=sampler)]
    assert seen == [2, 3]


def test_epoch_sampler_tags_indices_with_the_epoch():
    from torch.utils.data import DistributedSampler

    sampler = EpochSampler(DistributedSampler(range(6), num_replicas=2, rank=1, seed=3))
    sampler.set_epoch(4)
    items = list(sampler)
    assert len(items) == len(sampler) == 3 and all(e == 4 for e, _ in items)
    assert [i for _, i in items] == list(sampler.sampler)  # the same order, set_epoch passed on


# --------------------------------------------------------------------------- LR schedule
def _lrs(cfg: OptimConfig, total: int, per_epoch: int) -> tuple[list[float], LRSchedule]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    schedule = LRSchedule(opt, cfg, total, per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(schedule.lr)
        opt.step()
        schedule.step()
    return lrs, schedule


def test_warmup_is_per_step_and_cosine_ends_exactly_at_min_lr():
    cfg = OptimConfig(lr=0.1, min_lr=1e-4, warmup_epochs=1, scheduler="cosine")
    lrs, _ = _lrs(cfg, total=20, per_epoch=4)
    assert lrs[:4] == pytest.approx([0.1 * k / 5 for k in (1, 2, 3, 4)])  # 4 warm-up steps
    assert lrs[4] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # cosine falls every step
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-12)


def test_constant_schedule_and_plateau_after_warmup():
    lrs, _ = _lrs(OptimConfig(lr=0.1, scheduler="none"), total=5, per_epoch=5)
    assert lrs == pytest.approx([0.1] * 5)
    cfg = OptimConfig(lr=0.1, scheduler="plateau", plateau_patience=0, plateau_factor=0.5)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = LRSchedule(opt, cfg, 10, 5)
    for dice in (0.5, 0.5, 0.4):
        schedule.observe(dice)
    assert schedule.lr == pytest.approx(0.025)  # two epochs without gain, patience 0


def test_schedule_state_dict_round_trip_continues_exactly():
    cfg = OptimConfig(lr=0.1, min_lr=1e-3, warmup_epochs=1, scheduler="cosine")
    straight, _ = _lrs(cfg, total=12, per_epoch=3)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = LRSchedule(opt, cfg, 12, 3)
    for _ in range(5):
        opt.step()
        schedule.step()
    saved_opt, saved = opt.state_dict(), schedule.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    resumed = LRSchedule(opt2, cfg, 12, 3)
    opt2.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    rest = []
    for _ in range(7):
        rest.append(resumed.lr)
        opt2.step()
        resumed.step()
    assert rest == straight[5:]


# --------------------------------------------------------------------------- RNG state
def test_rng_state_round_trip_survives_weights_only_load(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["train.sync_batchnorm=true"], r"train.sync_batchnorm: true needs train.use_gpu"),
        (["train.use_gpu=true", "train.gpus_per_worker=0.5"], r"train.gpus_per_worker=0.5"),
        (["train.use_gpu=true", "train.gpus_per_worker=1.5"], r"whole number of GPUs"),
    ],
)
def test_settings_that_cannot_work_fail_at_load(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_resume_refuses_trajectory_changes_and_allows_harmless_ones():
    from segray.train import check_resume_config

    saved = load_config(None, [])
    check_resume_config(
        saved, load_config(None, ["data.loader_workers=3", "tune.num_samples=2"]), "r"
    )
    for key in ("train.epochs=20", "optim.lr=0.5", "train.num_workers=4", "data.batch_size=2"):
        with pytest.raises(ConfigError, match=f"--resume r: cannot change {key.split('=')[0]}"):
            check_resume_config(saved, load_config(None, [key]), "r")


def test_evaluate_refuses_non_finite_outputs():
    model = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        model.weight.fill_(math.inf)
    with pytest.raises(
        NonFiniteLossError, match="validation at epoch 3: the model outputs non-finite"
    ):
        evaluate(model, _batches(1), create_loss("bce", num_classes=1), SegMetrics(1), CPU, epoch=2)
