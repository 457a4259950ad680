"""What a finished trial scores: the checkpoint it offers as its best, and what Optuna is told
about it (no Ray cluster needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from segray.search.results import _best_kept_epoch, _kept_epochs
from segray.search.searcher import RankedOptunaSearch
from segray.search.settings import best_score, score_key


def _epoch(hist: pd.DataFrame, row) -> int:
    return int(hist.loc[row, "epoch"])


def test_kept_epochs_lists_the_checkpoint_folders_ray_left(tmp_path: Path):
    for name in ("checkpoint_epoch_0003", "checkpoint_epoch_0004", "checkpoint_epoch_x"):
        (tmp_path / "trial_ab" / name).mkdir(parents=True)
    (tmp_path / "trial_ab" / "checkpoint_epoch_0005").write_text("a file, not a checkpoint")
    assert _kept_epochs(str(tmp_path), "ab") == {3, 4}
    assert _kept_epochs(str(tmp_path), "missing") == set()


def test_best_epoch_is_one_whose_checkpoint_was_kept():
    hist = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_dice": [0.9, 0.5, 0.6, 0.7]})
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, {1, 4})) == 1
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, {3, 4})) == 4  # 1 was deleted
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", -1.0, {1, 2, 3, 4})) == 2  # mode=min


def test_a_tie_goes_to_the_later_epoch():
    """A model stuck on one prediction scores the same every epoch: Ray keeps the later
    checkpoints, so the first best epoch may have no checkpoint any more."""
    hist = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_dice": [0.6] * 4})
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, {3, 4})) == 4
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, set())) == 4


def test_nan_and_inf_epochs_are_never_best():
    hist = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_dice": [0.4, math.nan, math.inf, 0.3]})
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, {1, 2, 3, 4})) == 1
    loss = pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [0.7, -math.inf, math.nan]})
    assert _epoch(loss, _best_kept_epoch(loss, "val_loss", -1.0, {1, 2, 3})) == 1
    assert best_score([0.4, math.nan, math.inf, 0.3], "max") == 0.4
    assert best_score([0.7, -math.inf, math.nan], "min") == 0.7
    assert best_score([math.nan], "max") == -math.inf and best_score([math.nan], "min") == math.inf
    assert score_key(math.nan, "max") == score_key(math.inf, "max") == -math.inf
    assert score_key(0.2, "min") > score_key(0.3, "min")


# --------------------------------------------------------------------------- what Optuna is told
def _searcher(mode: str = "max", *, max_epochs: int = 4, trials: int = 1):
    import optuna
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True)
    s = RankedOptunaSearch(metric="val_dice", mode=mode, sampler=sampler, max_epochs=max_epochs)
    s.set_search_properties(None, None, {"optim.lr": tune.loguniform(1e-4, 1e-2)})
    for i in range(trials):
        assert "optim.lr" in s.suggest(f"t{i}")
    return s


def _run(s, trial_id: str, values: list[float], *, stopped_early: bool = False, error=False):
    """Tune's calls for a trial that reported ``values`` for epochs 1..n: every result but the
    last through on_trial_result, the last only with the completion (as when ASHA stops it)."""
    results = [
        {"epoch": e, "val_dice": v, "training_iteration": e, "stopped_early": False}
        for e, v in enumerate(values, 1)
    ]
    if results:
        results[-1]["stopped_early"] = stopped_early
    for r in results[:-1]:
        s.on_trial_result(trial_id, r)
    s.on_trial_complete(trial_id, result=None if error else results[-1], error=error)


def test_a_finished_trial_is_complete_with_its_best_epoch_not_its_last():
    s = _searcher(trials=1)
    _run(s, "t0", [0.2, 0.6, 0.5, 0.4])
    (trial,) = s._ot_study.trials
    assert trial.state.name == "COMPLETE" and trial.value == 0.6
    assert trial.intermediate_values == {1: 0.2, 2: 0.6, 3: 0.5, 4: 0.4}  # the learning curve


def test_a_trial_the_scheduler_stopped_is_pruned_at_its_rung():
    s = _searcher(trials=3)
    _run(s, "t0", [0.3])  # ASHA stopped it after epoch 1 of 4
    _run(s, "t1", [0.1, 0.2], stopped_early=True)  # its own early stopping: a finished trial
    _run(s, "t2", [0.5, 0.6], error=True)
    pruned, early, failed = s._ot_study.trials
    assert pruned.state.name == "PRUNED" and pruned.last_step == 1
    assert pruned.intermediate_values == {1: 0.3}
    assert early.state.name == "COMPLETE" and early.value == 0.2
    assert failed.state.name == "FAIL" and failed.value is None
    assert failed.intermediate_values == {1: 0.5}  # the last result never arrived


def test_nan_and_inf_are_worst_in_what_optuna_is_told():
    s = _searcher(trials=3)
    _run(s, "t0", [0.3, math.nan, math.inf, 0.1])
    _run(s, "t1", [math.nan] * 4)  # diverged: complete, and below every finite trial
    _run(s, "t2", [math.inf])  # stopped at epoch 1 on +inf: pruned, its value the worst
    best, diverged, pruned = s._ot_study.trials
    assert best.value == 0.3
    assert diverged.state.name == "COMPLETE" and diverged.value == -math.inf
    assert math.isnan(best.intermediate_values[3])  # +inf would have been the best
    assert pruned.state.name == "PRUNED" and math.isnan(pruned.intermediate_values[1])
    assert s._ot_study.best_trial.number == best.number


def test_minimising_tells_the_smallest_finite_value():
    s = _searcher("min", max_epochs=3)
    _run(s, "t0", [0.9, -math.inf, 0.5])
    assert s._ot_study.trials[0].value == 0.5


def test_running_trials_are_constant_lies_and_the_state_survives_save_restore(tmp_path):
    s = _searcher(trials=2)
    assert s._ot_study.sampler._constant_liar
    s.on_trial_result("t0", {"epoch": 1, "val_dice": 0.4})
    path = str(tmp_path / "searcher.pkl")
    s.save(path)
    again = _searcher(trials=0)
    again.restore(path)
    again.on_trial_complete("t0", result={"epoch": 4, "val_dice": 0.2})
    trial = again._ot_study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.value == 0.4  # epoch 1 came from the save
    assert again._ot_study.trials[1].state.name == "RUNNING"


# --------------------------------------------------------------------------- why a trial ended
def test_a_trial_is_labelled_by_what_ended_it(tmp_path: Path):
    """Finished (its training returned), stopped by ASHA (the marker it left), stopped by the
    search's time budget (the search's stop record), else interrupted: never "stopped early"."""
    from segray.search.results import ASHA_MARKER, DONE_MARKER, _why_unfinished

    uri = str(tmp_path)
    for name, marker in (("done", DONE_MARKER), ("asha", ASHA_MARKER), ("cut", None)):
        (tmp_path / f"trial_{name}").mkdir()
        if marker:
            (tmp_path / f"trial_{name}" / marker).write_text("{}")
    assert _why_unfinished(uri, "done", {}) == ("TERMINATED", None)
    assert _why_unfinished(uri, "asha", {"by": "time budget"}) == ("TERMINATED", "asha")
    assert _why_unfinished(uri, "cut", {"by": "time budget"}) == ("TERMINATED", "time budget")
    assert _why_unfinished(uri, "cut", {}) == ("INTERRUPTED", None)
    assert _why_unfinished(uri, None, {}) == ("INTERRUPTED", None)  # never reported


def test_the_search_stop_records_the_time_budget_and_a_resume_reads_it_again(
    tmp_path: Path, monkeypatch
):
    import pickle

    from segray.config import load_config
    from segray.search.searcher import SearchStop

    now = [1000.0]
    monkeypatch.setattr("segray.search.searcher.time.monotonic", lambda: now[0])
    record, config = tmp_path / "stop.json", tmp_path / "config.yaml"
    config.write_text(load_config(None, ["tune.time_budget_s=60"]).to_yaml())
    stop = SearchStop(str(record), None, budget_s=60, config=str(config))
    assert not stop.stop_all()
    now[0] += 30
    assert not stop.stop_all() and not record.exists()
    now[0] += 31
    assert stop.stop_all()
    assert json.loads(record.read_text()) == {"by": "time budget"}

    # Restored with a resumed search whose config now allows 100 s: 61 s used, 39 s left.
    config.write_text(load_config(None, ["tune.time_budget_s=100"]).to_yaml())
    restored = pickle.loads(pickle.dumps(stop))
    assert restored.budget_s == 100 and restored.used_s == 61
    now[0] += 3600  # the time between the two runs does not count
    assert not restored.stop_all()
    now[0] += 40
    assert restored.stop_all()


def test_asha_leaves_a_marker_only_where_it_stops_a_trial_at_a_rung(tmp_path: Path):
    from types import SimpleNamespace

    from segray.search.results import ASHA_MARKER
    from segray.search.searcher import RecordingASHA

    asha = RecordingASHA(
        trials_uri=str(tmp_path),
        time_attr="epoch",
        metric="val_loss",
        mode="min",
        max_t=4,
        grace_period=1,
        reduction_factor=2,
    )
    good, bad = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="bad")
    for t in (good, bad):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, good, {"epoch": 1, "val_loss": 0.1}) == asha.CONTINUE
    assert asha.on_trial_result(None, bad, {"epoch": 1, "val_loss": 0.9}) == asha.STOP
    assert (tmp_path / "trial_bad" / ASHA_MARKER).is_file()
    assert asha.on_trial_result(None, good, {"epoch": 4, "val_loss": 0.1}) == asha.STOP  # max_t
    assert not (tmp_path / "trial_good" / ASHA_MARKER).exists()  # it ran all its epochs
