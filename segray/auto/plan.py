"""How `segray auto` spends its time budget: a one-batch probe, then epochs, trials and folds.

    resources = cluster()                        # the Ray cluster's CPUs and GPUs
    probe = probe_on_worker(cfg)                 # seconds of one training step on a worker
    plan = make_plan(cfg, resources, budget_s=1800, probe=probe, train_images=90, ...)
    print(plan.text()); cfg = plan.apply(cfg)    # epochs, ASHA, the Tune budget and plateau stop

The budget covers the search and the cross-validation (the trainings); evaluation, bulk
segmentation and the report come after it. One full trial is the unit: the search gets two per
trial slot, in which ASHA also runs the trials it stops early (an eighth of the epochs each),
and Tune enforces that share (``tune.time_budget_s``); the CV gets one per round of folds.
Folds are dropped (down to none) rather than trained for fewer than `MIN_CV_EPOCHS` epochs or
on fewer than `MIN_CV_PIXELS` training pixels (measured on the demo's data in 4 minutes: 4 folds
of 8 epochs, 7 Mpx each, scored 0.67 test Dice where one 44-epoch trial scored 0.94; on ISBI
in 15 minutes 5 folds of 73 Mpx each beat one trial): on
a small budget, a longer search trial beats a weak ensemble.

Fixed work instead of a budget: ``train.epochs=E tune.num_samples=N tune.time_budget_s=null``
pins the trials and their epochs (ASHA's grace period follows E); the search then runs its N
trials and the CV its folds whatever the machine's speed, so the same plan scores the same on
any machine (the demo's accuracy test runs that way).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from segray.auto.derive import Resources
from segray.config import Config, apply_overrides

__all__ = ["Plan", "Probe", "cluster", "make_plan", "probe_on_worker", "probe_step"]

FULL_TRIALS = 2  # full trials per trial slot in the search (ASHA adds the short ones)
TRIAL_STARTUP_S = 15.0  # a trial: its Train controller, worker group, data and first checkpoint
EPOCH_OVERHEAD_S = 0.5  # per epoch: checkpoint, report, all-reduce of the metrics
DDP_FACTOR = 1.15  # gradient all-reduce between the workers of a trial (gloo, on CPUs)
MIN_EPOCHS, MAX_EPOCHS = 4, 100
MIN_CV_EPOCHS = 8  # fewer folds (or none) rather than folds of shorter trainings ...
MIN_CV_PIXELS = 50e6  # ... or that see fewer training pixels: short folds lose to a long trial
CV_FOLD_FACTOR = 1.1  # a fold trains on (K-1)/K of train + val: more than the search's train


@dataclass(frozen=True)
class Probe:
    """One training step at the derived patch and batch, timed on this machine."""

    step_s: float  # seconds of one forward + backward + optimizer step of a worker's batch
    batch: int
    patch: int
    device: str
    precision: str


@dataclass
class Plan:
    budget_s: float
    concurrency: int  # trials at once
    workers: int  # DDP workers a trial
    epochs: int
    epoch_s: float  # expected seconds an epoch
    trial_s: float  # expected seconds of a full trial
    search_s: float  # Tune's budget
    expected_trials: int
    folds: int  # 0: no cross-validation
    cv_s: float  # expected seconds of the cross-validation
    probe: Probe
    notes: list[str] = field(default_factory=list)

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with the plan's epochs, ASHA settings, budget and plateau stop."""
        return apply_overrides(
            cfg,
            {
                "train.epochs": self.epochs,
                "tune.max_epochs": self.epochs,
                "tune.grace_period": min(self.epochs, max(2, self.epochs // 8)),  # <= max_t
                "tune.num_samples": max(100, 10 * self.expected_trials),  # the budget ends it
                "tune.startup_trials": max(2, min(10, self.expected_trials // 3)),
                "tune.time_budget_s": round(self.search_s, 1),
                "tune.plateau_trials": 3,
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        p = self.probe
        lines = [
            f"budget {_dur(self.budget_s)}: search {_dur(self.search_s)}"
            + (f", then {self.folds}-fold CV ~{_dur(self.cv_s)}" if self.folds else ", no CV"),
            f"trials: {self.concurrency} at once, each {self.workers} DDP worker(s); "
            f"~{self.expected_trials} trials in the budget (ASHA stops most early)",
            f"full trial: {self.epochs} epochs x ~{self.epoch_s:.1f} s = ~{_dur(self.trial_s)} "
            f"(probe: {p.step_s * 1000:.0f} ms a step of {p.batch} x {p.patch} px, {p.precision} "
            f"on {p.device})",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def cluster() -> Resources:
    """The connected Ray cluster's CPUs and GPUs."""
    from segray.cluster import total_resources

    res = total_resources()
    return Resources(cpus=res.get("CPU", 0.0), gpus=res.get("GPU", 0.0))


def probe_on_worker(cfg: Config) -> Probe:
    """`probe_step` as a Ray task with one training worker's resources (its CPUs, its GPU),
    so that a driver on a CPU-only head node times the device the trials will use."""
    from segray.cluster import run_remote
    from segray.train import worker_resources

    res = worker_resources(cfg)
    return run_remote(
        probe_step, cfg, num_cpus=res["CPU"], num_gpus=res.get("GPU", 0), max_retries=0
    )


def probe_step(cfg: Config, *, steps: int = 2) -> Probe:
    """Time a training step of one worker (its batch, patch, precision and threads) here.

    Random pixels, the real model, loss and optimiser; one warm-up step, then the mean of
    ``steps``. On a driver without the workers' GPU, the CPU is timed and the plan says so.
    """
    import torch

    from segray.engine import StepConfig, train_one_epoch
    from segray.losses import create_loss
    from segray.models import create_model

    use_gpu = cfg.train.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.train.torch_threads or cfg.train.cpus_per_worker)))
    try:
        torch.manual_seed(0)
        model = create_model(cfg.model.name, **cfg.model.kwargs(cfg.num_classes)).to(device)
        step = StepConfig.from_config(cfg.train, cfg.optim, device)
        if step.channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss = create_loss(
            cfg.loss.name, num_classes=cfg.num_classes, bce_weight=cfg.loss.bce_weight
        )
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
        b, s = cfg.data.batch_size, cfg.data.image_size
        x = torch.randn(b, cfg.model.in_channels, s, s)
        y = torch.randint(0, max(2, cfg.num_classes), (b, s, s))
        train_one_epoch(model, [(x, y)], loss, opt, step)  # warm-up: allocations, oneDNN plans
        if use_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_one_epoch(model, [(x, y)] * steps, loss, opt, step)
        if use_gpu:
            torch.cuda.synchronize()
        elapsed = (time.perf_counter() - t0) / steps
    finally:
        torch.set_num_threads(threads)
    return Probe(elapsed, b, s, str(device), step.precision.name)


def make_plan(
    cfg: Config,
    resources: Resources,
    *,
    budget_s: float,
    probe: Probe,
    train_images: int,
    val_pixels: float,
    folds: int = 5,
    epochs: int | None = None,
) -> Plan:
    """Epochs, concurrency, the search's share of ``budget_s`` and the folds that fit.

    ``train_images``: images of the training split; ``val_pixels``: pixels of the validation
    split (evaluated at full resolution every epoch). ``epochs``: the epochs of a full trial
    when the user pinned them (``train.epochs`` or ``tune.max_epochs``), instead of what the
    budget holds; ASHA's grace period and the folds' checks then follow the pinned value.
    """
    from segray.search.settings import search_settings

    notes: list[str] = []
    total = {"CPU": resources.cpus, "GPU": resources.gpus}
    concurrency = search_settings(cfg).concurrency(total)
    epoch_s = _epoch_seconds(cfg, probe, train_images, val_pixels)

    def sized(k: int) -> tuple[int, float]:
        """Epochs of a full trial, and its seconds, with ``k`` folds of CV after the search."""
        rounds = math.ceil(k / concurrency) if k >= 2 else 0
        trial_s = budget_s / (FULL_TRIALS + CV_FOLD_FACTOR * rounds)
        return int((trial_s - TRIAL_STARTUP_S) // epoch_s), trial_s

    seen = train_images * cfg.data.samples_per_image * cfg.data.image_size**2  # px an epoch
    pinned = epochs is not None
    k = _cv_folds(folds, lambda k: epochs if pinned else sized(k)[0], seen, pinned, notes)
    if epochs is not None:
        notes.append(f"{epochs} epochs a full trial: pinned by the config, not sized to the budget")
    else:
        epochs, _ = sized(k)
        if epochs < MIN_EPOCHS:
            notes.append(
                f"the budget allows ~{max(epochs, 0)} epochs a trial; training {MIN_EPOCHS}, so "
                f"fewer trials run (a larger --time-budget searches more)"
            )
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, epochs))
    trial_s = TRIAL_STARTUP_S + epochs * epoch_s
    cv_s = math.ceil(k / concurrency) * trial_s * CV_FOLD_FACTOR if k else 0.0
    search_s = max(budget_s - cv_s, min(budget_s, FULL_TRIALS * trial_s))
    # ASHA (rf 2, grace epochs/8, at least 2) stops most trials at an eighth or a quarter.
    expected = max(1, int(search_s * concurrency / (trial_s * 0.45)))
    return Plan(
        budget_s=budget_s,
        concurrency=concurrency,
        workers=cfg.train.num_workers,
        epochs=epochs,
        epoch_s=round(epoch_s, 2),
        trial_s=round(trial_s, 1),
        search_s=round(search_s, 1),
        expected_trials=expected,
        folds=k,
        cv_s=round(cv_s, 1),
        probe=probe,
        notes=notes,
    )


def _epoch_seconds(cfg: Config, probe: Probe, train_images: int, val_pixels: float) -> float:
    """Expected seconds of one epoch of a trial: its steps (all-reduced between its DDP
    workers), the validation at full resolution, and the per-epoch overhead."""
    d, workers = cfg.data, cfg.train.num_workers
    steps = math.ceil(train_images * d.samples_per_image / (d.batch_size * workers))
    fwd_per_pixel = probe.step_s / 3 / (probe.batch * probe.patch**2)  # forward ~1/3 of a step
    return (
        steps * probe.step_s * (DDP_FACTOR if workers > 1 else 1.0)
        + val_pixels / workers * fwd_per_pixel
        + EPOCH_OVERHEAD_S
    )


def _cv_folds(
    folds: int, trial_epochs: Callable[[int], int], seen: float, pinned: bool, notes: list[str]
) -> int:
    """The folds of CV that fit (0: none): from ``folds`` down while a fold would train fewer
    than `MIN_CV_EPOCHS` epochs (``trial_epochs(k)`` with ``k`` folds) or see fewer than
    `MIN_CV_PIXELS` pixels (``seen`` an epoch); a note says why it has fewer, and (``pinned``:
    the epochs are the config's) what adds them."""

    def too_short(k: int) -> bool:
        e = trial_epochs(k)
        return e < MIN_CV_EPOCHS or e * seen < MIN_CV_PIXELS

    k = folds if folds >= 2 else 0
    while k >= 2 and too_short(k):
        k -= 1
    if folds >= 2 and k < 2:
        two = max(trial_epochs(2), 0)  # epochs a fold of 2 would train
        notes.append(
            f"no cross-validation: with 2 folds a fold would train {two} epochs "
            f"on {two * seen / 1e6:.0f} Mpx (needs >= {MIN_CV_EPOCHS} epochs and "
            f"{MIN_CV_PIXELS / 1e6:.0f} Mpx); "
            + ("more epochs add it" if pinned else "a larger --time-budget adds it")
            + ", --folds 0 silences this"
        )
        return 0
    if k < folds:
        notes.append(f"{k} folds instead of {folds}: what fits in the budget")
    return k


def _dur(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
