"""What produced a ToyBench row: the resolved recipe and the weights it ran on, as two short hashes.

ToyBench's table is built across sessions from rows written one at a time. A row made before a recipe
was changed, or before the toy prior was retrained, measures something that no longer exists, so every
row records ``config_sha`` (the recipe after its ``base:`` chain and the shared overrides, without the
per-job prompt and seed and without the export section, which no score reads) and ``weights_sha`` (every weight file of every model folder the recipe names,
plus the classifier that scores it). A shard reruns a job whose row is stale, and ``--merge`` leaves
stale rows out of the tables and says how many (``threedgen/toy/bench.py``).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _model_dirs(node, root: Path) -> list[Path]:
    """Every existing folder named by a ``model:`` key anywhere in the raw config."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "model" and isinstance(v, str):
                p = Path(v) if Path(v).is_absolute() else root / v
                if p.is_dir():
                    found.append(p.resolve())
            found += _model_dirs(v, root)
    elif isinstance(node, list):
        for v in node:
            found += _model_dirs(v, root)
    return found


@lru_cache(maxsize=64)
def _folder_sha(folder: str) -> str:
    h = hashlib.sha1()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES:
            h.update(str(f.relative_to(folder)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


def fingerprint(recipe: Path, overrides: list[str], classifier: Path | None, root: Path) -> dict:
    """``{"config_sha", "weights_sha"}`` of one recipe under the shard's shared overrides."""
    from ..config import load_raw

    raw = load_raw(recipe, list(overrides))
    raw.pop("seed", None)
    if isinstance(raw.get("system"), dict):
        raw["system"] = {k: v for k, v in raw["system"].items() if k != "prompt"}
    sha = lambda d: hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]  # noqa: E731
    folders = sorted(set(_model_dirs(raw, root)) | ({Path(classifier).resolve()} if classifier else set()))
    weights = hashlib.sha1("".join(_folder_sha(str(f)) for f in folders).encode()).hexdigest()[:12]
    # ToyBench scores the checkpoint's renders, so the export section changes no score (asset_bench
    # re-exports): the hash leaves it out. Rows written before that hashed it in; they are matched by
    # ``config_sha_with_export``, the hash of the whole recipe.
    return {"config_sha": sha({k: v for k, v in raw.items() if k != "export"}), "config_sha_with_export": sha(raw),
            "weights_sha": weights}


def is_current(row: dict, current: dict) -> bool:
    """A row counts only if it was made by the recipe (its export section aside) and the weights of now."""
    configs = {current["config_sha"], current.get("config_sha_with_export", current["config_sha"])}
    return row.get("config_sha") in configs and row.get("weights_sha") == current["weights_sha"]
