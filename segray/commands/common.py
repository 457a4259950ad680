"""What several commands share: the option groups, the config they load, resuming a search."""

from __future__ import annotations

import argparse
import re

OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z_]+)+=")  # section.key=value


def add_config_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--config FILE`` and trailing ``key.path=value`` overrides."""
    p.add_argument("--config", "-c", metavar="FILE", required=required, help="YAML config file")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="config overrides, e.g. optim.lr=3e-4 model.dilation_rates=[1,2,4,8]",
    )


def add_overrides(p: argparse.ArgumentParser, help: str) -> None:
    """Trailing ``key.path=value`` overrides without a ``--config``."""
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help=help)


def add_tta(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta",
        choices=["none", "flip", "d4"],
        default=None,
        help="test-time augmentation: flips (4x) or the 8 dihedral transforms (8x), averaged "
        "(default: the checkpoint's segment.tta)",
    )


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
    )


def load(args: argparse.Namespace):
    """The config of ``--config`` and the overrides (defaults < YAML < overrides)."""
    from segray.config import load_config

    return load_config(args.config, args.overrides)


def resume_or_start(args: argparse.Namespace, what: str) -> None:
    """``--resume-or-start``: continue the search in ``--output`` if it holds one."""
    from segray.search.run import search_exists

    if args.resume_or_start and not args.resume and search_exists(args.output):
        print(f"resuming the {what} in {args.output} (--resume-or-start)")
        args.resume = args.output


def resume_config(args: argparse.Namespace):
    """Resuming: the config that ``--config`` and the overrides ask for (``--config`` whole,
    else the saved config with the overrides), which the resume compares with the saved one;
    None without either (the saved config as it is)."""
    from segray.config import load_config
    from segray.storage import Location

    if not args.config and not args.overrides:
        return None
    saved = Location.parse(args.resume).join("config.yaml")
    if not args.config and not saved.exists():
        raise FileNotFoundError(f"{args.resume}: no config.yaml: not a segray output to resume")
    return load_config(args.config or saved.uri, args.overrides)
