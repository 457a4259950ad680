"""Search spaces in YAML: ``tune.space`` maps dotted config keys to distributions.

    tune:
      space:
        model.dilation_rates: {choice: [[1, 6, 12, 18], [1, 3, 6, 9], [1, 2, 4, 8]]}
        loss.bce_weight: {uniform: [0.0, 1.0]}
        optim.lr: {loguniform: [1.0e-5, 1.0e-2]}
        data.batch_size: {qrandint: [4, 16, 4]}

Forms: ``choice: [v, ...]``, ``uniform|loguniform: [low, high]``,
``quniform|qloguniform: [low, high, q]``, ``randint: [low, high)``, ``qrandint: [low, high, q]``
(high inclusive, Tune's convention), ``grid: [v, ...]`` (exhaustive; for grid baselines).

Values that are not scalars (a list of dilation rates) travel through Tune and Optuna's
storage as JSON strings and are decoded before the trial's config is built. Every value a
distribution can produce at its bounds, and every choice, is validated against the config
schema when the space is parsed, before any trial starts (together with the other keys' bounds
and choices, while their combinations are few).

A key that the trials would ignore is refused as well: ``loss.bce_weight`` does nothing unless
``loss.name`` is ``bce_dice``, ``optim.momentum`` unless the optimizer is SGD, and so on
(`segray.config.usage`). Otherwise the search spends trials on a value that changes
nothing, and TPE learns noise. Each trial checks the same table again at run time
(`segray.train.check_applied`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from segray.config import Config, ConfigError, apply_overrides
from segray.config.usage import unused_reason

__all__ = ["Param", "SearchSpace", "parse_space"]

COMBINATIONS_CHECKED = 256  # validate every combination of bounds/choices up to this many

FORMS = {
    "choice": None,
    "grid": None,
    "uniform": 2,
    "loguniform": 2,
    "quniform": 3,
    "qloguniform": 3,
    "randint": 2,
    "qrandint": 3,
}


@dataclass(frozen=True)
class Param:
    """One searched key: its form, arguments, and whether values are JSON-encoded."""

    key: str
    form: str
    args: tuple[Any, ...]
    encoded: bool = False

    def encode(self, value: Any) -> Any:
        return json.dumps(value) if self.encoded else value

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.encoded else value

    @property
    def bounds(self) -> list[Any]:
        """Values that must all be valid configs: every choice, or both ends of a range."""
        if self.form in ("choice", "grid"):
            return list(self.args)
        low, high = self.args[0], self.args[1]
        if self.form == "randint":
            return [low, high - 1]
        return [low, high]

    def tune_domain(self) -> Any:
        from ray import tune

        a = self.args
        if self.form == "choice":
            return tune.choice([self.encode(v) for v in a])
        if self.form == "grid":
            return tune.grid_search([self.encode(v) for v in a])
        return getattr(tune, self.form)(*a)

    def optuna_distribution(self) -> Any:
        import optuna.distributions as od

        a = self.args
        if self.form in ("choice", "grid"):
            return od.CategoricalDistribution([self.encode(v) for v in a])
        if self.form in ("uniform", "loguniform", "qloguniform"):  # Optuna: no step with log
            return od.FloatDistribution(a[0], a[1], log=self.form != "uniform")
        if self.form == "quniform":
            return od.FloatDistribution(a[0], a[1], step=a[2])
        if self.form == "randint":
            return od.IntDistribution(a[0], a[1] - 1)
        return od.IntDistribution(a[0], a[1], step=a[2])


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, validated ``tune.space``."""

    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def tune_param_space(self) -> dict[str, Any]:
        return {p.key: p.tune_domain() for p in self.params}

    def decode(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A Tune trial config (encoded) -> dotted config overrides (real values)."""
        return {p.key: p.decode(config[p.key]) for p in self.params if p.key in config}

    def optuna_distributions(self) -> dict[str, Any]:
        return {p.key: p.optuna_distribution() for p in self.params}

    @property
    def is_grid(self) -> bool:
        return any(p.form == "grid" for p in self.params)

    def grid_size(self) -> int:
        return math.prod(len(p.args) for p in self.params if p.form == "grid")


def _fail(key: str, spec: Any, why: str) -> ConfigError:
    return ConfigError(f"tune.space.{key}={spec!r}: {why}")


def _parse_param(key: str, spec: Any) -> Param:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise _fail(key, spec, f"expected one of {{{', '.join(FORMS)}: ...}}")
    ((form, args),) = spec.items()
    if form not in FORMS:
        raise _fail(key, spec, f"unknown distribution {form!r}; valid: {', '.join(FORMS)}")
    if form in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise _fail(key, spec, f"{form} needs a non-empty list of values")
        encoded = any(isinstance(v, (list, dict)) for v in args)
        if len({json.dumps(v, sort_keys=True) for v in args}) != len(args):
            raise _fail(key, spec, f"{form} values must be distinct")
        return Param(key, form, tuple(args), encoded)
    n = FORMS[form]
    if (
        not isinstance(args, list)
        or len(args) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)
    ):
        names = "[low, high]" if n == 2 else "[low, high, q]"
        raise _fail(key, spec, f"{form} needs {names} numbers")
    low, high = args[0], args[1]
    if not low < high:
        raise _fail(key, spec, f"need low < high, got {low} >= {high}")
    if "log" in form and low <= 0:
        raise _fail(key, spec, f"{form} needs low > 0")
    if form in ("randint", "qrandint") and not all(float(v).is_integer() for v in args):
        raise _fail(key, spec, f"{form} needs integers")
    if n == 3 and args[2] <= 0:
        raise _fail(key, spec, "q must be > 0")
    if form in ("randint", "qrandint"):
        args = [int(v) for v in args]
    return Param(key, form, tuple(args))


def parse_space(space: Mapping[str, Any], base: Config) -> SearchSpace:
    """Parse ``tune.space`` and check it against the config schema before any trial starts.

    Every bound and choice must make a valid config together with the other keys' bounds and
    choices (all combinations while there are at most `COMBINATIONS_CHECKED`, else one key at a
    time, the others at their first bound), in which no searched key is ignored
    (`unused_reason`).
    """
    if not space:
        raise ConfigError(
            "tune.space is empty: name at least one key to search, e.g. optim.lr: {loguniform: [1.0e-4, 1.0e-2]}"
        )
    params = tuple(_parse_param(key, spec) for key, spec in space.items())
    keys = [p.key for p in params]
    if math.prod(len(p.bounds) for p in params) <= COMBINATIONS_CHECKED:
        samples = [
            dict(zip(keys, values)) for values in itertools.product(*(p.bounds for p in params))
        ]
    else:  # one key at a time through its bounds, the others at their first bound
        first = {p.key: p.bounds[0] for p in params}
        samples = [{**first, p.key: v} for p in params for v in p.bounds]
    for sample in samples:
        _check_trial(base, sample)
    return SearchSpace(params)


def _check_trial(base: Config, sample: dict[str, Any]) -> None:
    """Raise a one-line ConfigError if ``sample`` makes an invalid trial or one that ignores a
    sampled key."""
    try:
        cfg = apply_overrides(base, sample)
    except ConfigError as e:
        for key, value in sample.items():  # name one value if it is invalid on its own
            try:
                apply_overrides(base, {key: value})
            except ConfigError as alone:
                raise ConfigError(
                    f"tune.space.{key}: value {value!r} would make an invalid trial: {alone}"
                ) from None
        raise ConfigError(f"tune.space: {_show(sample)} would make an invalid trial: {e}") from None
    for key in sample:
        reason = unused_reason(key, cfg)
        if reason:
            raise ConfigError(f"tune.space.{key}: a trial would ignore it: {reason}")


def _show(sample: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sample.items())
