"""Name -> import path for every pluggable module, resolved only when a name is used.

Keeping the table as strings is what lets ``import threedgen`` and ``launch.py --help`` stay
free of diffusers, transformers and the CUDA libraries: nothing below is imported until a
config asks for it.
"""

from __future__ import annotations

import difflib
import importlib

CATEGORIES = (
    "representation",
    "renderer",
    "background",
    "guidance",
    "prompt_processor",
    "system",
    "exporter",
    "regulariser",
    "critic",
)

_TABLE: dict[str, dict[str, str]] = {c: {} for c in CATEGORIES}


class RegistryError(KeyError):
    """An unknown category or module name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def register(category: str, name: str, target: str) -> None:
    """Register ``target`` ("package.module:Class") under ``name`` without importing it."""
    _check_category(category)
    if ":" not in target:
        raise ValueError(f"registry target must look like 'pkg.module:Class', got {target!r}")
    _TABLE[category][name] = target


def names(category: str) -> list[str]:
    _check_category(category)
    return sorted(_TABLE[category])


def target(category: str, name: str) -> str:
    _check_category(category)
    table = _TABLE[category]
    if name not in table:
        valid = ", ".join(sorted(table)) or "(none)"
        close = difflib.get_close_matches(str(name), table, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown {category} {name!r}.{hint} Valid {category} names: {valid}")
    return table[name]


def get(category: str, name: str):
    """Import and return the class registered as ``name`` in ``category``."""
    module_path, attr = target(category, name).split(":")
    return getattr(importlib.import_module(module_path), attr)


def _check_category(category: str) -> None:
    if category not in _TABLE:
        close = difflib.get_close_matches(category, CATEGORIES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown registry category {category!r}.{hint} Valid: {', '.join(CATEGORIES)}")


# ---- built-in modules -------------------------------------------------------------------------
_BUILTIN = {
    "representation": {
        "nerf": "threedgen.representations.nerf:NeRF",
        "dmtet": "threedgen.representations.dmtet:DMTet",
        "gaussians": "threedgen.representations.gaussians:Gaussians",
        "dynamic_gaussians": "threedgen.representations.dynamic_gaussians:DynamicGaussians",
        "dynamic_nerf": "threedgen.representations.dynamic_nerf:DynamicNeRF",
    },
    "renderer": {
        "volume": "threedgen.renderers.volume:VolumeRenderer",
        "mesh": "threedgen.renderers.mesh:MeshRenderer",
        "gaussian": "threedgen.renderers.gaussian:GaussianRenderer",
    },
    "background": {
        "solid": "threedgen.renderers.background:SolidBackground",
        "random_solid": "threedgen.renderers.background:RandomSolidBackground",
        "mlp": "threedgen.renderers.background:MLPBackground",
    },
    "guidance": {
        "sds": "threedgen.guidance.sds:SDSGuidance",
        "photometric": "threedgen.guidance.photometric:PhotometricGuidance",
        "clip_anchor": "threedgen.guidance.clip_anchor:ClipAnchorGuidance",
        "vsd": "threedgen.guidance.vsd:VSDGuidance",
        "esd": "threedgen.guidance.esd:ESDGuidance",
        "csd": "threedgen.guidance.csd:CSDGuidance",
        "csm": "threedgen.guidance.csm:CSMGuidance",
        "cds": "threedgen.guidance.cds:CDSGuidance",
        "ism": "threedgen.guidance.ism:ISMGuidance",
        "sdi": "threedgen.guidance.sdi:SDIGuidance",
        "disds": "threedgen.guidance.disds:DISDSGuidance",
        "video_sds": "threedgen.guidance.video_sds:VideoSDSGuidance",
        "reward": "threedgen.guidance.reward:RewardGuidance",
        "vlm_reward": "threedgen.guidance.reward:RewardGuidance",
    },
    "critic": {
        "qwen_vl": "threedgen.rewards.vlm:QwenVLCritic",
        "clip": "threedgen.rewards.clip:ClipCritic",
        "toy": "threedgen.rewards.toy_critic:ToyCritic",
    },
    "prompt_processor": {
        "default": "threedgen.prompts.processor:PromptProcessor",
    },
    "system": {
        "generation": "threedgen.systems.generation:GenerationSystem",
        "edit": "threedgen.edit.system:EditSystem",
    },
    "exporter": {
        "mesh": "threedgen.export.mesh:MeshExporter",
        "gaussians": "threedgen.export.splats:SplatExporter",
    },
    "regulariser": {
        "opacity_sparsity": "threedgen.representations.regularisers:OpacitySparsity",
        "orientation": "threedgen.representations.regularisers:Orientation",
        "opaqueness": "threedgen.representations.regularisers:Opaqueness",
        "z_variance": "threedgen.representations.regularisers:ZVariance",
        "normal_consistency": "threedgen.representations.mesh_regularisers:NormalConsistency",
        "laplacian_smoothness": "threedgen.representations.mesh_regularisers:LaplacianSmoothness",
        "motion_magnitude": "threedgen.representations.motion_regularisers:MotionMagnitude",
        "motion_smoothness": "threedgen.representations.motion_regularisers:MotionSmoothness",
        "motion_rigidity": "threedgen.representations.motion_regularisers:MotionRigidity",
    },
}
for _cat, _entries in _BUILTIN.items():
    for _name, _target in _entries.items():
        register(_cat, _name, _target)
