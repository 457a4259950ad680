"""Follow the config through a segray command on the driver: which files it is handed to, in order.

    python scripts/config_trail.py tune --config configs/tune_local.yaml --output /tmp/t \
        tune.num_samples=1 train.epochs=1

runs the command in this process with a profiler that notes each segray function the first time it
is handed the config, or one of its sections, as an argument (a section's own validators, which get
it as ``self``, are not counted). It prints the files in the order the config reaches them
(consecutive functions in one file folded into one stay), then how many times it moves between files
and how many of those moves return to a file it had already left: the fewer, the more the code reads
in the order the data flows. Only the driver is followed; trial workers are other processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = str(ROOT / "segray")


def _holds_config(frame: FrameType, base: type) -> bool:
    """Whether one of the frame's arguments is the config or a section of it (a pydantic model
    defined in ``segray.config``)."""
    code = frame.f_code
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    names = tuple(n for n in names if n not in ("self", "cls"))  # a section's own methods
    values = (frame.f_locals.get(n) for n in names)
    return any(
        isinstance(v, base) and type(v).__module__.startswith("segray.config") for v in values
    )


def trail(argv: list[str]) -> list[str]:
    """The files, in order, whose functions were handed the config while ``segray ARGV`` ran."""
    from pydantic import BaseModel

    from segray.cli import main

    visits: list[str] = []
    seen: set[Any] = set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event != "call" or code in seen or not code.co_filename.startswith(PACKAGE):
            return
        if code.co_name.startswith("__") or not _holds_config(frame, BaseModel):
            return
        seen.add(code)  # a function counts once, where the code first hands it the config
        where = str(Path(frame.f_code.co_filename).relative_to(ROOT))
        if not visits or visits[-1] != where:
            visits.append(where)

    sys.setprofile(profile)
    try:
        main(argv)
    except SystemExit:
        pass
    finally:
        sys.setprofile(None)
    return visits


def summary(visits: list[str]) -> dict[str, Any]:
    left: set[str] = set()
    returns = 0
    for prev, cur in zip(visits, visits[1:], strict=False):
        left.add(prev)
        returns += cur in left
    return {
        "stays": len(visits),
        "files": len(set(visits)),
        "moves": max(len(visits) - 1, 0),
        "returns": returns,
    }


if __name__ == "__main__":
    visits = trail(sys.argv[1:])
    for i, where in enumerate(visits, 1):
        print(f"{i:3d}  {where}")
    print(json.dumps(summary(visits)))
