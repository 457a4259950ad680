"""Tests for segray.losses on small hand-built and random tensors (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segray.losses import SegLoss, create_loss, list_losses

IGNORE = 255
LN3 = math.log(3.0)


def _num_classes(name: str) -> list[int]:
    """The num_classes each registered loss accepts in these tests."""
    return {"bce": [1], "ce": [3]}.get(name, [1, 3])


def _random_case(num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """2x{K}x16x16 logits and a target with some ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 16, 16, generator=g) * 2
    target = torch.randint(0, max(num_classes, 2), (2, 16, 16), generator=g)
    target[torch.rand(2, 16, 16, generator=g) < 0.2] = IGNORE
    return logits, target


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """1x1x2x2 logits with probabilities [[3/4, 1/4], [1/2, 3/4]] and target [[1, 0], [1, 0]]."""
    logits = torch.tensor([[[[LN3, -LN3], [0.0, LN3]]]])
    return logits, torch.tensor([[[1, 0], [1, 0]]])


# By hand: BCE = mean(-ln 3/4, -ln 3/4, -ln 1/2, -ln 1/4) = (2 ln 4/3 + 3 ln 2) / 4.
TINY_BCE = (2 * math.log(4 / 3) + 3 * math.log(2)) / 4
# Dice, smooth 1: sum(p*t) = 3/4 + 1/2 = 5/4, sum(p) = 9/4, sum(t) = 2 -> (5/2 + 1) / (17/4 + 1).
TINY_DICE = 1 - (2.5 + 1) / (4.25 + 1)  # = 1/3


def test_list_losses() -> None:
    assert list_losses() == ["bce", "bce_dice", "ce", "dice"]


@pytest.mark.parametrize("name", list_losses())
def test_every_registered_loss_is_a_finite_scalar_with_finite_grad(name: str) -> None:
    for k in _num_classes(name):
        loss_fn = create_loss(name, num_classes=k, ignore_index=IGNORE)
        assert isinstance(loss_fn, SegLoss)
        logits, target = _random_case(k)
        logits[0, :, 0, :4] = torch.tensor([100.0, -100.0, 50.0, -50.0])  # saturated logits
        logits.requires_grad_(True)
        total, parts = loss_fn.compute(logits, target)
        assert total.ndim == 0 and torch.isfinite(total)
        assert all(v.ndim == 0 and not v.requires_grad for v in parts.values())
        total.backward()
        assert torch.isfinite(logits.grad).all()
        assert torch.equal(loss_fn(logits, target), total)


