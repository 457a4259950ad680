"""`segray demo`: `segray auto` on the built-in default, on one machine or a cluster.

synthesise a labelled set and a separate archive (tar shards with a few corrupt files) ->
`segray auto` within the demo's budget: fingerprint -> derived config -> search (Optuna TPE +
ASHA, every trial 2 DDP workers) -> the best model on the held-out test split -> Ray Data bulk
segmentation of the archive, scored against its ground truth -> summary -> OUTPUT/report.html.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

__all__ = ["DEMO", "FIXED", "SMALL", "make_archive", "run_demo"]

# The demo's data and budget: `segray auto` derives everything else (patch, batch, epochs,
# augmentations, the search space) from the data and this machine, as it would for a user's.
DEMO = {"num": 160, "size": 64, "archive": 200, "budget_s": 240.0}
SMALL = {"num": 96, "size": 64, "archive": 48, "budget_s": 100.0}  # the CI-sized variant
# The small demo as fixed work, the same on any machine: 2 trials of 24 epochs (ASHA may stop
# the second at 3, 6 or 12), no time budget and no plateau stop. A budget buys a machine-
# dependent number of epochs, so scores are asserted on this plan only (tests/test_demo.py;
# the floor comes from benchmarks/demo_floor.py over several seeds).
FIXED = [
    "tune.num_samples=2",
    "train.epochs=24",
    "tune.time_budget_s=null",
    "tune.plateau_trials=null",
]


def make_archive(
    folder: Path, *, num: int, size: int, seed: int, shards: int = 2
) -> tuple[list[Path], Path]:
    """A separate synthetic set packed as WebDataset-style tar shards, with corrupt members.

    Returns the shard paths and the ground-truth mask folder. Three members per archive are
    bad on purpose (empty, truncated, not an image): they must come out as error rows.
    """
    from segray.data.synth import generate

    src = generate(folder / "source", num=num, size=size, num_classes=2, seed=seed)
    images = sorted((src / "images").glob("*.png"))
    paths = []
    for s in range(shards):
        path = folder / f"shard-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for img in images[s::shards]:
                tar.add(img, arcname=img.name)
            if s == 0:
                data = images[0].read_bytes()
                for name, payload in (
                    ("empty.png", b""),
                    ("truncated.png", data[: len(data) // 3]),
                    ("notes.png", b"this is not an image\n"),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths, src / "masks"


def run_demo(
    output: str | Path = "segray-demo",
    *,
    small: bool = False,
    overrides: list[str] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """`segray auto` on the built-in synthetic data; returns the summary (``auto_summary.json``).

    A labelled set (OUTPUT/data) goes through the whole of `segray auto` within the budget;
    the archive is a separate synthetic set packed as tar shards with corrupt members, whose
    ground truth scores the bulk segmentation.
    """
    from segray.auto import run_auto
    from segray.data.synth import generate

    sizes = SMALL if small else DEMO
    out = Path(output).resolve()
    data = generate(out / "data", num=sizes["num"], size=sizes["size"], seed=0)
    shards, masks = make_archive(
        out / "archive", num=sizes["archive"], size=sizes["size"], seed=1234
    )
    result = run_auto(
        str(data),
        out,
        time_budget_s=sizes["budget_s"],
        unlabelled=[str(p) for p in shards],
        unlabelled_masks=str(masks),
        folds=0,  # a 2-core laptop's few minutes go to the search; `segray auto` CVs by default
        overrides=list(overrides or []),
        address=address,
    )
    return result.summary
