"""The recipes the web app offers: every ``configs/**.yaml`` that turns a prompt into a scene, each with
its one-line description (the recipe's first comment line) and whether the models it names are on
this machine (local folders, or hub ids already in the Hugging Face cache; nothing is downloaded).

Scene edits (``system.name: edit``) need a captured scene rather than a prompt alone and are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Recipe:
    path: Path
    name: str
    description: str
    toy: bool
    models: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """The models named by the recipe that are not on this machine, each with the reason."""

    @property
    def available(self) -> bool:
        return not self.missing

    @property
    def label(self) -> str:
        """What the recipe picker shows."""
        state = "" if self.available else "  [missing: " + ", ".join(m.split(":")[0] for m in self.missing) + "]"
        return f"{self.rel} — {self.description}{state}"

    @property
    def rel(self) -> str:
        try:
            return str(self.path.relative_to(REPO))
        except ValueError:
            return str(self.path)


def description(path: Path, limit: int = 140) -> str:
    """The recipe's opening comment up to its first sentence or colon, at most ``limit`` characters
    (cut at a word): what it is, in one line."""
    words: list[str] = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s.startswith("#"):
            break
        words += s.lstrip("#").split()
    text = " ".join(words)
    sentence = re.search(r"(?<!\bal)\. ", text)  # "Wang et al. 2023" does not end a sentence
    if sentence:
        text = text[: sentence.start()]
    colon = text.find(": ", 40)  # "X on the toy prior: details" -> the part before, when it says enough
    if colon > 0:
        text = text[:colon]
    text = text.rstrip(".:")
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " …"
    return text


def named_models(raw) -> list[str]:
    """Every ``model`` string in a recipe's raw tree (guidance priors, rewards, their stages)."""
    found: list[str] = []

    def walk(node, key=None):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif key == "model" and isinstance(node, str) and node not in found:
            found.append(node)

    walk(raw)
    return found


def missing_models(models: list[str]) -> list[str]:
    """``"model: reason"`` for each model that is neither a local folder nor in the Hugging Face cache
    (a pipeline's ``model_index.json`` or a single model's ``config.json``); nothing is fetched."""
    from ..guidance.model_folder import _looks_like_hub_id

    out = []
    for m in models:
        p = Path(m).expanduser()
        if any(c.is_dir() for c in ([p] if p.is_absolute() else [Path.cwd() / p, REPO / p])):
            continue
        if not _looks_like_hub_id(m):
            out.append(f"{m}: no such folder")
        elif not (_in_hub_cache(m, "model_index.json") or _in_hub_cache(m, "config.json")):
            out.append(f"{m}: not in the local Hugging Face cache (fetch it once where there is network)")
    return out


def _in_hub_cache(repo_id: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:
        return False


def list_recipes(root: Path = REPO / "configs") -> list[Recipe]:
    """Toy recipes first (they run offline), then the real-model ones; edits left out."""
    from ..recipe_files import load_raw

    out = []
    for path in sorted(Path(root).rglob("*.yaml")):
        try:
            raw = load_raw(path)
        except Exception:  # a broken recipe file is shown by launch.py when run, not here
            continue
        if (raw.get("system") or {}).get("name") == "edit":
            continue
        models = named_models(raw)
        out.append(Recipe(path, raw.get("name", path.stem), description(path), "toy" in path.parts, models, missing_models(models)))
    return sorted(out, key=lambda r: (not r.toy, r.rel))
