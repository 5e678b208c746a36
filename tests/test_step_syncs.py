"""A training step makes the host wait for the device only where it must.

On a GPU every ``.item()``, ``float(t)``, ``bool(t)``, ``.cpu()``, ``nonzero`` or boolean-mask index of
a device tensor blocks the host until the device has caught up, so the host cannot queue the next
work while the device computes. This test runs a few steps of the main recipes (the SD ones on a
tiny Stable Diffusion, tests/tiny_models.py) under a torch function mode that records every such
call made after the warm-up steps, with where it was made. Each one must be on the list below,
with its reason: host tensors by design, the CPU-only rasterizer, data-dependent sizes, library code.
A new sync on the step path fails here with its file and function.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from test_recipe_smoke import shrink

ROOT = Path(__file__).resolve().parents[1]
WARM, PROBED = 2, 4  # steps before the probe; probed steps (the last step, which logs, is not probed)
ALWAYS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero", "argwhere",
          "masked_select", "unique", "unique_consecutive"}
LIBRARIES = ("threedgen/", "lightning/", "diffusers/", "transformers/", "gsplat/", "torch/optim/", "torch/nn/utils/")
ALLOWED = {  # (call, file, function) or (call, file, None for any function) -> why it is not a device sync
    ("item", "torch/optim/optimizer.py", "_get_value"): "Adam's step counter is a host tensor (capturable=False)",
    ("__bool__", "threedgen/renderers/volume.py", "_render"): "the shading modes are drawn on the host",
    ("__bool__", "threedgen/renderers/mesh.py", "forward"): "the shading modes are drawn on the host",
    ("nonzero", "threedgen/renderers/volume.py", "_render_torch"):
        "the torch marcher packs the occupied samples: a data-dependent size, as nerfacc's on a GPU",
    ("__bool__", "threedgen/systems/health.py", "_read"): "the NaN verdict, copied to the host a step earlier",
    ("nonzero", "threedgen/renderers/gaussian_torch.py", None): "the CPU rasterizer (gsplat's kernels on a GPU)",
    ("repeat_interleave", "threedgen/renderers/gaussian_torch.py", None): "the CPU rasterizer",
    ("unique_consecutive", "threedgen/renderers/gaussian_torch.py", None): "the CPU rasterizer",
    ("__int__", "threedgen/renderers/gaussian_torch.py", None): "the CPU rasterizer",
    ("__int__", "threedgen/renderers/gaussian_composite.py", None): "the CPU rasterizer's compositing",
    # A DMTet step extracts its surface anew (marching tetrahedra: how many faces depends on the SDF), so its
    # sizes are data-dependent, as in every DMTet pipeline; what follows from the surface is too.
    ("__getitem__", "threedgen/representations/marching_tets.py", None): "DMTet's surface extraction",
    ("__setitem__", "threedgen/representations/marching_tets.py", None): "DMTet's surface extraction",
    ("unique", "threedgen/representations/marching_tets.py", None): "DMTet's surface extraction",
    ("nonzero", "threedgen/renderers/mesh.py", "forward"): "the extracted surface's covered pixels are shaded",
    ("nonzero", "threedgen/representations/mesh_regularisers.py", "edge_face_pairs"): "the extracted surface's edges",
    ("nonzero", "threedgen/renderers/raster_torch.py", None): "the CPU mesh rasterizer (nvdiffrast on a GPU)",
    ("__int__", "threedgen/renderers/raster_torch.py", None): "the CPU mesh rasterizer",
    ("repeat_interleave", "threedgen/renderers/raster_torch.py", None): "the CPU mesh rasterizer",
    ("__getitem__", "threedgen/renderers/raster_torch.py", None): "the CPU mesh rasterizer",
    ("__getitem__", "gsplat/strategy/default.py", None): "gsplat's densification bookkeeping (library code)",
    ("where", "gsplat/strategy/default.py", None): "gsplat's densification bookkeeping (library code)",
}


def _site() -> tuple[str, str, int]:
    for frame in reversed(traceback.extract_stack()[:-2]):  # the innermost frame of the code that made the call
        path = frame.filename.replace("\\", "/")
        for lib in LIBRARIES:
            if lib in path:
                return lib + path.split(lib, 1)[1], frame.name, frame.lineno
    return "?", "?", 0


class SyncProbe(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ALWAYS or _data_dependent(name, args, kwargs):
            self.calls[(name, *_site())] += 1
        return func(*args, **kwargs)


def _data_dependent(name: str, args, kwargs) -> bool:
    if name in ("__getitem__", "__setitem__") and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(torch.is_tensor(i) and i.dtype == torch.bool for i in index)
    if name == "repeat_interleave":
        return "output_size" not in kwargs and len(args) > 1 and torch.is_tensor(args[1])
    return name == "where" and len(args) == 1 and not kwargs


def _allowed(call) -> bool:
    name, path, function, _ = call
    return (name, path, function) in ALLOWED or (name, path, None) in ALLOWED


RECIPES = ["configs/dreamfusion-sd.yaml", "configs/gaussian-sds.yaml", "configs/prolificdreamer.yaml", "configs/consistent3d.yaml",
           "configs/toy/sds-gaussian-camera.yaml",
           "configs/toy/sds-nerf-camera.yaml"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_training_steps_wait_for_the_device_only_where_listed(recipe, request, tmp_path, monkeypatch):
    import lightning.pytorch as pl

    from threedgen.cli import main

    for f in (ROOT / "configs").rglob("*.yaml"):  # the SD recipes on the tiny stand-ins, as the smoke test does
        out = tmp_path / f.relative_to(ROOT)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(shrink(f.read_text(), request))
    probe = SyncProbe()

    class Window(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == WARM:
                probe.__enter__()
            elif trainer.global_step == WARM + PROBED:
                probe.__exit__(None, None, None)

    real_init = pl.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **{**kwargs, "callbacks": [*kwargs.get("callbacks", []), Window()]})

    monkeypatch.setattr(pl.Trainer, "__init__", init)
    monkeypatch.chdir(tmp_path)
    from threedgen.config import load_config

    steps = WARM + PROBED + 1
    _, raw = load_config(tmp_path / recipe)
    stages = [f"stages.{i}.steps={steps}" for i in range(len(raw.get("stages") or []))]  # every stage is probed
    args = ["--config", str(tmp_path / recipe), "--train", "-q", *stages, f"trainer.max_steps={steps}", "trainer.val_every=0",
            "trainer.log_every=1000", "trainer.ckpt_every=1000", "trainer.export_at_end=false", "trainer.test_views=1",
            "trainer.test_resolution=16", "data.width=16", "data.height=16"]
    assert main(args) == 0
    assert probe.calls, "the probe saw nothing: the window did not open"  # at least Adam's host counter
    unexpected = {c: n for c, n in probe.calls.items() if not _allowed(c)}
    report = "\n".join(f"{n / PROBED:.1f}/step {name} at {path}:{line} ({fn})" for (name, path, fn, line), n in unexpected.items())
    assert not unexpected, f"host-device syncs on the step path of {recipe}:\n{report}"


def test_the_probe_sees_a_sync():
    probe = SyncProbe()
    x = torch.randn(4)
    with probe:
        float(x.sum())
        x[x > 0]
        torch.repeat_interleave(x, torch.tensor([1, 2, 1, 0]))
    names = sorted(name for name, *_ in probe.calls)
    assert names == ["__float__", "__getitem__", "repeat_interleave"], probe.calls
