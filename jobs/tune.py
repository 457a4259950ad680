"""Hyperparameter search (Ray Tune + Optuna + ASHA, each trial a DDP TorchTrainer) on the cluster this job is submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tune.py --config configs/tune_cluster.yaml --output s3://bucket/segray/tune-1

Thin entry point: the same code as `segray tune`, which joins the cluster in RAY_ADDRESS
(set by `ray job submit`) or starts a local Ray when run by hand. A cluster with token
authentication (deploy/, and current Ray's default) takes the submit only with its token in
the submitter's environment: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH);
the job itself inherits the token from the head (README.md, "Running on a cluster").
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works uninstalled

from segray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
