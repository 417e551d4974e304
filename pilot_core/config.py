"""Typed configs: pydantic v2 models loaded from YAML, with `--set key.sub=value` overrides.

Every error is a UserError naming the file, the line, the key, the bad value and what is allowed, e.g.
    configs/x.yaml:7: unknown key 'wsd.windw' (allowed: window, threshold, ...)
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pilot_core.errors import UserError
from pilot_core.inputs import read_text

C = TypeVar("C", bound=BaseModel)


class BaseConfig(BaseModel):
    """Base of every config: unknown keys are errors, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------- YAML with lines
def _line_map(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Key path -> 1-based line where that key (or item) appears."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = prefix + (k.value,)
            out[path] = k.start_mark.line + 1
            _line_map(v, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[prefix + (i,)] = v.start_mark.line + 1
            _line_map(v, prefix + (i,), out)
    return out


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Read a YAML mapping and the line of each key. Errors name the file and line."""
    text = read_text(path, "config file")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        raise UserError(f"{path}: the config is empty")
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys, found {type(data).__name__}")
    return data, _line_map(node)


# --------------------------------------------------------------------------------------------- overrides
def parse_override(item: str) -> tuple[tuple[str | int, ...], Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set expects key.sub=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: take it as a plain string
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[tuple, str]:
    """Apply `key.sub=value` overrides in place; returns key path -> the override text, for error messages."""
    origin: dict[tuple, str] = {}
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise UserError(f"--set {item}: {'.'.join(map(str, path[: i + 1]))} is not an item of the list")
                node = node[part]
            else:
                if node.get(part) is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise UserError(f"--set {item}: {'.'.join(map(str, path[: i + 1]))} is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last > len(node):
                raise UserError(f"--set {item}: index {last} is out of range")
            if last == len(node):
                node.append(value)
            else:
                node[last] = value
        else:
            node[last] = value
        origin[path] = item
    return origin


# --------------------------------------------------------------------------------------------- errors
def _unwrap(tp: Any) -> list[Any]:
    """The concrete types inside Optional/Union/list/dict annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if origin in (list, tuple, set, frozenset):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if origin is dict:
        return _unwrap(typing.get_args(tp)[1])
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    return [tp]


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that owns the key at `loc` (best effort, for listing allowed keys)."""
    current: type[BaseModel] | None = cls
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            # a union tag such as 'TinyModelSpec' in the loc: keep the current model
            continue
        models = [t for t in _unwrap(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        current = models[0] if models else None
    return current


def _key(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_validation_error(err: ValidationError, cls: type[BaseModel], source: str,
                            lines: dict[tuple, int] | None = None, origin: dict[tuple, str] | None = None) -> str:
    lines, origin = lines or {}, origin or {}
    parts = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p[:1].isupper()))  # drop union tags
        where = f"{source}:{lines[loc]}" if loc in lines else source
        if loc in origin:
            where = f"--set {origin[loc]}"
        if e["type"] == "extra_forbidden":
            parent = _model_at(cls, loc[:-1])
            allowed = f" (allowed: {', '.join(parent.model_fields)})" if parent else ""
            parts.append(f"{where}: unknown key '{_key(loc)}'{allowed}")
        elif e["type"] == "missing":
            parts.append(f"{where}: missing required key '{_key(loc)}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if loc:
                parts.append(f"{where}: key '{_key(loc)}': invalid value {_short(e.get('input'))}: {msg}")
            else:  # a check across keys: the message names them, the whole config as a value would not help
                parts.append(f"{where}: {msg}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------- loading
def validate_config(cls: type[C], data: dict[str, Any], source: str = "<config>",
                    lines: dict[tuple, int] | None = None, origin: dict[tuple, str] | None = None) -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, cls, source, lines, origin)) from None


def load_config(cls: type[C], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> C:
    """Load `path` as `cls`, after applying `key.sub=value` overrides."""
    data, lines = read_yaml(path)
    origin = apply_overrides(data, list(overrides))
    return validate_config(cls, data, str(path), lines, origin)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
