"""The `segray` sub-commands, one module each: ``add_parser(subparsers)`` declares the
command's options next to ``run(args)``, its handler (`segray.cli` assembles them).

Heavy imports happen inside the handlers so that ``segray --help`` answers without torch or
Ray. A handler returns the exit status (None = 0); bad input raises a
`segray.errors.UserError` (or one of the other `segray.errors.USER_ERRORS`), which
`segray.cli.main` prints as one line.
"""

from __future__ import annotations

from segray.commands import (
    auto,
    config,
    cv,
    demo,
    evaluate,
    export,
    inspect,
    models,
    report,
    segment,
    synth,
    train,
    tune,
)

COMMANDS = (
    demo,
    auto,
    models,
    synth,
    config,
    inspect,
    train,
    tune,
    cv,
    segment,
    evaluate,
    report,
    export,
)
"""In the order `segray --help` lists them."""

__all__ = ["COMMANDS"]
