"""The one typed, validated configuration tree of segray.

Precedence: defaults < YAML file < ``key.path=value`` overrides (command line or a search).
Every section forbids unknown keys; every field documents itself; every error names the key,
the value and what is allowed, on one line, before any work starts.

    cfg = load_config("configs/train_local.yaml", ["loss.bce_weight=0.3", "optim.lr=1e-3"])
    cfg.num_classes            # 1 for a binary task (one sigmoid logit), K for K > 2 classes
    print(cfg.to_yaml())       # the resolved config, as written next to every output

The tree is declared one section group per file (`segray.config.data`, `model`, `train`,
`tune`, `segment`; every field documented where it is declared) under its root
`segray.config.schema.Config`; `segray.config.load` reads YAML files and ``key=value`` overrides
into it and turns validation errors into one line.
"""

from segray.config.base import ConfigError
from segray.config.data import DataConfig, SynthConfig
from segray.config.load import apply_overrides, file_overrides, load_config, parse_overrides
from segray.config.model import ModelConfig
from segray.config.schema import Config
from segray.config.segment import SegmentConfig
from segray.config.train import LossConfig, OptimConfig, TrainConfig
from segray.config.tune import TuneConfig

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SegmentConfig",
    "SynthConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",
    "file_overrides",
    "load_config",
    "parse_overrides",
]
