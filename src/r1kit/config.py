"""Run configs: typed dataclasses loaded from YAML with `key=value` overrides, validated before any work.

Every entry point declares one config class with `@configclass` (a pydantic dataclass): field types are the
validation. Enum-like fields are `Literal[...]`, ranges are `Annotated` constraints (`PositiveInt`, `Field(ge=0)`),
unknown keys are errors, and numbers written as strings by YAML 1.1 (`5e-5`) still read as numbers. Only rules
that tie several fields together live in `__post_init__`. `load_config(Cls, path, overrides)` reads the YAML
file, applies dotted overrides (`--set optim.lr=1e-4`) and builds the class; any problem becomes one
`ConfigError` line that names the file and the field.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import pydantic.dataclasses
import yaml

from r1kit.errors import ConfigError

T = TypeVar("T")

_PYDANTIC = pydantic.ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def configclass(cls: type[T] | None = None, *, frozen: bool = False):
    """`@dataclass` for configs: validated from the annotations at construction, unknown fields rejected."""

    def wrap(c: type[T]) -> type[T]:
        return pydantic.dataclasses.dataclass(c, config=_PYDANTIC, frozen=frozen)

    return wrap if cls is None else wrap(cls)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """['a.b=1', 'c=[1,2]'] -> {'a': {'b': 1}, 'c': [1, 2]} (values parsed as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields")
    return data


def build(cls: type[T], data: dict, where: str = "config") -> T:
    """`cls(**data)` with pydantic's and `__post_init__`'s errors turned into one line naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}")
    try:
        return cls(**data)
    except pydantic.ValidationError as e:
        raise ConfigError(describe_error(e, cls, where)) from None


def describe_error(e: pydantic.ValidationError, cls: type, where: str) -> str:
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in err["loc"])
    if err["type"] == "unexpected_keyword_argument":
        known = _fields_at(cls, err["loc"][:-1])
        return f"{where}: unknown field {loc!r}" + (f" (fields: {', '.join(known)})" if known else "")
    msg = err["msg"].removeprefix("Value error, ")
    given = "" if err["type"] == "value_error" or "input" not in err else f" (got {err['input']!r})"
    return f"{where}.{loc}: {msg}{given}" if loc else f"{where}: {msg}"


def _fields_at(cls: type, path: tuple) -> list[str] | None:
    """Field names of the config class reached from `cls` by following `path` through nested configs."""
    node = cls
    for part in path:
        hint = typing.get_type_hints(node).get(part)
        node = next((t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None)
        if node is None:
            return None
    return [f.name for f in dataclasses.fields(node)]


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict | None = None) -> T:
    """Build `cls` from a YAML file (optional) plus overrides; raises ConfigError naming the bad field."""
    data = read_yaml(path) if path else {}
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return build(cls, merge(data, extra), where=str(path) if path else "config")

