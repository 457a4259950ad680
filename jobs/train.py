"""Train one model with DDP (Ray Train) on the cluster this job is submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config configs/train_local.yaml --output runs/train

Thin entry point: the same code as `segray train`, which joins the cluster in RAY_ADDRESS
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
    sys.exit(main(["train", *sys.argv[1:]]))