def test_tiny_example_by_hand() -> None:
    logits, target = _tiny()
    bce = create_loss("bce", num_classes=1)(logits, target)
    dice = create_loss("dice", num_classes=1)(logits, target)
    mixed, parts = create_loss("bce_dice", num_classes=1, bce_weight=0.3).compute(logits, target)
    assert bce.item() == pytest.approx(TINY_BCE, abs=1e-6)
    assert TINY_BCE == pytest.approx(0.6637015, abs=1e-6)
    assert dice.item() == pytest.approx(1 / 3, abs=1e-6)
    assert mixed.item() == pytest.approx(0.3 * TINY_BCE + 0.7 * TINY_DICE, abs=1e-6)
    assert parts["bce"].item() == pytest.approx(TINY_BCE, abs=1e-6)
    assert parts["dice"].item() == pytest.approx(TINY_DICE, abs=1e-6)
    # smooth 0: (5/2) / (17/4) = 10/17
    dice0 = create_loss("dice", num_classes=1, smooth=0.0)(logits, target)
    assert dice0.item() == pytest.approx(7 / 17, abs=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_perfect_and_all_wrong_predictions(num_classes: int) -> None:
    """2x64x64, so the smoothing (score >= 1 / (pixels + 1)) stays below the tolerance."""
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, max(num_classes, 2), (2, 64, 64), generator=g)
    if num_classes == 1:
        perfect = (target.float() * 2 - 1).unsqueeze(1) * 30
    else:
        perfect = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float() * 60 - 30
    wrong = -perfect
    dice = create_loss("dice", num_classes=num_classes)
    pixel = create_loss("bce" if num_classes == 1 else "ce", num_classes=num_classes)
    assert dice(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    assert pixel(perfect, target).item() < 1e-6
    assert dice(wrong, target).item() == pytest.approx(1.0, abs=1e-3)
    assert pixel(wrong, target).item() > 10


def test_bce_weight_extremes_equal_pure_terms() -> None:
    logits, target = _random_case(1, seed=2)
    target[target == IGNORE] = 0
    bce_only = create_loss("bce_dice", num_classes=1, bce_weight=1.0)(logits, target)
    torch_bce = torch.nn.BCEWithLogitsLoss()(logits[:, 0], target.float())
    assert torch.allclose(bce_only, torch_bce, atol=1e-6)
    assert torch.allclose(bce_only, create_loss("bce", num_classes=1)(logits, target))
    dice_only = create_loss("bce_dice", num_classes=1, bce_weight=0.0)(logits, target)
    assert torch.allclose(dice_only, create_loss("dice", num_classes=1)(logits, target))


@pytest.mark.parametrize(
    ("name", "num_classes"),
    [("bce", 1), ("ce", 3), ("dice", 1), ("dice", 3), ("bce_dice", 1), ("bce_dice", 3)],
)
def test_ignored_pixels_have_no_effect_on_value_or_gradient(name: str, num_classes: int) -> None:
    loss_fn = create_loss(name, num_classes=num_classes, ignore_index=IGNORE)
    logits, target = _random_case(num_classes, seed=3)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    a = logits.clone().requires_grad_(True)
    loss_a = loss_fn(a, target)
    loss_a.backward()
    changed = torch.where(ignored, torch.randn_like(logits) * 50, logits).requires_grad_(True)
    loss_b = loss_fn(changed, target)
    loss_b.backward()
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert torch.all(a.grad[ignored] == 0)
    assert torch.all(changed.grad[ignored] == 0)
    assert a.grad[~ignored].abs().sum() > 0


def test_ignored_pixels_are_dropped_from_the_dice_sums() -> None:
    """Same value as the tiny example with one extra, ignored column of nonsense."""
    logits, target = _tiny()
    wide_logits = torch.cat([logits, torch.full((1, 1, 2, 1), 9.0)], dim=3)
    wide_target = torch.cat([target, torch.full((1, 2, 1), IGNORE)], dim=2)
    for name, expected in (("dice", TINY_DICE), ("bce", TINY_BCE)):
        loss_fn = create_loss(name, num_classes=1, ignore_index=IGNORE)
        assert loss_fn(wide_logits, wide_target).item() == pytest.approx(expected, abs=1e-6)


def test_multiclass_ce_part_equals_torch_cross_entropy() -> None:
    logits, target = _random_case(3, seed=4)
    _, parts = create_loss("bce_dice", num_classes=3, ignore_index=IGNORE).compute(logits, target)
    assert set(parts) == {"ce", "dice"}
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert torch.allclose(parts["ce"], expected, atol=1e-6)
    ce = create_loss("ce", num_classes=3, ignore_index=IGNORE)(logits, target)
    assert torch.allclose(ce, expected, atol=1e-6)
    clean = target.clone()
    clean[clean == IGNORE] = 0
    assert torch.allclose(
        create_loss("ce", num_classes=3)(logits, clean), F.cross_entropy(logits, clean), atol=1e-6
    )


def test_multiclass_dice_is_the_mean_of_per_class_batch_dice() -> None:
    logits, target = _random_case(3, seed=5)
    valid = target != IGNORE
    probs = logits.softmax(1)
    scores = []
    for c in range(3):
        p = probs[:, c][valid]
        t = (target[valid] == c).float()
        scores.append((2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    expected = 1 - torch.stack(scores).mean()
    loss = create_loss("dice", num_classes=3, ignore_index=IGNORE)(logits, target)
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_empty_mask_and_empty_prediction_is_a_perfect_score(num_classes: int) -> None:
    """Binary: all background and sigmoid ~0; smooth keeps the score at 1 and the grad finite."""
    if num_classes == 1:
        target = torch.zeros(1, 4, 4, dtype=torch.long)
        logits = torch.full((1, 1, 4, 4), -20.0, requires_grad=True)
        loss = create_loss("dice", num_classes=1)(logits, target)
        assert loss.item() == pytest.approx(0.0, abs=1e-6)
        loss.backward()
        assert torch.isfinite(logits.grad).all()
    # smooth 0, both exactly empty: every pixel ignored -> the 0/0 score is defined as 1
    target = torch.full((1, 4, 4), IGNORE)
    logits = torch.randn(1, num_classes, 4, 4, requires_grad=True)
    for name in ("dice", "bce_dice"):
        loss_fn = create_loss(name, num_classes=num_classes, smooth=0.0, ignore_index=IGNORE)
        loss, parts = loss_fn.compute(logits, target)
        assert loss.item() == 0.0 and all(v.item() == 0.0 for v in parts.values())
        loss.backward()
        assert torch.isfinite(logits.grad).all()


def test_empty_empty_with_smooth_zero_binary() -> None:
    """sigmoid(-200) is exactly 0 in float32: an exactly empty prediction on an empty mask."""
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.full((1, 1, 4, 4), -200.0, requires_grad=True)
    assert torch.sigmoid(logits).sum().item() == 0.0
    loss = create_loss("dice", num_classes=1, smooth=0.0)(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # an empty mask with a non-empty prediction scores 0 (loss 1) at smooth 0
    confident = torch.full((1, 1, 4, 4), 200.0)
    assert create_loss("dice", num_classes=1, smooth=0.0)(confident, target).item() == 1.0


def test_errors_explain_themselves() -> None:
    with pytest.raises(
        ValueError, match=r"^unknown loss 'foo'; valid losses: bce, bce_dice, ce, dice$"
    ):
        create_loss("foo", num_classes=1)
    with pytest.raises(ValueError, match="use 'ce'"):
        create_loss("bce", num_classes=3)
    with pytest.raises(ValueError, match="use 'bce'"):
        create_loss("ce", num_classes=1)
    for weight in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"bce_weight must lie in \[0, 1\]"):
            create_loss("bce_dice", num_classes=1, bce_weight=weight)
    with pytest.raises(ValueError, match="smooth"):
        create_loss("dice", num_classes=1, smooth=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        create_loss("dice", num_classes=0)
    loss_fn = create_loss("bce_dice", num_classes=1)
    with pytest.raises(ValueError, match=r"logits must be \(B, 1, H, W\)"):
        loss_fn(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="squeeze"):
        loss_fn(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices"):
        loss_fn(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))
