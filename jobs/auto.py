"""`segray auto` on the cluster this job is submitted to: the derived config, the search within
its time budget (as many trials at once as the cluster holds), CV, the test score, the bulk
segmentation and the report.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/auto.py --data s3://bucket/cells --time-budget 1h \
        --unlabelled s3://bucket/archive/ --output s3://bucket/segray/auto-1 --resume-or-start

With ``--resume-or-start`` a resubmitted job (a retried RayJob) continues the run in --output
after its last finished stage instead of refusing it. Thin entry point: the same code as `segray auto`, which joins the cluster in RAY_ADDRESS
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
    sys.exit(main(["auto", *sys.argv[1:]]))
