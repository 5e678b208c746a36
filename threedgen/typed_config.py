"""Typed dataclass configs: plain data (YAML, ``key=value`` overrides) checked field by field.

Every module class carries a ``Config`` dataclass. A config names modules as mappings
``{name: <registered name>, ...fields}``; ``from_dict`` looks the name up in the registry, imports
the module (module files never import heavy libraries at top level) and checks every key, type and
range, so errors carry the full key path, e.g.
``system.guidance.0.guidance_scale: expected float or schedule, got 'abc'``. The run config built from
these parts (trainer, data, system, export, stages) is ``threedgen/config.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from . import registry
from .recipe_files import ConfigError
from .schedule import Schedule, ScheduleError


@dataclass
class ModuleSpec:
    """A validated reference to a registered module: its name and its typed config."""

    category: str
    name: str
    cfg: Any
    weight: Optional[Schedule] = None
    probability: float = 1.0
    """Share of steps the module runs on (a weighted module: 4D-fy alternates image and video guidance)."""

    def build(self, *args, **kwargs):
        return registry.get(self.category, self.name)(self.cfg, *args, **kwargs)


def module(category: str, name: str, weighted: bool = False, **fields: Any):
    """Dataclass field holding a ``ModuleSpec`` (default: ``name`` with ``fields``)."""
    default = {"name": name, **fields}
    meta = {"category": category, "weighted": weighted}
    return field(default_factory=lambda: dict(default), metadata=meta)


def module_list(category: str, weighted: bool = True, default: list | None = None):
    """Dataclass field holding a list of ``ModuleSpec`` (guidances, regularisers)."""
    items = list(default or [])
    meta = {"category": category, "weighted": weighted, "list": True}
    return field(default_factory=lambda: [dict(i) for i in items], metadata=meta)


# ---- validation -------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Schedule:
        return "float or schedule"
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "list"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _fail(path: str, msg: str):
    raise ConfigError(f"{path or '<root>'}: {msg}")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is Schedule:
        try:
            return Schedule(value)
        except ScheduleError as e:
            _fail(path, f"expected float or schedule, got {value!r} ({e})")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError:
                continue
        _fail(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(path, f"expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}{hint}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(path, f"expected bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            _fail(path, f"expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, f"expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(path, f"expected str, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            _fail(path, f"expected list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_convert(v, arg, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(path, f"expected list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(path, f"expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{path}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            _fail(path, f"expected mapping, got {value!r}")
        args = typing.get_args(tp)
        vt = args[1] if args else Any
        return {k: _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    raise TypeError(f"{path}: unsupported config type {tp!r}")


def _module_spec(value: Any, category: str, weighted: bool, path: str, default_name: Optional[str] = None) -> ModuleSpec:
    if isinstance(value, ModuleSpec):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, dict) and "name" not in value and default_name:
        value = {"name": default_name, **value}
    if not isinstance(value, dict) or "name" not in value:
        _fail(path, f"expected a mapping with a 'name' key naming a {category}, got {value!r}")
    value = dict(value)
    name = value.pop("name")
    weight, probability = None, 1.0
    if weighted:
        weight = _convert(value.pop("weight", 1.0), Schedule, f"{path}.weight")
        probability = _convert(value.pop("probability", 1.0), float, f"{path}.probability")
        if not 0.0 < probability <= 1.0:
            _fail(f"{path}.probability", f"the share of steps a module runs on must be in (0, 1], got {probability}")
    try:
        cls = registry.get(category, name)
    except registry.RegistryError as e:
        _fail(f"{path}.name", str(e))
    cfg_cls = getattr(cls, "Config", None)
    if cfg_cls is None:
        raise TypeError(f"{cls.__qualname__} has no Config dataclass")
    return ModuleSpec(category, name, from_dict(cfg_cls, value, path), weight, probability)


def build_module(category: str, value: Any, *args, **kwargs):
    """Validate ``value`` (a registered name, or a mapping with ``name`` and settings) as a ``category``
    module and build it: the way a module is made outside a run config (tools, tests)."""
    return _module_spec(value, category, False, category).build(*args, **kwargs)


def from_dict(cls: type, data: Any, path: str = ""):
    """Build dataclass ``cls`` from plain data, checking every key and type."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail(path, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
        _fail(f"{path}.{key}" if path else str(key), f"unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            raw = data[name]
        elif f.default is not dataclasses.MISSING:
            raw = f.default
        elif f.default_factory is not dataclasses.MISSING:
            raw = f.default_factory()
        else:
            _fail(sub, "missing required key")
        cat = f.metadata.get("category")
        if cat and f.metadata.get("list"):
            if not isinstance(raw, (list, tuple)):
                _fail(sub, f"expected a list of {cat} mappings, got {raw!r}")
            kwargs[name] = [
                _module_spec(v, cat, f.metadata["weighted"], f"{sub}.{i}") for i, v in enumerate(raw)
            ]
        elif cat:
            default_name = f.default_factory().get("name") if f.default_factory is not dataclasses.MISSING else None
            kwargs[name] = _module_spec(raw, cat, f.metadata["weighted"], sub, default_name)
        else:
            kwargs[name] = _convert(raw, hints[name], sub)
            _check_range(cls, name, kwargs[name], hints[name], sub)
    return cls(**kwargs)


INT_LIMIT = 1 << 31
"""Any int setting beyond this is refused (none is meaningful; 10**12 pixels or points exhaust memory)."""


def _numbers(value: Any) -> list:
    if isinstance(value, Schedule):
        return list(value.knot_values)
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return []


def _check_range(cls: type, name: str, value: Any, tp: Any, path: str) -> None:
    """Numbers a library would choke on, refused with the key path: NaN/inf anywhere, ints outside
    [0, 2**31) unless the class widens them, learning rates (``lr*``) below 0, and each class's own
    ``RANGES = {field: (low, high)}`` (None: unbounded; both ends inclusive)."""
    nums = _numbers(value)
    if not nums:
        return
    import math

    if not all(math.isfinite(float(v)) for v in nums):
        _fail(path, f"expected finite numbers, got {_raw(value)!r}")
    ranges = getattr(cls, "RANGES", {})
    ints = _is_int(tp) and all(isinstance(v, int) for v in nums)
    if name in ranges:
        lo, hi = ranges[name]
    else:
        lo = 0 if ints or name.startswith("lr") else None
        hi = None
    if ints and hi is None:
        hi = INT_LIMIT - 1
    if (lo is not None and min(nums) < lo) or (hi is not None and max(nums) > hi):
        want = f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"
        what = ("an int" if _is_int(tp) else "a number") if len(nums) == 1 and not isinstance(value, (list, tuple)) else "values"
        _fail(path, f"expected {what} {want}, got {_raw(value)!r}")


def _is_int(tp: Any) -> bool:
    return tp is int or int in typing.get_args(tp)


def _raw(value: Any) -> Any:
    return value.raw if isinstance(value, Schedule) else list(value) if isinstance(value, tuple) else value


def to_plain(obj: Any) -> Any:
    """Inverse of ``from_dict``: plain data fit for YAML (schedules as written)."""
    if isinstance(obj, Schedule):
        return obj.raw
    if isinstance(obj, ModuleSpec):
        out = {"name": obj.name}
        if obj.weight is not None:
            out["weight"] = obj.weight.raw
        if obj.probability != 1.0:
            out["probability"] = obj.probability
        out.update(to_plain(obj.cfg))
        return out
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
