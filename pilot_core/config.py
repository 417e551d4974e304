"""Typed configs: pydantic v2 models loaded from YAML, with `--set key.sub=value` overrides. A recipe may be an
overlay of another (`extends: pilot-3b.yaml`, merged as Docker Compose merges its files: `!override`, `!reset`).

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


class _Reset:
    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()  # `key: !reset` in an overlay: the key is dropped (its default applies)


class _Override(dict):
    """`key: !override {...}` in an overlay: this mapping replaces the base's instead of merging into it."""


class _Loader(yaml.SafeLoader):
    pass


def _override(loader: _Loader, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)  # a list replaces the base's anyway
    tag = loader.resolve(yaml.ScalarNode, node.value, (True, False))  # a value replaces too: as if untagged
    return loader.construct_object(yaml.ScalarNode(tag, node.value, node.start_mark, node.end_mark))


_Loader.add_constructor("!override", _override)
_Loader.add_constructor("!reset", lambda loader, node: RESET)


def _read_one(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    text = read_text(path, "config file")
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader plus the two overlay tags
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


def _merge(base: Any, over: Any) -> Any:
    """An overlay onto its base, as Docker Compose merges files: mappings merge key by key, lists and values
    replace, `!override` replaces a whole mapping, `!reset` drops a key."""
    if isinstance(over, dict) and not isinstance(over, _Override) and isinstance(base, dict):
        out = dict(base)
        for k, v in over.items():
            if v is RESET:
                out.pop(k, None)
            else:
                out[k] = _merge(base[k], v) if k in base else _merge(None, v)
        return out
    if isinstance(over, dict):
        return {k: _merge(None, v) for k, v in over.items() if v is not RESET}
    if isinstance(over, list):
        if any(v is RESET for v in over):
            raise UserError("!reset drops a key of a mapping, not an item of a list (write the list as it should be)")
        return [_merge(None, v) for v in over]
    return over


def _replaced(over: Any, path: tuple = ()) -> list[tuple]:
    """The key paths where an overlay replaces the base's value (a value, a list, !override, !reset)."""
    if isinstance(over, dict) and not isinstance(over, _Override):
        return [p for k, v in over.items() for p in _replaced(v, (*path, k))]
    return [path]


def read_yaml(path: str | Path, _seen: tuple = ()) -> tuple[dict[str, Any], dict[tuple, int | str]]:
    """Read a YAML mapping and where each key is: its line, or "file:line" for a key an overlay inherits. A recipe
    with `extends: BASE` (a path relative to it) is BASE with this file's keys merged over it (see _merge).
    Errors name the file and line."""
    data, lines = _read_one(path)
    parent = data.pop("extends", None)
    if parent is None:
        return _merge(None, data), lines
    if not isinstance(parent, str) or not parent:
        raise UserError(f"{path}:{lines[('extends',)]}: extends must name the recipe this one overlays")
    base_path = Path(path).parent / parent
    if base_path.resolve() in _seen:
        raise UserError(f"{path}:{lines[('extends',)]}: extends {parent} again: the recipes extend each other")
    base, base_lines = read_yaml(base_path, (*_seen, Path(path).resolve()))
    gone = _replaced(data)  # the base's lines there describe what the overlay removed
    where = {k: v if isinstance(v, str) else f"{base_path}:{v}" for k, v in base_lines.items()
             if not any(k[:len(g)] == g for g in gone)}
    return _merge(base, data), {**where, **{k: v for k, v in lines.items() if k != ("extends",)}}


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
                            lines: dict[tuple, int | str] | None = None, origin: dict[tuple, str] | None = None) -> str:
    lines, origin = lines or {}, origin or {}
    parts = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p[:1].isupper()))  # drop union tags
        line = lines.get(loc)
        where = line if isinstance(line, str) else f"{source}:{line}" if line else source
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
                    lines: dict[tuple, int | str] | None = None, origin: dict[tuple, str] | None = None) -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, cls, source, lines, origin)) from None


def load_config(cls: type[C], path: str | Path, overrides: list[str] | tuple[str, ...] = (), lock: bool = True) -> C:
    """Load `path` as `cls`, after applying `key.sub=value` overrides. With a lock beside the recipe (`pilot
    fetch` writes it), every hub item is read at its locked commit; a lock that does not match is a UserError.
    `lock=False`: the recipe as written (what `pilot fetch` resolves)."""
    data, lines = read_yaml(path)
    origin = apply_overrides(data, list(overrides))
    cfg = validate_config(cls, data, str(path), lines, origin)
    if lock:
        from pilot_core.lock import apply_lock

        apply_lock(cfg, path)
    return cfg


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
