"""A run's settings and the refusals made before any work: the checkpoint's config with
``segment.*`` overrides, ``--masks`` encodings, actor resources, GPUs, shared output paths."""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from segray.cluster import ResourceError, check_cuda, check_fits, total_resources
from segray.config import (
    Config,
    ConfigError,
    SegmentConfig,
    apply_overrides,
    file_overrides,
    parse_overrides,
)
from segray.data.io import ImageError, read_mask
from segray.segment.infer import cuda_missing
from segray.segment.plan import InputError
from segray.segment.read import MaskIndex
from segray.storage import Location

__all__ = ["ROW_SETTINGS", "check_resources", "check_shared", "resolve_mask_mode", "segment_config"]

# Settings that change what a row holds: a resumed run must use the same ones.
ROW_SETTINGS = (
    "tile_size",
    "tile_overlap",
    "threshold",
    "max_pixels",
    "uncertain_low",
    "uncertain_high",
    "image_column",
    "id_column",
    "shard_size",
    "precision",
    "tta",
    "thresholds",
    "min_component_px",
    "fill_holes",
    "keep_largest",
)
# The data.* keys a run may override: how --masks files map to classes.
MASK_KEYS = (
    "data.mask_mode",
    "data.mask_threshold",
    "data.mask_values",
    "data.trimap_uncertain",
    "data.ignore_index",
)


# --------------------------------------------------------------------------- config
def segment_config(ckpt: str, overrides: Iterable[str], config: str | Path | None = None) -> Config:
    """The checkpoint's config with ``segment.*`` / ``data.*`` overrides (the model is fixed),
    from ``config`` (a YAML file) and then ``overrides``."""
    sources = [(str(config), file_overrides(config))] if config is not None else []
    sources.append(("override", parse_overrides(list(overrides))))
    parsed: dict[str, Any] = {}
    for where, items in sources:
        fixed = [k for k in items if not k.startswith("segment.") and k not in MASK_KEYS]
        if fixed:
            raise ConfigError(
                f"{where}: {fixed[0]}: segment takes segment.* settings and, to map --masks, "
                f"{', '.join(MASK_KEYS)}; the model and its preprocessing come from the "
                "checkpoint"
            )
        parsed.update(items)
    from segray.checkpoint import load_checkpoint_config

    return apply_overrides(load_checkpoint_config(ckpt), parsed)


def mask_mapping(cfg: Config) -> dict[str, Any]:
    return {key: getattr(cfg.data, key.split(".", 1)[1]) for key in MASK_KEYS}


def resolve_mask_mode(cfg: Config, index: MaskIndex, sample: int = 32) -> Config:
    """``data.mask_mode: auto`` (a checkpoint from before modes were resolved at training, or an
    override) chosen from the values of up to ``sample`` ground-truth masks spread over the
    folder, as training chooses it. Masks with only background (a legitimate evaluation set)
    map 0 to background whatever the encoding."""
    from segray.data.mask_mode import resolve_mask_mode

    rels = sorted(index.by_rel.values())
    picked = rels[:: max(1, len(rels) // sample)][:sample]
    histogram: Counter[int] = Counter()
    for rel in picked:
        path = posixpath.join(index.root.path, rel)
        try:
            with index.root.fs.open_input_file(path) as f:
                values, counts = np.unique(
                    read_mask(
                        f.read(),
                        name=path,
                        max_pixels=cfg.segment.max_pixels,
                        colors=bool(cfg.data.mask_colors),
                    ),
                    return_counts=True,
                )
        except (ImageError, OSError):
            continue  # an unreadable mask becomes that image's gt_error later
        histogram.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    if set(histogram) == {0}:  # (0/255 masks with ignore_index 255 are binary: not here)
        return apply_overrides(cfg, {"data.mask_mode": "index"})
    _, mode, updates, _, error = resolve_mask_mode(cfg.data, dict(histogram))
    if error or mode is None:
        raise InputError(f"--masks {index.root.uri}: {error or 'cannot choose data.mask_mode'}")
    return apply_overrides(cfg, updates)


# --------------------------------------------------------------------------- refusals
def check_resources(seg: SegmentConfig) -> None:
    """Fail now for an actor pool the cluster can never hold, one that starves the reads, or
    GPU actors where CUDA is missing."""
    bundle = {"CPU": seg.cpus_per_actor, "GPU": seg.gpus_per_actor}
    check_fits(bundle, seg.concurrency, "segment actor pool (segment.concurrency actors)")
    cpus = total_resources().get("CPU", 0.0)
    held = seg.concurrency * seg.cpus_per_actor
    if held + seg.io_cpus > cpus + 1e-9:
        raise ResourceError(
            f"segment actor pool takes {held:g} of the cluster's {cpus:g} CPUs "
            f"(segment.concurrency={seg.concurrency} x segment.cpus_per_actor="
            f"{seg.cpus_per_actor:g}), leaving less than segment.io_cpus={seg.io_cpus:g} for "
            "reading and writing: the pipeline would never read. Lower concurrency or "
            "cpus_per_actor"
        )
    if seg.gpus_per_actor > 0:
        check_cuda(seg.gpus_per_actor, cuda_missing(seg))


def check_shared(*locations: Location | None) -> None:
    """Refuse a local output path that the nodes running the tasks do not see as the driver
    does (a cluster without a shared filesystem at that path): a file written here must be
    visible on every node that can run a task."""
    local = [loc for loc in locations if loc is not None and loc.is_local]
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in nodes if n["NodeID"] != here]
    if not local or not others:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for loc in local:
        Path(loc.path).mkdir(parents=True, exist_ok=True)
        token = Path(loc.path, f".segray-probe-{os.urandom(6).hex()}")
        token.write_text("")
        try:
            seen = ray.get(
                [
                    ray.remote(num_cpus=0)(os.path.exists)
                    .options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], False))
                    .remote(str(token))
                    for n in others
                ]
            )
        finally:
            token.unlink()
        blind = [n["NodeManagerAddress"] for n, ok in zip(others, seen, strict=True) if not ok]
        if blind:
            raise InputError(
                f"{loc.uri} is a local path that node(s) {', '.join(sorted(set(blind)))} do not "
                "share with this driver: pass an object-store URI (s3://bucket/out, gs://...) "
                "or a filesystem mounted at the same path on every node"
            )
