"""Typed configs from YAML files and command-line overrides.

Precedence (highest first): CLI dotlist overrides > the YAML file > the files it lists in
`defaults:` (in order, later ones win) > dataclass defaults. Unknown keys, wrong types and
failed validations stop with one line naming the dotted key and the file that set it.

Written by hand rather than with OmegaConf/Hydra: we need every error to name the file that
set the offending key (through `defaults:` includes), strict rejection of unknown keys,
and plain dataclasses with `__post_init__` validation, in about 200 lines.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from vlpdist.errors import ConfigError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.2); YAML 1.1 demands `1.0e-4` and
    would turn the most common way to write a learning rate into a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


SECRET = {"secret": True}
REDACTED = "***"


class Invalid(ValueError):  # noqa: N818 - raised by __post_init__, turned into ConfigError
    """Raise from a dataclass `__post_init__`: `Invalid("field", "why")`.

    The loader prefixes the section's dotted path and names the file that set the key.
    """

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# ---------------------------------------------------------------- reading YAML + includes


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = parse_yaml(f.read())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(dst: dict, src: Mapping, origins: dict, origin: str, prefix: str = "") -> None:
    """Deep-merge `src` into `dst`; mappings merge, everything else replaces."""
    for key, value in src.items():
        if not isinstance(key, str):
            raise ConfigError(f"{origin}: key {key!r} under '{prefix or '<top>'}' is not a string")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origins, origin, dotted + ".")
        else:
            dst[key] = _plain_copy(value)
            origins[dotted] = origin


def _plain_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def read_with_defaults(path: str, origins: dict, _stack: tuple[str, ...] = ()) -> dict:
    """Read `path`, resolving its `defaults:` list (paths relative to the file)."""
    real = os.path.realpath(path)
    if real in _stack:
        chain = " -> ".join([*_stack, real])
        raise ConfigError(f"{path}: circular defaults include: {chain}")
    data = _read_yaml(path)
    includes = data.pop("defaults", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: 'defaults' must be a list of file paths")
    merged: dict = {}
    for inc in includes:
        inc_path = inc if os.path.isabs(inc) else os.path.join(os.path.dirname(path), inc)
        _merge(merged, read_with_defaults(inc_path, origins, (*_stack, real)), origins, inc_path)
        # keys merged from an include keep the origin recorded while reading it
    own_origins: dict = {}
    _merge(merged, data, own_origins, path)
    origins.update(own_origins)
    return merged


def apply_override(tree: dict, origins: dict, item: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (`3`, `true`, `[1,2]`)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}': empty key")
    try:
        value = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    origin = f"command line override '{key}'"  # the key only: the value may be a secret
    node = tree
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
            origins[".".join(parts[: depth + 1])] = origin  # a section this override created
        node = nxt
    node[parts[-1]] = value
    origins[key] = origin
    if isinstance(value, dict):  # nested keys of a mapping value come from the same place
        for sub in _dotted_keys(value, key + "."):
            origins[sub] = origin


def _dotted_keys(tree: Mapping, prefix: str) -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + str(k))
        if isinstance(v, Mapping):
            out.extend(_dotted_keys(v, f"{prefix}{k}."))
    return out


# ---------------------------------------------------------------- typed conversion


class _Ctx:
    def __init__(self, origins: dict, default_origin: str):
        self.origins = origins
        self.default_origin = default_origin

    def where(self, dotted: str) -> str:
        probe = dotted
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            probe = probe.rpartition(".")[0]
        return self.default_origin

    def error(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(dotted)}: {dotted}: {message}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, dotted: str, ctx: _Ctx) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ctx.error(dotted, f"expected a mapping for section, got {value!r}")
        return _build(tp, value, dotted + ".", ctx)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, dotted, ctx)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ctx.error(dotted, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ctx.error(dotted, f"expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise ctx.error(dotted, f"expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{dotted}.{i}", ctx) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ctx.error(dotted, f"expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp) or (str, Any)
        return {
            _convert(key_tp, k, dotted, ctx): _convert(val_tp, v, f"{dotted}.{k}", ctx)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ctx.error(dotted, f"expected {_type_name(tp)}, got {value!r}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _build(cls: type[T], values: Mapping, prefix: str, ctx: _Ctx) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise ctx.error(prefix + str(unknown[0]), f"unknown key (known keys: {known})")
    kwargs = {}
    for name, value in values.items():
        default = _field_default(fields[name])
        if isinstance(value, Mapping) and (
            dataclasses.is_dataclass(default) or isinstance(default, Mapping)
        ):
            # a partial section keeps the rest of the field's own default (which may come
            # from a default_factory with values other than the section class's defaults)
            merged = to_dict(default)
            _merge(merged, value, {}, "")
            value = merged
        try:
            kwargs[name] = _convert(hints[name], value, prefix + name, ctx)
        except ConfigError:
            if not fields[name].metadata.get("secret"):
                raise
            # never echo a secret, not even a mistyped one
            raise ctx.error(
                prefix + name, f"expected {_type_name(hints[name])} (value hidden)"
            ) from None
    try:
        return cls(**kwargs)
    except Invalid as e:
        raise ctx.error(prefix + e.key, e.message) from None
    except TypeError as e:  # a required field without a default was not given
        raise ctx.error(prefix.rstrip(".") or "<top>", str(e)) from None


# ---------------------------------------------------------------- public API


def load(
    schema: type[T],
    path: str | None = None,
    overrides: Sequence[str] = (),
    base: dict | None = None,
) -> T:
    """Resolve `schema` from dataclass defaults, an optional `base` mapping, the YAML file
    at `path` (with its `defaults:` includes) and dotlist `overrides`, in that order."""
    origins: dict = {}
    tree: dict = {}
    if base:
        _merge(tree, base, origins, "<built-in defaults>")
    if path is not None:
        _merge(tree, read_with_defaults(path, origins), {}, path)
    for item in overrides:
        apply_override(tree, origins, item)
    return _build(schema, tree, "", _Ctx(origins, path or "<defaults>"))


def from_dict(schema: type[T], values: Mapping, origin: str = "<dict>") -> T:
    """Rebuild a config from a plain mapping, e.g. the resolved config stored in a run."""
    return _build(schema, values, "", _Ctx({}, origin))


def to_dict(cfg: Any, redact: bool = False) -> Any:
    """Plain, YAML/JSON-ready data; fields marked `SECRET` become '***' when `redact`."""
    if dataclasses.is_dataclass(cfg):
        out = {}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if redact and f.metadata.get("secret") and value is not None:
                out[f.name] = REDACTED
            else:
                out[f.name] = to_dict(value, redact)
        return out
    if isinstance(cfg, list | tuple):
        return [to_dict(v, redact) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v, redact) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: Any, redact: bool = True) -> str:
    return yaml.safe_dump(to_dict(cfg, redact=redact), sort_keys=False, default_flow_style=False)
