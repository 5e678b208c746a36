"""The one Lightning system: representation + renderer + background + guidances + regularisers.

Every paper's method is a config of this class, not a copy of it: the objective, the scene
representation and the regularisers are registered modules picked by name, each loss weighted
by a ``Schedule``. One optimizer holds named parameter groups from the representation, the
background and each guidance's ``param_groups()`` (VSD's LoRA); scheduled learning rates are
re-evaluated every step.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Literal, Optional

import lightning.pytorch as pl
import torch

from ..config import ModuleSpec, module, module_list
from ..data.cameras import CameraBatch, CameraConfig, RandomCameraSampler, orbit_cameras
from ..guidance.base import GuidanceInput
from ..renderers.base import RenderOutput
from ..schedule import Schedule
from .distributed import gathered_screen_meta, rank_and_world, reduce_gradients
from .health import FiniteWatch

log = logging.getLogger("threedgen")


@dataclass
class OptimizerConfig:
    RANGES = {"lr": (0, None), "betas": (0, 0.999999), "eps": (1e-30, 1), "weight_decay": (0, None)}
    name: Literal["adam", "adamw"] = "adam"
    lr: Schedule = field(default_factory=lambda: Schedule(0.01))
    """Default learning rate for groups that do not set their own."""
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    weight_decay: float = 0.0
    fused: Optional[bool] = None
    """torch's fused Adam kernel, one pass over every parameter of a device and dtype instead of a loop of
    operators per tensor (``bench_floor.py`` shows the optimiser's share of a step). None: fused where
    every parameter's device has the kernel (CPU, CUDA); False: torch's default (a multi-tensor loop on a
    GPU, one tensor at a time on the CPU). The two agree to float rounding."""


def fused_adam(setting: Optional[bool], params: list) -> Optional[bool]:
    """``optimizer.fused`` resolved for these parameters: None (auto) is True where torch has the fused
    kernel for every parameter's device and dtype; True where it has not is refused with the reason."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    unsupported = sorted({f"{p.device.type}/{p.dtype}" for p in params
                          if p.device.type not in devices or not torch.is_floating_point(p)})
    if setting is None:
        return not unsupported or None
    if setting and unsupported:
        raise ValueError(f"optimizer.fused=true: torch has no fused Adam for parameters on {', '.join(unsupported)}; "
                         "set optimizer.fused=false (or leave it unset: fused where supported)")
    return setting


