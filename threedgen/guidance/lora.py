"""VSD's ε_φ network: a camera-conditioned PEFT LoRA on a prior's frozen denoiser (ProlificDreamer
§3.1) -- a diffusers UNet or an SD3-class transformer alike.

The LoRA model is a *structural* copy of the prior's denoiser whose base weights are the prior's own
tensors (``copy.deepcopy`` with every parameter and buffer pre-seeded in the memo), so it costs no
second copy of the weights. PEFT's ``add_adapter`` then wraps ``to_q/to_k/to_v/to_out.0`` of the
copy only, and the camera MLP's output is added to the copy's timestep embedding by a forward hook on
the module the prior names (``prior.time_embedding``: a UNet's ``time_embedding``, SD3's
``time_text_embed``), which is where a UNet adds a ``class_embedding``. The prior's network is never
modified, so every other guidance sharing the prior (``get_prior`` caches one per model) and VSD's
own frozen pass run the untouched network -- no adapter toggling, whose PEFT implementation also
flips ``requires_grad`` and would silently drop LoRA gradients taken before the toggle.

Only the LoRA matrices and the camera MLP are registered submodules: they are what a checkpoint
holds and the optimizer trains; the frozen weights stay out of ``state_dict()``.

Camera condition: the flattened ``c2w`` (16 numbers, DESIGN.md's OpenGL camera-to-world) through
diffusers' ``TimestepEmbedding(16, time_embed_dim)`` (Linear-SiLU-Linear, as threestudio), added
to the timestep embedding; all zeros means "no camera".
"""

from __future__ import annotations

import copy
import itertools
from typing import Optional, Sequence

import torch
from torch import nn

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CAMERA_DIM = 16


class _Poses:
    """Camera-to-world matrices in the shape a prior reads cameras from (``.c2w [N,4,4]``)."""

    def __init__(self, c2w: torch.Tensor):
        self.c2w = c2w


class _Unregistered:
    """Holds a module without making it a submodule (not in state_dict, parameters() or .to())."""

    def __init__(self, module: nn.Module):
        self.module = module


def camera_condition(c2w: torch.Tensor) -> torch.Tensor:
    """``[B,4,4]`` camera-to-world -> ``[B,16]`` float32 camera condition (row-major flatten)."""
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"camera condition needs c2w of shape [B,4,4], got {tuple(c2w.shape)}")
    return c2w.reshape(c2w.shape[0], CAMERA_DIM).float()


class CameraLoRA(nn.Module):
    """LoRA adapters + camera embedding on a weight-sharing copy of ``prior.denoiser``.

    Args:
        prior (`Prior`): the LoRA's base model (the guidance's prior, or a separate one such
            as SD 2.1-768 with v-prediction); predictions go through its ε/v/x0 conversion.
        rank (`int`, defaults to 4): LoRA rank (ProlificDreamer and threestudio use 4).
        alpha (`float`, optional): LoRA alpha; defaults to ``rank`` (scale 1).
        targets (`Sequence[str]`, defaults to ``to_q, to_k, to_v, to_out.0``): attention projections adapted.
    """

    def __init__(self, prior, rank: int = 4, alpha: Optional[float] = None, targets: Sequence[str] = DEFAULT_TARGETS):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig

        if getattr(prior.cfg, "cpu_offload", False):
            raise ValueError(
                f"VSD/ESD cannot use prior.cpu_offload with {prior.model_id}: the LoRA model shares the "
                "frozen UNet's weights and trains on them every step; set prior.cpu_offload=false"
            )
        unet = prior.denoiser
        targets = tuple(targets)
        def targeted(name: str, m: nn.Module) -> bool:
            return isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)

        if not any(targeted(n, m) for n, m in unet.named_modules()):
            raise ValueError(
                f"VSD needs attention layers to adapt, but the denoiser of {prior.model_id} has no linear layer "
                f"named {', '.join(targets)} (it has no attention blocks); use a network with "
                "attention blocks, or set lora_targets to layers it has"
            )
        shared = {id(t): t for t in itertools.chain(unet.parameters(), unet.buffers())}
        lora_unet = copy.deepcopy(unet, shared)  # new module objects, the same weight tensors
        for m in lora_unet.modules():  # hooks on the prior's network (a profiler, a test's counter) stay there
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        # prior.compile set the prior's ``forward`` as an instance attribute, bound to the prior's network:
        # the copy would inherit it and run the frozen network without its adapters. Its own forward, compiled too.
        if vars(lora_unet).pop("forward", None) is not None and getattr(prior.cfg, "compile", False):
            lora_unet.forward = torch.compile(lora_unet.forward)
        lora_unet.add_adapter(
            LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank), target_modules=list(targets)),
            adapter_name="vsd",
        )
        self.adapters = nn.ModuleDict()
        for name, p in lora_unet.named_parameters():
            if p.requires_grad:
                owner = name.rsplit(".", 1)[0]
                key = owner.replace(".", "_")
                if key not in self.adapters:
                    self.adapters[key] = lora_unet.get_submodule(owner)
        for p in self.adapters.parameters():  # train in fp32 even when the frozen UNet is fp16
            p.data = p.data.float()
        temb, time_dim = prior.time_embedding(lora_unet)
        self.camera_embedding = TimestepEmbedding(CAMERA_DIM, time_dim).to(prior.device)
        self._camera: Optional[torch.Tensor] = None
        temb.register_forward_hook(self._add_camera)
        self._unet = _Unregistered(lora_unet)
        # A view of the prior whose denoiser is the adapted copy: same level tables, same
        # eps/v/flow conversion and device handling in ``predict``; everything else is the prior's own.
        self._prior = _Unregistered(copy.copy(prior))
        self._prior.module.denoiser = lora_unet

    def _add_camera(self, module, args, out):
        if self._camera is None:
            raise RuntimeError("the VSD LoRA network was called without a camera (use CameraLoRA.predict)")
        return out + self.camera_embedding(self._camera.to(out.device, self.camera_embedding.linear_1.weight.dtype)).to(out.dtype)

    @property
    def unet(self) -> nn.Module:
        """The adapted denoiser (not a submodule: its frozen weights are the base prior's)."""
        return self._unet.module

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond, camera: torch.Tensor):
        """ε_φ(x_t; cond, camera) as a ``Prediction`` (``eps``, ``x0``) in the base model's terms.

        ``x_t`` ``[N,C,h,w]``, ``t`` ``[N]`` levels, ``cond`` a ``Conditioning`` of N or 1 rows, ``camera``
        ``[N,16]`` (zeros: no camera). Differentiable w.r.t. the LoRA and camera weights (wrap in
        ``no_grad`` for inference).
        """
        self._camera = camera
        base = self._prior.module
        # a camera-conditioned base (the toy MVDream prior) reads the same camera as its class label, so
        # the LoRA model starts as the prior under the render's camera; a zero row stays "camera unknown"
        poses = _Poses(camera.view(-1, 4, 4)) if getattr(base, "camera_conditioned", False) else None
        try:
            return base.predict(x_t, t, cond, poses)
        finally:
            self._camera = None
