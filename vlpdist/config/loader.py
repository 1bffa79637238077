"""Typed configs from YAML files and command-line overrides.

Precedence (highest first): CLI dotlist overrides > the YAML file > the files it lists in
`defaults:` (in order, later ones win) > dataclass defaults. Unknown keys, keys that the
command does not read (`Config.COMMANDS`), wrong types and failed validations stop with one
line naming the dotted key and the file (or override) that set it.

Written by hand rather than with OmegaConf/Hydra: we need every error to name the file that
set the offending key (through `defaults:` includes), strict rejection of unknown keys,
and plain dataclasses with `__post_init__` validation.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Collection, Mapping, Sequence
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
    """Raise from a dataclass `__post_init__`: `Invalid("field", "why")`, one field per check.

    A check of several fields names them all: `Invalid("warmup_steps", "50 > total_steps
    10", others=("total_steps",))`. The loader names the one that was set last (an override
    beats the file it overrides; overrides given together, or keys of one file, name the
    check's own key), where it came from, and where each other one that was set came from.
    The message reads after the check's own key; naming another, the loader puts the own
    key in front. Keys are relative to the dataclass that raises; the loader prefixes the
    section's path.
    """

    def __init__(self, key: str, message: str, others: Sequence[str] = ()):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.others = tuple(others)


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


def _record(origins: dict, dotted: str, origin: str) -> None:
    """`dotted` was set (replaced) by `origin`. What was recorded under it is gone, and the
    key moves to the end: the order of `origins` is the order of precedence, last wins."""
    for key in [k for k in origins if k == dotted or k.startswith(dotted + ".")]:
        del origins[key]
    origins[dotted] = origin


def _merge(dst: dict, src: Mapping, origins: dict, origin: str, prefix: str = "") -> None:
    """Deep-merge `src` into `dst`; mappings merge, everything else replaces. Origins are
    recorded per leaf, so that a section names no file that set none of its keys."""
    for key, value in src.items():
        if not isinstance(key, str):
            raise ConfigError(f"{origin}: key {key!r} under '{prefix or '<top>'}' is not a string")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if not isinstance(dst.get(key), dict):
                dst[key] = {}
                origins.pop(dotted, None)  # a mapping replaces what was there
            _merge(dst[key], value, origins, origin, dotted + ".")
        else:
            dst[key] = _plain_copy(value)
            _record(origins, dotted, origin)


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
        # keys merged from an include keep the origin recorded while reading it (the file
        # that set them, which may be an include of the include)
        _merge(merged, read_with_defaults(inc_path, origins, (*_stack, real)), {}, inc_path)
    _merge(merged, data, origins, path)
    return merged


def apply_override(tree: dict, origins: dict, item: str) -> str:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (`3`, `true`, `[1,2]`).
    Returns the origin recorded for its keys."""
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
            origins.pop(".".join(parts[: depth + 1]), None)  # a section replaces a value
        node = nxt
    node[parts[-1]] = value
    _record(origins, key, origin)
    if isinstance(value, dict):  # nested keys of a mapping value come from the same place
        for sub in _dotted_keys(value, key + "."):
            origins[sub] = origin
    return origin


def _dotted_keys(tree: Mapping, prefix: str) -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + str(k))
        if isinstance(v, Mapping):
            out.extend(_dotted_keys(v, f"{prefix}{k}."))
    return out


# ---------------------------------------------------------------- typed conversion