class GenerationSystem(pl.LightningModule):
    @dataclass
    class Config:
        RANGES = {"val_views": (1, 256), "val_resolution": (8, 4096), "particles": (1, 64)}
        prompt: str = ""
        """The text prompt; passed to the prompt processor."""
        representation: ModuleSpec = module("representation", "nerf")
        renderer: ModuleSpec = module("renderer", "volume")
        background: ModuleSpec = module("background", "solid")
        prompt_processor: ModuleSpec = module("prompt_processor", "default")
        guidance: list = module_list("guidance", default=[{"name": "sds"}])
        regularisers: list = module_list("regulariser", default=[])
        optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
        shading: Optional[str] = None
        """Force a shading mode for training renders (None: the renderer's own setting)."""
        val_views: int = 4
        val_resolution: int = 64
        particles: int = 1
        """Independent scenes optimised together (ProlificDreamer's VSD particles; the paper uses up to 8).
        Each has its own representation and renderer state and its own random cameras; they share the
        background and the guidances (VSD: one LoRA). Validation, test renders and export use particle 0."""
        particle_mode: Literal["all", "round_robin"] = "all"
        """'all': each step renders every particle and the guidances see one batch of all the renders;
        'round_robin': step s renders particle s mod n only (cheaper steps, each particle trained 1/n as often)."""

    def __init__(self, cfg: "GenerationSystem.Config", cameras: CameraConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.camera_cfg = cameras
        self.sampler = RandomCameraSampler(cameras, seed)
        self.finite_watch = FiniteWatch()
        self.representation = cfg.representation.build()
        self.renderer = cfg.renderer.build()
        if cfg.particles < 1:
            raise ValueError(f"system.particles must be >= 1 (the number of independent scenes), got {cfg.particles}")
        # Particles 1..n-1 (particle 0 keeps the single-scene names, so its checkpoint keys are unchanged);
        # each needs its own renderer too, which holds per-scene state (the occupancy grid).
        self.extra_particles = torch.nn.ModuleList(
            torch.nn.ModuleDict({"representation": cfg.representation.build(), "renderer": cfg.renderer.build()})
            for _ in range(cfg.particles - 1)
        )
        self.background = cfg.background.build()
        self.guidances = torch.nn.ModuleList([g.build() for g in cfg.guidance])
        for g in self.guidances:  # e.g. a VLM critic that cannot take the render's aspect ratio
            g.check_render_size(int(cameras.height(0)), int(cameras.width(0)))
        self.regularisers = torch.nn.ModuleList([r.build() for r in cfg.regularisers])
        self.guidance_weights = [g.weight for g in cfg.guidance]
        self.guidance_probabilities = [g.probability for g in cfg.guidance]
        self._seed = seed
        if cameras.frames:  # a 4D batch must be whole clips: say so now, not at the first step
            self.sampler.sample(0)
        self.regulariser_weights = [r.weight for r in cfg.regularisers]
        self.regulariser_names = [r.name for r in cfg.regularisers]
        self._prompt_processor_spec = cfg.prompt_processor
        self._bundles: list = []  # one PromptBundle per guidance; never part of the checkpoint
        self.output_hooks: list = []  # callables(system, step) run after each training step
        self.nonfinite_total = 0  # NaN/Inf guidance-gradient entries zeroed so far (checkpointed)

    def _processor(self):
        pp_cfg = self._prompt_processor_spec.cfg
        if self.cfg.prompt and hasattr(pp_cfg, "prompt"):
            pp_cfg.prompt = self.cfg.prompt
        return self._prompt_processor_spec.build()


    # ---- prompts ---------------------------------------------------------------------------
    def prepare_prompts(self) -> None:
        """Embed the prompt once per prior (cached on disk); guidances without a prior get None."""
        if self._bundles:
            return
        processor = None
        for g in self.guidances:
            prior = getattr(g, "prior", None)
            if prior is None:  # prior-less objectives (a reward, photometric) get the prompt's text
                self._bundles.append(self.cfg.prompt or getattr(self._prompt_processor_spec.cfg, "prompt", ""))
                continue
            if processor is None:
                processor = self._processor()
            self._bundles.append(processor.bundle(prior))

    # ---- optimisation ----------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        groups = list(self.representation.param_groups())
        for i in range(1, self.cfg.particles):
            groups += [{**pg, "name": f"{pg.get('name', 'representation')}.p{i}"} for pg in self.particle(i)[0].param_groups()]
        groups += list(self.background.param_groups())
        for i, g in enumerate(self.guidances):
            for pg in g.param_groups():
                groups.append({"name": f"guidance{i}", **pg})
        seen: set[int] = set()
        for pg in groups:
            pg.setdefault("lr", self.cfg.optimizer.lr)
            ids = {id(p) for p in pg["params"]}
            if ids & seen:
                raise ValueError(f"parameter group {pg.get('name')} repeats parameters of another group")
            seen |= ids
        return [pg for pg in groups if pg["params"]]

    def configure_optimizers(self):
        o = self.cfg.optimizer
        groups, self._lr_schedules = [], []
        for pg in self.param_groups():
            pg = dict(pg)
            lr = pg.pop("lr")
            self._lr_schedules.append(lr if isinstance(lr, Schedule) else Schedule(lr))
            pg["lr"] = self._lr_schedules[-1](0)
            groups.append(pg)  # only plain values: the optimizer state is pickled into checkpoints
        cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        opt = cls(groups, lr=o.lr(0), betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                  fused=fused_adam(o.fused, [p for g in groups for p in g["params"]]))
        for i in range(self.cfg.particles):  # representations that resize their parameters (Gaussian densification)
            bind = getattr(self.particle(i)[0], "bind_optimizer", None)
            if bind is not None:
                bind(opt)
        return opt

    def on_train_batch_start(self, batch, batch_idx):
        step = self.global_step
        seed_step(self._seed, step, 0, rank_and_world(self)[0])  # noise and timesteps: each rank its own
        for opt in self.trainer.optimizers:
            for pg, sched in zip(opt.param_groups, self._lr_schedules):
                pg["lr"] = sched(step)
        for i in range(self.cfg.particles):
            self.particle(i)[0].update_step(self.current_epoch, step)
        for g in self.guidances:
            g.update_step(self.current_epoch, step)

    # ---- one step --------------------------------------------------------------------------
    def particle(self, i: int):
        """(representation, renderer) of particle ``i`` (0 is ``self.representation``/``self.renderer``)."""
        if i == 0:
            return self.representation, self.renderer
        p = self.extra_particles[i - 1]
        return p["representation"], p["renderer"]

    def render(self, cameras: CameraBatch, shading: Optional[str] = None, particle: int = 0):
        representation, renderer = self.particle(particle)
        return renderer(representation, cameras, self.background, shading=shading)

    def _render_particles(self, step: int):
        """This step's training renders: ``(out, cams, parts)`` with the particles' renders concatenated
        along the batch and ``parts`` = [(particle, cams, render)] for regularisers and ``after_step``."""
        n = self.cfg.particles
        ids = list(range(n)) if self.cfg.particle_mode == "all" else [step % n]
        if ids == [0]:
            cams = self._sample_cameras(step, 1)
            out = self.render(cams, shading=self.cfg.shading)
            return out, cams, [(0, cams, out)]
        B = self.sampler.batch_size(step)
        cams = self._sample_cameras(step, len(ids))  # one draw, split per particle
        parts = []
        for k, i in enumerate(ids):
            c = cams[k * B : (k + 1) * B]
            parts.append((i, c, self.render(c, shading=self.cfg.shading, particle=i)))
        outs = [p[2] for p in parts]
        cat = lambda name: None if getattr(outs[0], name) is None else torch.cat([getattr(o, name) for o in outs])  # noqa: E731
        out = RenderOutput(rgb=cat("rgb"), alpha=cat("alpha"), depth=cat("depth"), normal=cat("normal"))
        return out, cams, parts

    def _sample_cameras(self, step: int, particles: int) -> CameraBatch:
        """This rank's cameras of the step: the whole batch (``batch_size`` x particles x world size) is
        drawn from (seed, step) on every rank and each renders its own slice, so N processes see what one
        process with an N-times batch sees (threedgen/systems/distributed.py)."""
        rank, world = rank_and_world(self)
        n = self.sampler.batch_size(step) * particles
        cams = self.sampler.sample(step, batch_size=n * world)
        return (cams[rank * n : (rank + 1) * n] if world > 1 else cams).to(self.device)

    def guidance_input(self, out: RenderOutput, cameras: CameraBatch) -> GuidanceInput:
        """What the guidances see of this step's renders (a scene edit adds its edit mask)."""
        return GuidanceInput(rgb=out.rgb, cameras=cameras, alpha=out.alpha, depth=out.depth, normal=out.normal)

    def _own_input(self, i: int) -> Optional[GuidanceInput]:
        """Renders of guidance ``i``'s own fixed views (``Guidance.own_cameras``: a clip's camera), or None."""
        if not hasattr(self, "_own_cameras"):  # fixed views: made and moved to the device once
            self._own_cameras = [None if c is None else c.to(self.device) for c in (g.own_cameras(self.camera_cfg) for g in self.guidances)]
        cams = self._own_cameras[i]
        if cams is None:
            return None
        background = getattr(self.guidances[i], "own_background", None) or self.background  # a clip's backdrop
        out = self.renderer(self.representation, cams, background, shading=self.cfg.shading)
        return self.guidance_input(out, cams)

    def guidance_runs(self, i: int, step: int) -> bool:
        """Whether guidance ``i`` runs on ``step`` (its ``probability``): a pure function of (seed, step,
        i), so a resumed run makes the same choices."""
        p = self.guidance_probabilities[i]
        if p >= 1.0:
            return True
        g = torch.Generator().manual_seed((self._seed * 1_000_003 + step) * 31 + i + 7)
        return bool(torch.rand((), generator=g) < p)

    def training_step(self, batch, batch_idx):
        self.prepare_prompts()
        step = self.global_step
        out, cams, parts = self._render_particles(step)
        inp = self.guidance_input(out, cams)
        total = torch.zeros((), device=self.device)
        logs: dict[str, object] = {}  # detached tensors: turned into floats only when a logger reads them
        for i, (g, w_sched, bundle) in enumerate(zip(self.guidances, self.guidance_weights, self._bundles)):
            if not self.guidance_runs(i, step):
                continue
            res = g(self._own_input(i) or inp, bundle, step)
            if "nonfinite" in res:  # a device tensor: summed without a sync, read when logged or saved
                self.nonfinite_total = self.nonfinite_total + res["nonfinite"]
            w = w_sched(step)
            prefix = f"g{i}/" if len(self.guidances) > 1 else ""
            for k, v in res.items():
                if k.startswith("loss_"):
                    total = total + w * v
                    logs[f"train/{prefix}{k}"] = v.detach()
                    logs[f"train/{prefix}w_{k[5:]}"] = w
                elif torch.is_tensor(v) and v.numel() == 1:
                    logs[f"train/{prefix}{k}"] = v.detach()
                elif isinstance(v, (int, float)):
                    logs[f"train/{prefix}{k}"] = float(v)
        for name, reg, w_sched in zip(self.regulariser_names, self.regularisers, self.regulariser_weights):
            w = w_sched(step)
            if w == 0:
                continue
            # mean over particles: each particle's regulariser-vs-guidance balance is the single-scene one
            v = sum(reg(o, self.particle(i)[0], c) for i, c, o in parts) / len(parts)
            total = total + w * v
            logs[f"train/reg_{name}"] = v.detach() if torch.is_tensor(v) else float(v)
            logs[f"train/w_reg_{name}"] = w
        if not total.requires_grad:  # every guidance skipped this step (probabilities) and no regulariser
            total = total + 0.0 * out.rgb.sum()
        logs["train/nonfinite_total"] = self.nonfinite_total
        logs["train/loss"] = total.detach()
        logs["train/alpha_mean"] = out.alpha.detach().mean()
        self._particle_renders = parts
        self._step_logs = logs
        return total

    def on_after_backward(self):
        if rank_and_world(self)[1] > 1:  # before Lightning clips them and the optimiser steps
            reduce_gradients([p for p in self.parameters() if p.requires_grad], self.trainer.strategy)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.global_step  # already incremented by the optimizer step
        seed_step(self._seed, step, 1)  # densification / occupancy refresh: the same after a resume and on every rank
        _, world = rank_and_world(self)
        with torch.no_grad():
            for i, _, render in getattr(self, "_particle_renders", [(0, None, None)]):
                if world > 1 and getattr(render, "meta", None):  # densify on every rank's views, identically
                    render.meta = gathered_screen_meta(render.meta, self.trainer.strategy, world)
                self.particle(i)[0].after_step(step, render)
        for hook in self.output_hooks:
            hook(self, step)
        # NaN/Inf parameters stop the run before a checkpoint saves them; read a step late on a GPU (health.py)
        self.finite_watch.submit(step, ((n, p) for n, p in self.named_parameters() if p.requires_grad))

    def settle_health(self) -> None:
        """Raise ``NonFiniteError`` if the last step's parameters were not finite (callbacks.py, before a save)."""
        self.finite_watch.settle()

    # ---- evaluation renders -----------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, cameras: CameraBatch, chunk: int = 4, particle: int = 0):
        """Render many cameras in small batches, in eval mode; returns a list of RenderOutput."""
        was_training = self.training
        self.eval()
        outs = []
        try:
            for i in range(0, len(cameras), chunk):
                outs.append(self.render(cameras[i : i + chunk].to(self.device), particle=particle))
        finally:
            self.train(was_training)
        return outs

    def validation_cameras(self) -> CameraBatch:
        return orbit_cameras(self.camera_cfg, self.cfg.val_views, self.cfg.val_resolution)

    # ---- checkpoint --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["threedgen"] = {"prompt": self.cfg.prompt, "representation": self.cfg.representation.name,
                                   "nonfinite_total": int(self.nonfinite_total)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite_total = int(checkpoint.get("threedgen", {}).get("nonfinite_total", 0))


def seed_step(seed: int, step: int, stream: int, rank: int = 0) -> None:
    """Seed the global random generators (torch on every device, Python, NumPy) from (seed, step, stream).

    Every draw a training step makes (noise, timesteps, background, ray jitter, occupancy refresh,
    densification) then depends only on the run's seed and the step number, not on what ran before
    in this process, so a run resumed from a checkpoint continues bit for bit as the uninterrupted one
    without the generator states having to be in the checkpoint (validation renders in between draw
    from the same generators)."""
    s = ((int(seed) & 0xFFFFFFFF) << 34) | ((int(step) & 0xFFFFFFFF) << 2) | (stream & 3)
    if rank:  # the other ranks of a distributed run: their own draws (rank 0 keeps the single-process ones)
        s = (s * 1_000_003 + rank) & ((1 << 63) - 1)
    # what torch.manual_seed does for the devices in use: it also queues a lazy seed (with a captured stack) for
    # every device backend not initialised, ~1 ms a call twice a step on a CPU, and a queue that never drains
    torch.default_generator.manual_seed(s)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(s)
    random.seed(s)
    try:
        import numpy as np

        np.random.seed(s % (1 << 32) ^ (s >> 32))
    except ImportError:  # pragma: no cover
        pass


def seed_everything(seed: int, deterministic: bool = False, threads: Optional[int] = None) -> None:
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
