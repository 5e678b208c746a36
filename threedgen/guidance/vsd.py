"""VSD: ProlificDreamer's variational score distillation (Wang et al., NeurIPS 2023, arXiv 2305.16213).

The scene is a distribution of renders; the noise SDS subtracts is replaced by ε_φ, a LoRA copy of
the prior's denoiser conditioned on the camera and trained online on the renders (``CameraLoRA``).
Per step, for renders ``x`` ``[B,3,H,W]`` with cameras ``c`` (flattened c2w, ``[B,16]``)::

    z = prior.encode(x)                                      # with grad
    t ~ U{floor(T min%), ..., floor(T max%)};  eps ~ N(0, I);  x_t = a_t z + b_t eps    # no grad from here
    eps_pre = eps_u + s (eps_c - eps_u)                      # frozen prior, view-dependent prompt, 2B
    eps_phi = phi(x_t; y, c)                                 # LoRA model, plain prompt, B (lambda = 0)
            = phi(x_t; y, 0) + (1 - lambda)(phi(x_t; y, c) - phi(x_t; y, 0))   # ESD (lambda > 0), 2B
    g = w(t) (eps_pre - eps_phi);  loss_vsd = surrogate(z, g)                  # ProlificDreamer Eq. 9
    # the LoRA learns the distribution of the renders: the same renders, detached (Eq. 10 / Alg. 1)
    t' ~ U{0, ..., 999};  eps' ~ N;  x' = a' sg(z) + b' eps';  c' = 0 with probability 0.1
    loss_lora = mean (out(phi(x'; y, c')) - out(eps', sg(z)))^2    # in the base's parameterisation:
                                                                     # eps, v = a eps - b z, x0, or flow u = eps - z

One backward trains both: ``loss_vsd`` reaches only the scene (the UNet passes ran without grad)
and ``loss_lora`` only the LoRA and the camera MLP (``z`` is detached); the LoRA and camera MLP
come out through ``param_groups()`` into the system's single optimizer (AdamW-style lr 1e-4,
betas 0.9/0.99 as threestudio's prolificdreamer recipe). The system multiplies every ``loss_*``
key by this guidance's weight, so a weight of 0 also stops the LoRA's training.

``lambda`` (``camera_lambda``) is ESD's entropy weight (Wang et al. 2024, "Taming Mode Collapse
in Score Distillation for Text-to-3D Generation", arXiv 2401.00909): classifier-free guidance on
the LoRA's camera condition with scale ``1 - lambda``; 0 is VSD exactly (``esd`` sets 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ..schedule import Schedule
from .base import GuidanceInput, surrogate
from .cfg import cfg_combine
from .lora import DEFAULT_TARGETS, CameraLoRA, camera_condition
from .model_folder import PriorConfig
from .prior_api import parameterise
from .priors import check_lora_base, get_prior, lora_target
from .sds import SDSGuidance
from .timesteps import TimestepSampler


class VSDGuidance(SDSGuidance):
    """Variational score distillation; fields beyond SDS's (all in the module docstring's terms):

    Args:
        lora_prior (`PriorConfig`, optional): a separate LoRA base (ProlificDreamer: SD 2.1 at 768,
            v-prediction); None: the prior itself (weights shared, never modified).
        lora_rank (`int`, defaults to 4), lora_alpha (`float`, defaults to the rank),
        lora_targets (`list[str]`, defaults to to_q, to_k, to_v, to_out.0): the PEFT LoRA.
        lora_lr (`Schedule`, defaults to 1e-4), lora_betas (defaults to (0.9, 0.99)),
        lora_weight_decay (defaults to 0): the LoRA + camera MLP optimizer group.
        lora_min_step_percent / lora_max_step_percent (defaults 0 / 1): t' ~ U{0..999}.
        lora_camera_dropout (`float`, defaults to 0.1): probability that c' = 0 (needed by ESD).
        lora_target (defaults to ``auto``: the base's own parametrisation): ε, v or x0 loss.
        lora_samples (`int`, defaults to 1): fresh (t', ε') draws per render per step.
        lora_every (`int`, defaults to 1): train the LoRA on every n-th step only.
        camera_lambda (`Schedule`, defaults to 0): ESD's λ; 0 is VSD.
    """

    loss_name = "vsd"
    lora_sampler: Optional[TimestepSampler] = None
    fraction_fields = SDSGuidance.fraction_fields + ("lora_min_step_percent", "lora_max_step_percent")

    @dataclass
    class Config(SDSGuidance.Config):
        lora_prior: Optional[PriorConfig] = None
        """Separate LoRA base model (e.g. ``stabilityai/stable-diffusion-2-1``, v-prediction); None: the prior."""
        lora_rank: int = 4
        lora_alpha: Optional[float] = None
        """LoRA alpha (scale alpha / rank); None: equal to the rank."""
        lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
        lora_lr: Schedule = field(default_factory=lambda: Schedule(1e-4))
        lora_betas: tuple[float, float] = (0.9, 0.99)
        lora_weight_decay: float = 0.0
        lora_min_step_percent: Schedule = field(default_factory=lambda: Schedule(0.0))
        lora_max_step_percent: Schedule = field(default_factory=lambda: Schedule(1.0))
        """LoRA training timesteps t' (1.0 -> t = 999: U[0, 1000) as ProlificDreamer)."""
        lora_camera_dropout: float = 0.1
        """Probability of training on the zero ("no camera") condition; ESD needs the unconditional branch."""
        lora_target: Literal["auto", "epsilon", "v_prediction", "sample", "flow"] = "auto"
        """What the LoRA loss compares: eps, v = a eps - b z, z, or the flow velocity eps - z; auto: the
        base model's own parameterisation (v only on DDPM bases, flow only on flow bases)."""
        lora_samples: int = 1
        """Fresh (t', eps', dropout) draws per render in one step's LoRA loss (threestudio lora_n_timestamp_samples)."""
        lora_every: int = 1
        """LoRA training every n-th step (1: every step, as ProlificDreamer's one LoRA step per scene step)."""
        camera_lambda: Schedule = field(default_factory=lambda: Schedule(0.0))
        """ESD's entropy weight lambda: eps_phi = phi(0) + (1 - lambda)(phi(c) - phi(0)); 0 is VSD."""

    def __init__(self, cfg: "VSDGuidance.Config", prior=None, lora_prior=None):
        super().__init__(cfg, prior=prior)
        for name in ("lora_rank", "lora_samples", "lora_every"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if not 0.0 <= cfg.lora_camera_dropout <= 1.0:
            raise ValueError(f"lora_camera_dropout is a probability in [0, 1], got {cfg.lora_camera_dropout}")
        if lora_prior is None:
            lora_prior = self.prior if cfg.lora_prior is None else get_prior(cfg.lora_prior)
        check_lora_base(self.prior, lora_prior)
        self.lora_target = lora_target(lora_prior, cfg.lora_target)
        self.lora_prior = lora_prior  # plain attribute, like ``prior``
        self.lora = CameraLoRA(lora_prior, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        self.lora_sampler = TimestepSampler(lora_prior, cfg.lora_min_step_percent, cfg.lora_max_step_percent, True)
        self.camera_lambda = 0.0
        self.update_step(0, 0)

    def update_step(self, epoch: int, step: int) -> None:
        super().update_step(epoch, step)
        self.camera_lambda = float(self.cfg.camera_lambda(step))
        if self.lora_sampler is not None:
            self.lora_sampler.update(step)

    def param_groups(self) -> list[dict]:
        c = self.cfg
        params = list(self.lora.parameters())
        return [{"params": params, "lr": c.lora_lr, "betas": tuple(c.lora_betas), "weight_decay": c.lora_weight_decay}]

    # ---- the objective ----------------------------------------------------------------------

    def lora_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """eps_phi with CFG on the camera condition (scale ``1 - camera_lambda``); one network call of
        B (lambda 0 or 1) or 2B. ``cond`` (a ``Conditioning`` of B or 1 rows) is the view-independent prompt."""
        B = x_t.shape[0]
        cond = cond.expand(B)
        s = 1.0 - self.camera_lambda
        if s == 1.0:
            return self.lora.predict(x_t, t, cond, camera).eps
        if s == 0.0:
            return self.lora.predict(x_t, t, cond, torch.zeros_like(camera)).eps
        pred = self.lora.predict(
            torch.cat([x_t, x_t]), torch.cat([t, t]), cond.repeat(2), torch.cat([camera, torch.zeros_like(camera)])
        )
        return cfg_combine(pred.eps[:B], pred.eps[B:], s)

    def lora_loss(self, z: torch.Tensor, cond: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """The LoRA's denoising loss on the detached renders ``z`` ``[B,C,h,w]`` (mean squared error)."""
        n = self.cfg.lora_samples
        z0 = z.detach().repeat(n, 1, 1, 1)
        N = z0.shape[0]
        t = self.lora_sampler.sample(N)
        eps = torch.randn_like(z0)
        x = self.lora_prior.add_noise(z0, eps, t)
        keep = (torch.rand(N, device=camera.device) >= self.cfg.lora_camera_dropout).to(camera.dtype)
        c = cond.expand(N) if len(cond) == 1 else cond.repeat(n)
        pred = self.lora.predict(x, t, c, camera.repeat(n, 1) * keep[:, None])
        a, b = pred.a, pred.b
        return F.mse_loss(parameterise(self.lora_target, pred.eps, pred.x0, a, b), parameterise(self.lora_target, eps, z0, a, b))

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        if self._evaluated_at != step:
            self.update_step(0, step)
        z = self.model_input(inp.rgb)
        B = z.shape[0]
        camera = camera_condition(inp.cameras.c2w).to(z.device)
        t = self.sampler.sample(B)
        with torch.no_grad():
            eps = torch.randn_like(z)
            x_t = self.prior.add_noise(z.detach(), eps, t)
            pred = self._predict(x_t, t, prompts, inp.cameras)
            eps_phi = self.lora_eps(x_t, t, prompts.cond, camera)
            g = self.weight(t, z.dim()) * (pred.eps - eps_phi)
        loss, stats = surrogate(z, g, self.grad_clip)
        if step % self.cfg.lora_every == 0:
            loss_lora = self.lora_loss(z, prompts.cond, camera)
        else:
            loss_lora = torch.zeros((), device=z.device)
        return {
            f"loss_{self.loss_name}": loss,
            "loss_lora": loss_lora,
            **stats,
            "t": t.float().mean(),
            "min_step": torch.tensor(float(self.sampler.min_step)),
            "max_step": torch.tensor(float(self.sampler.max_step)),
            "guidance_scale": torch.tensor(self.guidance_scale),
            "camera_lambda": torch.tensor(self.camera_lambda),
        }
