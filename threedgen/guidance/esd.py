"""ESD: entropic score distillation (Wang et al. 2024, "Taming Mode Collapse in Score Distillation
for Text-to-3D Generation", arXiv 2401.00909).

VSD plus an entropy term on the distribution of rendered views, which in ε form is classifier-free
guidance on the LoRA model's camera condition (ESD Eq. 11; VITA-Group/3D-Mode-Collapse maps it to
threestudio VSD's ``guidance_scale_lora = 1 - lambda``)::

    eps_phi = phi(x_t; y, 0) + (1 - lambda) (phi(x_t; y, c) - phi(x_t; y, 0))
    g = w(t) (eps_pre - eps_phi)

lambda = 0 is VSD exactly, lambda = 1 uses only the camera-unconditional LoRA score. The
unconditional branch is learned through the LoRA's camera dropout (``lora_camera_dropout``, 0.1).
Everything else -- the LoRA, its training loss, checkpointing -- is ``VSDGuidance``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..schedule import Schedule
from .vsd import VSDGuidance


class ESDGuidance(VSDGuidance):
    """VSD with ``camera_lambda`` (ESD's lambda, defaults to 0.5: the README's example value; the
    paper's 3D default was not verified). Returns ``loss_esd`` and ``loss_lora``."""

    loss_name = "esd"

    @dataclass
    class Config(VSDGuidance.Config):
        camera_lambda: Schedule = field(default_factory=lambda: Schedule(0.5))
        """ESD's entropy weight lambda: eps_phi = phi(0) + (1 - lambda)(phi(c) - phi(0)); 0 is VSD."""
