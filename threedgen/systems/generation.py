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
from ..schedule import Schedule

log = logging.getLogger("threedgen")


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw"] = "adam"
    lr: Schedule = field(default_factory=lambda: Schedule(0.01))
    """Default learning rate for groups that do not set their own."""
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    weight_decay: float = 0.0


class GenerationSystem(pl.LightningModule):
    @dataclass
    class Config:
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

    def __init__(self, cfg: "GenerationSystem.Config", cameras: CameraConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.camera_cfg = cameras
        self.sampler = RandomCameraSampler(cameras, seed)
        self.representation = cfg.representation.build()
        self.renderer = cfg.renderer.build()
        self.background = cfg.background.build()
        self.guidances = torch.nn.ModuleList([g.build() for g in cfg.guidance])
        self.regularisers = torch.nn.ModuleList([r.build() for r in cfg.regularisers])
        self.guidance_weights = [g.weight for g in cfg.guidance]
        self.regulariser_weights = [r.weight for r in cfg.regularisers]
        self.regulariser_names = [r.name for r in cfg.regularisers]
        self._prompt_processor_spec = cfg.prompt_processor
        self._bundles: list = []  # one PromptBundle per guidance; never part of the checkpoint
        self.output_hooks: list = []  # callables(system, step) run after each training step

    # ---- prompts ---------------------------------------------------------------------------
    def prepare_prompts(self) -> None:
        """Embed the prompt once per prior (cached on disk); guidances without a prior get None."""
        if self._bundles:
            return
        pp_cfg = self._prompt_processor_spec.cfg
        if self.cfg.prompt and hasattr(pp_cfg, "prompt"):
            pp_cfg.prompt = self.cfg.prompt
        processor = None
        for g in self.guidances:
            prior = getattr(g, "prior", None)
            if prior is None:
                self._bundles.append(None)
                continue
            if processor is None:
                processor = self._prompt_processor_spec.build()
            self._bundles.append(processor.bundle(prior))

    # ---- optimisation ----------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        groups = list(self.representation.param_groups()) + list(self.background.param_groups())
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
        opt = cls(groups, lr=o.lr(0), betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        bind = getattr(self.representation, "bind_optimizer", None)
        if bind is not None:  # representations that resize their parameters (Gaussian densification)
            bind(opt)
        return opt

    def on_train_batch_start(self, batch, batch_idx):
        step = self.global_step
        for opt in self.trainer.optimizers:
            for pg, sched in zip(opt.param_groups, self._lr_schedules):
                pg["lr"] = sched(step)
        self.representation.update_step(self.current_epoch, step)
        for g in self.guidances:
            g.update_step(self.current_epoch, step)

    # ---- one step --------------------------------------------------------------------------
    def render(self, cameras: CameraBatch, shading: Optional[str] = None):
        return self.renderer(self.representation, cameras, self.background, shading=shading)

    def training_step(self, batch, batch_idx):
        self.prepare_prompts()
        step = self.global_step
        cams = self.sampler.sample(step).to(self.device)
        out = self.render(cams, shading=self.cfg.shading)
        inp = GuidanceInput(rgb=out.rgb, cameras=cams, alpha=out.alpha, depth=out.depth, normal=out.normal)
        total = torch.zeros((), device=self.device)
        logs: dict[str, float] = {}
        for i, (g, w_sched, bundle) in enumerate(zip(self.guidances, self.guidance_weights, self._bundles)):
            res = g(inp, bundle, step)
            w = w_sched(step)
            prefix = f"g{i}/" if len(self.guidances) > 1 else ""
            for k, v in res.items():
                if k.startswith("loss_"):
                    total = total + w * v
                    logs[f"train/{prefix}{k}"] = float(v.detach())
                    logs[f"train/{prefix}w_{k[5:]}"] = w
                elif torch.is_tensor(v) and v.numel() == 1:
                    logs[f"train/{prefix}{k}"] = float(v.detach())
                elif isinstance(v, (int, float)):
                    logs[f"train/{prefix}{k}"] = float(v)
        for name, reg, w_sched in zip(self.regulariser_names, self.regularisers, self.regulariser_weights):
            w = w_sched(step)
            if w == 0:
                continue
            v = reg(out, self.representation, cams)
            total = total + w * v
            logs[f"train/reg_{name}"] = float(v.detach())
            logs[f"train/w_reg_{name}"] = w
        logs["train/loss"] = float(total.detach())
        logs["train/alpha_mean"] = float(out.alpha.detach().mean())
        self._last_render = out
        self._step_logs = logs
        return total

    def on_before_optimizer_step(self, optimizer):
        norms = {}
        for pg in optimizer.param_groups:
            grads = [p.grad.detach().flatten() for p in pg["params"] if p.grad is not None]
            if grads:
                norms[f"grad_norm/{pg.get('name', 'group')}"] = float(torch.cat(grads).norm())
            norms[f"lr/{pg.get('name', 'group')}"] = pg["lr"]
        self._step_logs.update(norms)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.global_step  # already incremented by the optimizer step
        with torch.no_grad():
            self.representation.after_step(step, getattr(self, "_last_render", None))
        for hook in self.output_hooks:
            hook(self, step)

    # ---- evaluation renders -----------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, cameras: CameraBatch, chunk: int = 4):
        """Render many cameras in small batches, in eval mode; returns a list of RenderOutput."""
        was_training = self.training
        self.eval()
        outs = []
        try:
            for i in range(0, len(cameras), chunk):
                outs.append(self.render(cameras[i : i + chunk].to(self.device)))
        finally:
            self.train(was_training)
        return outs

    def validation_cameras(self) -> CameraBatch:
        return orbit_cameras(self.camera_cfg, self.cfg.val_views, self.cfg.val_resolution)

    # ---- checkpoint --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["threedgen"] = {"prompt": self.cfg.prompt, "representation": self.cfg.representation.name}


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
