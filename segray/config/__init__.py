"""The one typed, validated configuration tree of segray.

Precedence: defaults < YAML file < ``key.path=value`` overrides (command line or a search).
Every section forbids unknown keys; every field documents itself; every error names the key,
the value and what is allowed, on one line, before any work starts.

    cfg = load_config("configs/train_local.yaml", ["loss.bce_weight=0.3", "optim.lr=1e-3"])
    cfg.num_classes            # 1 for a binary task (one sigmoid logit), K for K > 2 classes
    print(cfg.to_yaml())       # the resolved config, as written next to every output

The tree is declared in `segray.config.schema` (one class per section, every field documented
where it is declared); `segray.config.load` reads YAML files and ``key=value`` overrides into it
and turns validation errors into one line.
"""

from segray.config.load import apply_overrides, file_overrides, load_config, parse_overrides
from segray.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SegmentConfig,
    SynthConfig,
    TrainConfig,
    TuneConfig,
)

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
