"""Recipe files: YAML as people write it, ``base:`` inheritance and ``key.path=value`` overrides.

The reading half of the config system: it turns files and command-line overrides into one plain
mapping; ``threedgen/config.py`` validates that mapping against the typed dataclasses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config problem, reported as one line with the key path."""


def deep_merge(a: dict, b: dict) -> dict:
    """Merge stage overrides into the base; a mapping naming a different module replaces it whole."""
    out = dict(a)
    for k, v in b.items():
        base = out.get(k)
        same_module = isinstance(base, dict) and v.get("name", base.get("name")) == base.get("name") if isinstance(v, dict) else False
        out[k] = deep_merge(base, v) if same_module else v
    return out


def yaml_load(text: str):
    """YAML as people write numbers: ``1e-4`` and ``1e2`` are floats (YAML 1.1, PyYAML's dialect, reads
    them as strings because they lack a dot or a signed exponent)."""
    import re

    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))
    return yaml.load(text, Loader=_Loader)


def parse_overrides(overrides: list[str]) -> dict:
    """``a.b.0.c=value`` strings -> a nested mapping; values are parsed as YAML."""
    import yaml

    root: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, _, text = item.partition("=")
        try:
            value = yaml_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        parts = key.strip().replace("[", ".").replace("]", "").split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key segment")
        node: Any = root
        for p, nxt in zip(parts, parts[1:] + [None]):
            if nxt is None:
                node[p] = value
            else:
                node = node.setdefault(p, {})
    return root


def _apply_override(base: Any, over: Any, path: str) -> Any:
    """Merge ``over`` into ``base``; numeric keys index into lists."""
    if not isinstance(over, dict):
        return over
    if isinstance(base, list):
        base = list(base)
        for k, v in over.items():
            if not str(k).isdigit() or int(k) >= len(base):
                raise ConfigError(f"{path}.{k}: list index out of range (the list has {len(base)} items)")
            base[int(k)] = _apply_override(base[int(k)], v, f"{path}.{k}")
        return base
    base = dict(base) if isinstance(base, dict) else {}
    for k, v in over.items():
        base[k] = _apply_override(base.get(k), v, f"{path}.{k}" if path else k)
    return base


def _read_yaml(p: Path, chain: tuple = ()) -> dict:
    """A recipe file as a mapping; a top-level ``base: other.yaml`` (relative to this file) is read
    first and this file's keys are merged over it (stage-override rules: mappings merge, lists and
    mappings naming a different module replace), so a variant states only what differs."""
    import yaml

    if not p.is_file():
        where = f" (the base of {str(chain[-1])!r})" if chain else ""
        raise ConfigError(f"config file {str(p)!r}{where} does not exist; pass --config with a YAML recipe, e.g. configs/toy/sds-nerf.yaml")
    try:
        raw = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base: expected the path of a base recipe (relative to this file), got {base!r}")
    bp = (p.parent / base).resolve()
    if bp in chain or bp == p.resolve():
        raise ConfigError(f"{p}: base {base!r} includes itself ({' -> '.join(str(c) for c in (*chain, p.resolve(), bp))})")
    parent = _read_yaml(bp, (*chain, p.resolve()))
    parent.pop("name", None)  # a variant is named after its own file unless it says otherwise
    return deep_merge(parent, raw)


def load_raw(path: str | Path, overrides: list[str] | None = None) -> dict:
    p = Path(path)
    raw = _read_yaml(p)
    raw.setdefault("name", p.stem)
    return _apply_override(raw, parse_overrides(overrides or []), "")
