"""`segray inspect`: fingerprint a dataset (sizes, modes, mask values, classes, balance, problems)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segray.commands.common import OVERRIDE, add_config_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="fingerprint a dataset: sizes, modes, mask values, class mapping, balance, problems",
        description="Read every image and mask header and the pixels of a sample of pairs; "
        "print sizes, modes, bit depths, the mask value histogram, the class mapping "
        "(data.mask_mode: auto is chosen here, as train and tune choose it), class balance and "
        "suspicious files; with --output, write fingerprint.json there. Exits 2 with a "
        "one-line error if the dataset cannot be trained on as configured.",
    )
    p.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help="dataset folder with images/ and masks/ (sets data.root, and data.source=folder "
        "unless the config says pet); default: the config's dataset",
    )
    add_config_args(p)
    p.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="DIR",
        help="write fingerprint.json into DIR (a folder or a URI; default: nothing written)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=256,
        metavar="N",
        help="pairs whose pixels are read, spread over the dataset (default 256)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fingerprint a dataset: sizes, modes, mask values, the class mapping, balance, problems."""
    from segray.config import load_config
    from segray.data.dataset import inspect_data
    from segray.data.remote import root_setting

    overrides = list(args.overrides)
    if args.data is not None and OVERRIDE.match(args.data):  # `segray inspect key=value ...`
        overrides, args.data = [args.data, *overrides], None
    if args.data is not None:
        overrides.append(f"data.root={root_setting(args.data)}")  # a URI stays a URI
        if load_config(args.config, overrides).data.source != "pet":
            overrides.append("data.source=folder")
            overrides += _folder_layout(args.data, load_config(args.config, overrides))
    cfg, fp = inspect_data(load_config(args.config, overrides), strict=False, sample=args.sample)
    print(fp.table())
    if args.output is not None:  # written only where asked: never into the current folder
        print(f"fingerprint -> {fp.save(args.output)}")
    fp.raise_if_unusable()
    if fp.updates:
        settings = " ".join(f"{k}={v}" for k, v in fp.updates.items())
        print(f"train and tune will use: {settings}")
    return 0


def _folder_layout(data: str, cfg: Any) -> list[str]:
    """The image and mask folders of ``data`` found by name (imagesTr/ + labelsTr/, image/ +
    label/, ...), as `segray auto` finds them, where the config keeps the default names."""
    from segray.data.folder import find_layout

    root = Path(data).expanduser()
    if not root.is_dir() or (cfg.data.images_dir, cfg.data.masks_dir) != ("images", "masks"):
        return []
    layout = find_layout([p.name for p in root.iterdir() if p.is_dir()])
    if layout is None or layout == ("images", "masks"):
        return []
    return [f"data.images_dir={layout[0]}", f"data.masks_dir={layout[1]}"]
