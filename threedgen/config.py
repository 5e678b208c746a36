"""The run config: YAML + ``key=value`` overrides validated against dataclasses before anything loads.

A run is ``trainer``, ``data``, ``system``, ``export`` and optional ``stages``; each part is a dataclass
checked by the typed-config machinery of ``threedgen/typed_config.py`` (re-exported here: ``from_dict``,
``build_module``, ``module``, ``to_plain``, ...), so every error names its key path, e.g.
``system.guidance.0.guidance_scale: expected float or schedule, got 'abc'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .recipe_files import ConfigError, deep_merge, load_raw
from .typed_config import ModuleSpec, build_module, from_dict, module, module_list, to_plain

__all__ = ["ConfigError", "ExportConfig", "ModuleSpec", "RunConfig", "StageConfig", "TrainerConfig", "build_module",
           "from_dict", "load_config", "load_raw", "module", "module_list", "to_plain", "validate"]


# ---- the run config ---------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    RANGES = {"max_steps": (1, None), "log_every": (1, None), "ckpt_every": (1, None), "test_views": (1, 10_000),
              "test_resolution": (8, 4096), "devices": (1, 1024), "num_nodes": (1, 100_000)}
    max_steps: int = 1000
    val_every: int = 200
    """Render a validation grid every this many steps (0: never)."""
    log_every: int = 10
    ckpt_every: int = 100
    grad_clip: Optional[float] = None
    """Clip the total gradient norm of the scene parameters (None: off)."""
    progress_bar: bool = True
    test_views: int = 24
    """Orbit frames rendered by --test (and at the end of training)."""
    test_resolution: int = 128
    export_at_end: bool = True
    loggers: list[Literal["csv", "tensorboard", "wandb"]] = field(default_factory=lambda: ["csv"])
    """Lightning loggers the run's scalars go to every ``log_every`` steps: csv (``metrics.csv``),
    tensorboard (``<run>/tensorboard/``; needs the tensorboard package), wandb (needs wandb)."""
    devices: int = 1
    """Processes per machine that train the scene together (Lightning DDP; each renders its share of
    ``data.batch_size`` x devices x num_nodes views): GPUs on a GPU machine (``--gpu 0,1`` picks them),
    CPU processes (gloo) otherwise. threedgen/systems/distributed.py."""
    num_nodes: int = 1
    """Machines in a multi-node run (torchrun or SLURM start one process per device on each; README)."""

    def __post_init__(self):
        checks = [
            ("max_steps", self.max_steps >= 1, "an int >= 1 (steps of training)"),
            ("val_every", self.val_every >= 0, "an int >= 0 (0: never)"),
            ("log_every", self.log_every >= 1, "an int >= 1"),
            ("ckpt_every", self.ckpt_every >= 1, "an int >= 1"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "null (off) or a norm > 0"),
            ("test_views", self.test_views >= 1, "an int >= 1"),
            ("test_resolution", 8 <= self.test_resolution <= 4096, "an int in [8, 4096]"),
            ("devices", 1 <= self.devices <= 1024, "an int in [1, 1024] (processes per machine)"),
            ("num_nodes", self.num_nodes >= 1, "an int >= 1 (machines)"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"trainer.{key}: expected {expected}, got {getattr(self, key)!r}")
        import importlib.util

        for name, modules, how in (("tensorboard", ("tensorboard", "tensorboardX"), "pip install tensorboard"),
                                   ("wandb", ("wandb",), "pip install wandb")):
            if name in self.loggers and not any(importlib.util.find_spec(m) for m in modules):
                raise ConfigError(f"trainer.loggers: {name!r} needs the {modules[0]} package, which is not installed: "
                                  f"{how}, or drop {name!r} from trainer.loggers")


@dataclass
class ExportConfig:
    """What ``--export`` (and the end of training) writes into the run's ``export/``; see docs/export.md."""

    RANGES = {"refine_steps": (0, 100_000), "texture_fit_steps": (0, 100_000), "dilation": (0, 256),
              "target_faces": (0, 10_000_000)}  # upper bounds; __post_init__ says the rest

    formats: list[Literal["glb", "obj", "ply", "splat", "spz", "splat_glb", "viewer"]] = field(
        default_factory=lambda: ["glb", "obj", "ply", "splat", "spz", "splat_glb", "viewer"]
    )
    """Mesh formats (glb, obj) for every representation; splat formats (ply, splat, spz, splat_glb) for Gaussian
    scenes; viewer: viewer.html, one self-contained page showing model.glb and gaussians.splat (those exported)."""
    mesher: Literal["solid", "density"] = "solid"
    """solid: a closed surface carved from the representation's renders (what no view sees through), refined
    against them; density: marching cubes of the representation's own density at ``threshold`` (the old path)."""
    resolution: int = 128
    """Marching-cubes grid resolution (voxels along the object's longest side for the solid mesher)."""
    threshold: Union[float, Literal["auto"]] = "auto"
    """density mesher: isosurface level (density units of the representation); auto: where renders put the surface."""
    views: int = 40
    """Export views (a Fibonacci sphere, top and bottom included) that the solid mesher, refinement, texture fit and report use."""
    view_resolution: int = 128
    """Pixels per side of each export view."""
    refine_steps: int = 100
    """Vertex-refinement steps against the renders' alpha and depth (0: off)."""
    refine_lr: float = 0.0003
    """Refinement step size as a fraction of the object's size (0.001 measured no better on ToyBench
    runs and moves exact surfaces further: docs/export.md)."""
    decimate_tolerance: float = 0.003
    """Largest distance the decimated surface may move, as a fraction of the object's size (solid mesher)."""
    texture_fit_steps: int = 15
    """Conjugate-gradient iterations of the least-squares texture fit after back-projection (0: back-projection only)."""
    texture_smoothness: float = 3.0
    """Weight of the texture fit's smoothness term (squared differences of neighbouring texels) against the
    renders' pixels; 0 fits the pixels alone, which overshoots the few texels they tap (docs/export.md)."""
    pivot: Literal["center", "bottom"] = "center"
    """center: keep the world origin; bottom: origin at the bottom centre of the mesh's bounding box."""
    size_m: Optional[float] = None
    """Scale the mesh uniformly to this height in metres (None: keep scene units = metres)."""
    target_faces: int = 20000
    """Face budget: the most faces the mesh may have (solid mesher: fewer where the tolerance allows; 0: no cap)."""
    min_component_fraction: float = 0.05
    """Drop connected components with fewer faces than this fraction of the largest one (floaters)."""
    texture_size: int = 1024
    """Base-colour texture width = height in pixels."""
    dilation: int = 8
    """Texels of colour bled outwards from each UV island (the rest of the texture is filled by push-pull)."""
    metallic: float = 0.0
    roughness: float = 0.9
    splat_axes: Literal["rdf", "rub"] = "rdf"
    """Frame of gaussians.ply / .splat: rdf = INRIA/COLMAP (what splat viewers expect), rub = world (+Y up)."""
    frames: int = 16
    """A moving scene: frames of the exported sequence and of the animated GLB, over times 0 to 1."""
    fps: float = 8.0
    """A moving scene: playback rate of the animated GLB (the manifest records it too)."""

    def __post_init__(self):
        checks = [
            ("frames", 2 <= self.frames <= 1000, "an int in [2, 1000]"),
            ("fps", 0.0 < self.fps <= 240.0, "frames per second in (0, 240]"),
            ("resolution", 16 <= self.resolution <= 1024, "an int in [16, 1024]"),
            ("views", 6 <= self.views <= 512, "an int in [6, 512]"),
            ("view_resolution", 32 <= self.view_resolution <= 2048, "an int in [32, 2048]"),
            ("refine_steps", self.refine_steps >= 0, "an int >= 0 (0: no refinement)"),
            ("refine_lr", 0.0 < self.refine_lr <= 0.1, "a fraction of the object's size in (0, 0.1]"),
            ("decimate_tolerance", 0.0 <= self.decimate_tolerance <= 0.1, "a fraction of the object's size in [0, 0.1]"),
            ("texture_fit_steps", self.texture_fit_steps >= 0, "an int >= 0"),
            ("texture_smoothness", 0.0 <= self.texture_smoothness <= 1000.0, "a float in [0, 1000]"),
            ("target_faces", self.target_faces == 0 or self.target_faces >= 100, "0 (off) or at least 100"),
            ("min_component_fraction", 0.0 <= self.min_component_fraction <= 1.0, "a fraction in [0, 1]"),
            ("texture_size", 16 <= self.texture_size <= 8192, "an int in [16, 8192], e.g. 1024 or 2048"),
            ("dilation", self.dilation >= 0, "an int >= 0"),
            ("metallic", 0.0 <= self.metallic <= 1.0, "a value in [0, 1]"),
            ("roughness", 0.0 <= self.roughness <= 1.0, "a value in [0, 1]"),
            ("size_m", self.size_m is None or self.size_m > 0, "null or a height in metres > 0"),
            ("threshold", self.threshold == "auto" or self.threshold > 0, "'auto' or a density > 0"),
            ("formats", len(self.formats) > 0, "a non-empty list, e.g. [glb, obj]"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"export.{key}: expected {expected}, got {getattr(self, key)!r}")


@dataclass
class StageConfig:
    """One stage of a multi-stage recipe: its own step count and overrides of the base config."""

    name: str
    steps: int
    system: dict = field(default_factory=dict)
    """Overrides merged into the base ``system`` config for this stage."""
    data: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str = "run"
    """Recipe name; the output folder is outputs/<name>/<prompt-slug>@<timestamp>."""
    seed: int = 0
    deterministic: bool = False
    """Deterministic torch algorithms so a CPU run repeats bit for bit."""
    output_dir: str = "outputs"
    threads: Optional[int] = None
    """CPU threads for torch (None: torch's default). Small renders run fastest on 1-2 threads."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: Any = field(default_factory=dict)
    system: Any = module("system", "generation")
    stages: list[StageConfig] = field(default_factory=list)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self):
        import re

        if not re.fullmatch(r"[\w][\w.+-]{0,99}", self.name or "", flags=re.ASCII):
            raise ConfigError(f"name: expected a folder name (letters, digits, '_', '.', '+', '-'; at most 100 "
                              f"characters; it names outputs/<name>/), got {self.name!r}")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise ConfigError(f"threads: expected null (torch's default) or an int in [1, 1024], got {self.threads!r}")

    def stage_configs(self, raw: dict) -> list[tuple[StageConfig, "RunConfig"]]:
        """Each stage's fully validated config (base merged with the stage's overrides)."""
        out = []
        for i, st in enumerate(self.stages):
            merged = deep_merge(raw, {"system": st.system, "data": st.data, "stages": []})
            merged["trainer"] = {**merged.get("trainer", {}), "max_steps": st.steps}
            try:
                out.append((st, validate(merged)))
            except ConfigError as e:
                raise ConfigError(f"stages.{i} ({st.name}): {e}") from None
        return out


def validate(raw: dict) -> RunConfig:
    from .data.cameras import CameraConfig

    system = raw.get("system")
    if isinstance(system, dict) and "prompt" in system and not str(system["prompt"] or "").strip():
        raise ConfigError('system.prompt is empty: write what to make, e.g. system.prompt="a red cube"')
    cfg = from_dict(RunConfig, raw)
    cfg.data = from_dict(CameraConfig, raw.get("data", {}), "data")
    cfg.data.check()
    cfg.stage_configs(raw)  # validate every stage up front
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, dict]:
    """Load, override and validate a recipe. Returns the typed config and the raw merged mapping."""
    raw = load_raw(path, overrides)
    return validate(raw), raw
