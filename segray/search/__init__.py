"""The search: a space of configs, a searcher that ranks them, Ray Tune running each as a DDP
trial, and the results a finished search leaves.

settings.py   the search's settings from the config: metric, mode, epochs, trial size, concurrency
space.py      search spaces in YAML, checked against what a trial would ignore
searcher.py   Optuna told each trial's best epoch; ASHA, budget and plateau stops; concurrency
run.py        `segray tune`: Ray Tune + Optuna + ASHA, each trial a DDP `TorchTrainer`
results.py    trials.parquet, history, summary, the published best checkpoint
cv.py         k-fold cross-validation as parallel DDP trials, out-of-fold predictions
"""
