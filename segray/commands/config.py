"""`segray config show`: the resolved config (defaults < YAML < overrides)."""

from __future__ import annotations

import argparse

from segray.commands.common import add_config_args, load


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = csub.add_parser("show", help="print the resolved config (defaults < YAML < overrides)")
    add_config_args(s)
    s.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    """Print the resolved config as YAML (a ``tune.space`` is checked too)."""
    from segray.search.space import parse_space

    cfg = load(args)
    if cfg.tune.space:
        parse_space(cfg.tune.space, cfg)
    print(cfg.to_yaml(), end="")
    return 0
