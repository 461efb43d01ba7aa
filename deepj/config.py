"""Config machinery: nested dataclasses, filled from defaults, then a TOML file, then `key.sub=value` overrides.

Strict by design: an unknown key or a value of the wrong type is refused with a message naming the key, so a typo
never silently trains the wrong model. Each component defines its own small dataclass next to the code that uses it;
this module only knows how to fill, print and save them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key."""


def require(ok: bool, key: str, rule: str, value: Any) -> None:
    """For `__post_init__` checks: refuse `value` of `key` unless `ok`, saying the rule (`must be at least 1`)."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def finite(x: float) -> bool:
    """For `require`: a float that is neither nan nor +-inf (every float setting must be one)."""
    return math.isfinite(x)


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False):
    """An argparse `type=` for a float option: finite (never nan or inf), within [lo, hi] (either bound may be None;
    `lo_open`/`hi_open` exclude it). A refused value is reported by argparse under the option's name, exit status 2:
    `error: argument --temperature: must be a finite number > 0, got 'nan'`."""
    bounds = ([f"{'>' if lo_open else '>='} {lo:g}"] if lo is not None else []) + \
        ([f"{'<' if hi_open else '<='} {hi:g}"] if hi is not None else [])
    rule = " ".join(["a finite number", " and ".join(bounds)]).strip()

    def convert(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        ok = (math.isfinite(x) and (lo is None or (x > lo if lo_open else x >= lo))
              and (hi is None or (x < hi if hi_open else x <= hi)))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return x

    convert.__name__ = "finite_float"
    return convert


def int_range(lo: int | None = None, hi: int | None = None):
    """An argparse `type=` for an integer option within [lo, hi] (either bound may be None), reported as
    `finite_float` reports: `error: argument --seed: must be an integer in [0, 9223372036854775807], got '-1'`."""
    if lo is not None and hi is not None:
        rule = f"an integer in [{lo}, {hi}]"
    else:
        rule = "an integer" + (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")

    def convert(text: str) -> int:
        try:
            x = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return x

    convert.__name__ = "int_range"
    return convert


def device_option(text: str) -> str:
    """An argparse `type=` for --device: `cpu`, or `cuda` / `cuda:N` where CUDA and that GPU are present."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: there are {torch.cuda.device_count()} CUDA device(s) here")
    return text


def folder_problem(path: str | Path) -> str | None:
    """Why `path` cannot be (made) an output folder: it, or the nearest part of its path that exists, is not a
    folder. None when it can. For CLIs to refuse `--out` before any work is done."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if p.is_dir():
                return None
            return f"{p} exists and is not a folder" if p == path else f"{p} is not a folder, so {path} cannot be made"
    return None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check (and for strings from the command line, parse) one value against its annotated type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # Optional[X] / X | None
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        (item,) = typing.get_args(typ)[:1]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond the float range
                raise ConfigError(f"{key}: expected a finite number, got an integer of {len(str(value))} digits") \
                    from None
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # TOML's nan/inf, an override `=nan`, `=1e999`: no setting means them
            raise ConfigError(f"{key}: expected a finite number, got {number}")
        return number
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {typ!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(prefix + k for k in unknown)}; valid keys here: {', '.join(prefix + k for k in types_)}"
        )
    kwargs = {}
    for name, typ in types_.items():
        if name not in data:
            continue
        if dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, data[name], prefix + name + ".")
        else:
            kwargs[name] = _coerce(data[name], typ, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a __post_init__ check that did not name its key: name the section
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: to compare two configs key by key."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _set_path(tree: dict[str, Any], cls: type, dotted: str, raw: str) -> None:
    """Apply one `a.b.c=value` override to a nested dict, validating the key path against the dataclasses."""
    parts = dotted.split(".")
    node, node_cls = tree, cls
    for i, part in enumerate(parts):
        types_ = _field_types(node_cls)
        here = ".".join(parts[: i + 1])
        if part not in types_:
            where = ".".join(parts[:i])
            valid = ", ".join((where + "." if where else "") + k for k in types_)
            raise ConfigError(f"unknown config key {here!r}; valid keys here: {valid}")
        typ = types_[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(typ):
                example = next(iter(_field_types(typ)))
                raise ConfigError(f"{here} is a section; set one of its keys, e.g. {here}.{example}=...")
            node[part] = _coerce(raw, typ, here)
        else:
            if not dataclasses.is_dataclass(typ):
                raise ConfigError(f"{here} is a value, not a section")
            node = node.setdefault(part, {})
            node_cls = typ


def _tree(cls: type, path: str | Path | None, overrides: list[str] | None) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=100)")
        key, raw = item.split("=", 1)
        _set_path(tree, cls, key.strip(), raw.strip())
    return tree


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults -> TOML file -> `key=value` overrides, all strict."""
    return from_dict(cls, _tree(cls, path, overrides))


def given_keys(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> set[str]:
    """The dotted keys that the file or the overrides set (not defaults): to refuse a value that the data decides."""
    return set(flatten(_tree(cls, path, overrides)))


def to_toml(cfg: Any) -> str:
    """Render a resolved config as TOML (scalars and lists only, which is all our configs hold)."""
    lines: list[str] = []

    def emit(d: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        if scalars:
            if prefix:
                lines.append(f"[{prefix}]")
            for k, v in scalars.items():
                if v is None:
                    lines.append(f'# {k} = (unset)')
                else:
                    lines.append(f"{k} = {json.dumps(v)}")
            lines.append("")
        for k, v in tables.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(to_dict(cfg), "")
    return "\n".join(lines)
