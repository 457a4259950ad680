"""Loading the config tree: defaults < YAML file < ``key.path=value`` overrides.

YAML syntax errors, unknown keys, renamed keys and invalid values all become one-line
`ConfigError`s naming the file (line, column) or the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from segray.config.schema import _RENAMED, Config, ConfigError

__all__ = ["apply_overrides", "file_overrides", "load_config", "parse_overrides"]


# --------------------------------------------------------------------------- loading
def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults < ``base`` dict < YAML ``path`` < ``overrides`` (``"a.b=value"`` or a dict)."""
    data: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if path is not None:
        data = _deep_merge(data, _read_yaml(path))
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for key, value in overrides.items():
        _set_path(data, key, value)
    return Config.from_dict(data)


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | Iterable[str]) -> Config:
    """A new, re-validated Config with dotted-key overrides applied (used per search trial)."""
    return load_config(None, overrides, base=cfg.to_dict())


def file_overrides(path: str | Path) -> dict[str, Any]:
    """A YAML config file as dotted-key overrides: ``{segment: {batch_size: 16}}`` ->
    ``{"segment.batch_size": 16}`` (for commands whose config comes from a checkpoint)."""

    def flat(prefix: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not value:
            return {prefix: value}
        return {k: v for key, sub in value.items() for k, v in flat(f"{prefix}.{key}", sub).items()}

    return {k: v for key, value in _read_yaml(path).items() for k, v in flat(key, value).items()}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "model.dilation_rates=[1,2,4,8]"]`` -> dotted key -> YAML value."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. optim.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {item!r}: value is not valid YAML: {_yaml_problem(e, column_offset=len(key) + 1)}"
            ) from None
        out[key] = _yaml_number(value)
    return out


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads '1e-3' as a string; a CLI user means the number."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            return value
    return value


def _read_text(path: str) -> str:
    from segray.storage import is_uri, read_text

    if is_uri(path):
        text = read_text(path)
        if text is None:
            raise ConfigError(f"{path}: config file not found")
        return text
    local = Path(path.removeprefix("file://"))
    if not local.is_file():
        raise ConfigError(f"{local}: config file not found")
    return local.read_text()


def _read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file: a local path or any URI `segray.storage` reads (``s3://b/run/config.yaml``)."""
    text = _read_text(str(path))
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _yaml_problem(err: yaml.YAMLError, *, column_offset: int | None = None) -> str:
    """One line from a YAML parser error: what is wrong (and, for an override, at which
    character of ``key=value``; a file's error is prefixed with file:line:column instead)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    text = f"{problem} ({context})" if context else problem
    mark = getattr(err, "problem_mark", None)
    if column_offset is not None and mark is not None:
        text += f" at character {column_offset + mark.column + 1}"
    return " ".join(text.split())


def _deep_merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``dotted`` in ``data`` by walking the schema: sections nest, dict fields take the rest.

    ``tune.space.optim.lr`` therefore sets the key ``optim.lr`` of the dict field ``tune.space``.
    """
    parts = dotted.split(".")
    model: type[BaseModel] = Config
    node = data
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            renamed = _RENAMED.get(".".join(parts[: i + 1]))
            if renamed:
                raise ConfigError(f"{dotted}={value!r}: {renamed}")
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(
                f"{dotted}={value!r}: unknown key {part!r} in {where}; valid: {', '.join(fields)}"
            )
        annotation = fields[part].annotation
        last = i == len(parts) - 1
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if last:
                node[part] = value
                return
            model = annotation
            child = node.get(part)
            node = node.setdefault(part, {}) if isinstance(child, dict) or child is None else child
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {'.'.join(parts[: i + 1])} is not a section")
            continue
        if last:
            node[part] = value
        else:  # a dict-valued field: the remaining dotted path is one key of it
            sub = node.get(part)
            if not isinstance(sub, dict):
                sub = node[part] = {}
            sub[".".join(parts[i + 1 :])] = value
        return