class _Ctx:
    def __init__(self, origins: dict, default_origin: str, overrides: Collection[str] = ()):
        self.origins = origins
        self.default_origin = default_origin
        # precedence of each place a key came from: files in the order they were applied
        # (includes first), then the overrides, all alike: they were given together
        self.rank = {o: i for i, o in enumerate(origins.values())}
        self.rank.update(dict.fromkeys(overrides, len(origins)))

    def set_by(self, dotted: str) -> str | None:
        """Where the value of `dotted` came from (set itself, or a mapping or list it lies
        in); None for a dataclass default."""
        probe = dotted
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            probe = probe.rpartition(".")[0]
        return None

    def where(self, dotted: str) -> str:
        """Where `dotted` came from; for a section, where the first of its keys came from
        (an unknown section `foo` set by `foo.x=1` names that override)."""
        found = self.set_by(dotted)
        if found:
            return found
        inside = [o for k, o in self.origins.items() if k.startswith(dotted + ".")]
        return inside[0] if inside else self.default_origin

    def error(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(dotted)}: {dotted}: {message}")

    def invalid(self, prefix: str, e: Invalid) -> ConfigError:
        """A failed check, named by the key set last: the change that broke it."""
        keys = [prefix + k for k in (e.key, *e.others)]

        def rank(k: str) -> int:
            origin = self.set_by(k)
            return self.rank[origin] if origin else -1

        named = max(keys, key=rank)  # on a tie the first, the check's own key
        message = e.message if named == keys[0] else f"{keys[0]} {e.message}"
        by_origin: dict[str, list[str]] = {}
        for k in keys:
            if k != named and self.set_by(k):
                by_origin.setdefault(self.set_by(k), []).append(k)
        others = "; ".join(f"{', '.join(ks)} set by {o}" for o, ks in by_origin.items())
        return self.error(named, message + (f" ({others})" if others else ""))


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
        raise ctx.invalid(prefix, e) from None
    except TypeError as e:  # a required field without a default was not given
        raise ctx.error(prefix.rstrip(".") or "<top>", str(e)) from None


# ---------------------------------------------------------------- public API


def load(
    schema: type[T],
    path: str | None = None,
    overrides: Sequence[str] = (),
    base: dict | None = None,
    *,
    command: str | None = None,
) -> T:
    """Resolve `schema` from dataclass defaults, an optional `base` mapping, the YAML file
    at `path` (with its `defaults:` includes) and dotlist `overrides`, in that order.

    A schema with a `COMMANDS` table (`Config`: one file layout for every command) is read
    for one `command`, which must be given: a key that the file, an include or an override
    sets outside what that command reads is an error, not silently ignored."""
    reads = _reads(schema, command)
    origins: dict = {}
    tree: dict = {}
    if base:
        _merge(tree, base, origins, "<built-in defaults>")
    if path is not None:
        _merge(tree, read_with_defaults(path, origins), {}, path)
    from_overrides = {apply_override(tree, origins, item) for item in overrides}
    ctx = _Ctx(origins, path or "<defaults>", from_overrides)
    if reads is not None:
        _check_read(schema, command, reads, ctx)
    return _build(schema, tree, "", ctx)


def _reads(schema: type, command: str | None) -> tuple[str, ...] | None:
    table = getattr(schema, "COMMANDS", None)
    if table is None:
        if command is not None:
            raise TypeError(f"{schema.__name__} has no COMMANDS table; load it without command")
        return None
    if command not in table:  # a caller's bug, not a user's mistake
        raise TypeError(f"load({schema.__name__}): command must be one of {list(table)}")
    return table[command]


def _within(entries: Sequence[str], dotted: str) -> bool:
    return any(dotted == e or dotted.startswith(e + ".") for e in entries)


def _check_read(schema: type, command: str, entries: Sequence[str], ctx: _Ctx) -> None:
    """Every key that was set lies in what `command` reads (`entries`: sections or dotted
    keys); the first that does not, in the order they were set, is the error. A mapping
    set as a whole comes before its keys, so the key named is the one that was written."""
    sections = {f.name for f in dataclasses.fields(schema)}
    for key in ctx.origins:
        if key.partition(".")[0] not in sections or _within(entries, key):
            continue  # unknown sections are _build's error, with the known keys
        if any(e.startswith(key + ".") for e in entries):
            continue  # a section read in part (a study's run.output): its keys one by one
        raise ctx.error(key, f"not read by the {command} command (it reads {', '.join(entries)})")


def select(data: Mapping, entries: Sequence[str]) -> dict:
    """The part of plain config data that `entries` (sections or dotted keys) name."""
    out: dict = {}
    for entry in entries:
        *path, last = entry.split(".")
        src, dst = data, out
        for part in path:
            src, dst = src[part], dst.setdefault(part, {})
        dst[last] = src[last]
    return out


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


def dump_yaml(cfg: Any, redact: bool = True, command: str | None = None) -> str:
    """YAML of `cfg`; with `command`, only what that command reads (a file it can load)."""
    data = to_dict(cfg, redact=redact)
    if command is not None:
        data = select(data, _reads(type(cfg), command))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
