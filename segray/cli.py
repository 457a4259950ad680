"""The `segray` command line: one sub-command per stage of the data flow, each declared and
handled in its own module of `segray.commands`.

Every command that takes a config accepts ``--config FILE`` and trailing ``key.path=value``
overrides (defaults < YAML < overrides). Heavy imports happen inside the commands so that
``segray --help`` answers at once, without torch or Ray.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from segray.commands import COMMANDS
from segray.errors import USER_ERRORS
from segray.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segray",
        description="Tune, train and run image-segmentation models on Ray "
        "(a laptop in local mode, or a cluster via RAY_ADDRESS / ray job submit).",
    )
    parser.add_argument("--version", action="version", version=f"segray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:  # bad input: one clear line, no traceback
        print(f"segray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a RunInterrupted says what stopped and how to continue
        print(f"segray: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
