"""`segray models`: the registered models with their encoders and parameter counts."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models, encoders and parameter counts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the registered models with their encoders and parameter counts (from the
    catalog: no model is built, torch is not imported)."""
    from segray.models import list_models, model_info, parameter_count

    rows = [("model", "encoder", "params (3 ch, 1 class)", "description")]
    for name in list_models():
        info = model_info(name)
        for enc in info["encoders"] or [None]:
            n = parameter_count(name, enc)
            rows.append((name, enc or "-", f"{n / 1e6:.1f} M", info["description"]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0
