"""``FlowPrior``: a rectified-flow (flow-matching) text-to-image model behind the interface of
``prior_api.py`` -- Stable Diffusion 3-class models (``SD3Transformer2DModel`` or any network with
the same call) with diffusers' ``FlowMatchEulerDiscreteScheduler``.

Forward process ``x_s = (1 - s) z + s eps``: in DESIGN.md's terms ``a = 1 - s``, ``b = s``. The
network predicts the velocity ``u = eps - z``, converted with ``x0 = x - s u``, ``eps = x + (1 - s) u``
(``prior_api.to_prediction``), so every objective runs on it unchanged.

Levels: the scheduler's training grid of ``n`` points (``num_train_timesteps``, 1000), level ``i``
at ``s_i = shift u / (1 + (shift - 1) u)`` with ``u = (i + 1) / n`` -- the scheduler's own
``sigmas`` -- and the network reads the timestep ``n s_i`` as the SD3 pipeline passes it. Drawing a
fraction range of levels uniformly is drawing ``u`` uniformly, then shifting it as the model was trained.

Text (as the SD3 pipeline): the two CLIP encoders' penultimate hidden states concatenated on the
channel axis and zero-padded to the T5 width, followed by T5's tokens (zeros when the folder has
no T5); the pooled embedding is the two CLIP projections concatenated. Latents are
``(vae(x) - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .model_folder import PriorConfig, freeze, weight_dtype
from .prior_api import Conditioning, NoiseLevels, Prior

log = logging.getLogger(__name__)

CLIP_SUBFOLDERS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
T5_SUBFOLDERS = ("tokenizer_3", "text_encoder_3")


def shifted_sigmas(n: int, shift: float) -> torch.Tensor:
    """``s_i`` for levels ``i = 0..n-1`` (ascending), as ``FlowMatchEulerDiscreteScheduler`` builds them."""
    u = torch.arange(1, n + 1, dtype=torch.float64) / n
    return (shift * u / (1 + (shift - 1) * u)).float()


class FlowPrior(Prior):
    """A frozen flow-matching transformer (see the module docstring)."""

    kind = "flow"
    targets = ("flow", "epsilon", "sample")
    """Parameterisations a LoRA on this model may be trained in (VSD's ``lora_target``)."""
    parameterisation = "flow"
    _text_subfolders = tuple(s for pair in CLIP_SUBFOLDERS for s in pair) + T5_SUBFOLDERS

    def __init__(self, cfg: PriorConfig, device: Optional[Union[str, torch.device]] = None):
        import diffusers

        f = self._setup(cfg, device)
        cls = f.component_class("transformer", diffusers, "SD3Transformer2DModel")
        self.transformer = freeze(f.load(cls, "transformer")).to(self._home)
        self.denoiser = self.transformer
        self._speed_up_denoiser()
        if f.has("vae"):
            self.vae = freeze(f.load(f.component_class("vae", diffusers, "AutoencoderKL"), "vae")).to(self._home)
        self.scheduler = f.load_scheduler(diffusers.FlowMatchEulerDiscreteScheduler)
        sc = self.scheduler.config
        if getattr(sc, "use_dynamic_shifting", False):
            raise ValueError(
                f"{cfg.model}: the scheduler uses resolution-dependent (dynamic) shifting, which a score-"
                "distillation prior cannot fix per step; use a model with a static shift (SD3, SD3.5)"
            )
        self.shift = float(sc.shift)
        self.levels = NoiseLevels(int(sc.num_train_timesteps), self.device)
        sig = shifted_sigmas(self.levels.n, self.shift).to(self.device)
        self._a, self._b = 1.0 - sig, sig
        c = self.transformer.config
        self.latent_channels = int(c.in_channels)
        self.latent_resolution = int(c.sample_size)
        self.cond_width = int(c.joint_attention_dim)
        self._setup_vae()
        log.info("loaded flow prior %s (%s, %s, %s, shift %.2f, %d train levels, resolution %d)", self.model_id,
                 "latent" if self.is_latent else "pixel", self.dtype, self.device, self.shift,
                 self.levels.n, self.resolution)

    def time_embedding(self, denoiser: torch.nn.Module) -> tuple[torch.nn.Module, int]:
        c = denoiser.config
        return denoiser.time_text_embed, int(c.num_attention_heads * c.attention_head_dim)

    def _denoise(self, x_t, level, cond: Conditioning, cameras) -> torch.Tensor:
        if cond.pooled is None:
            raise ValueError("a flow (SD3-class) prior needs a pooled text embedding in the conditioning")
        timestep = self._b[level.clamp_min(0)] * self.levels.n
        with self._running(self.denoiser) as net:
            dt = weight_dtype(net)
            return net(
                hidden_states=x_t.to(self._exec_device, dt),
                encoder_hidden_states=cond.emb.to(self._exec_device, dt),
                pooled_projections=cond.pooled.to(self._exec_device, dt),
                timestep=timestep.to(self._exec_device),
            ).sample

    # ---- text -------------------------------------------------------------------------------

    @property
    def max_text_length(self) -> int:
        return self._max_length(self._tokenizer("tokenizer"), 77)

    def _embed(self, prompts: list[str]) -> Conditioning:
        embs, pooled = [], []
        for tok_sub, enc_sub in CLIP_SUBFOLDERS:
            if not self.folder.has(enc_sub):
                raise ValueError(f"{self.model_id}: a flow prior needs two CLIP text encoders; {enc_sub}/ is missing")
            ids = self._tokenize(self._tokenizer(tok_sub), prompts, self.max_text_length)["input_ids"].to(self.device)
            out = self._text_encoder(enc_sub)(ids, output_hidden_states=True)
            pooled.append(out[0])  # CLIPTextModelWithProjection: text_embeds
            embs.append(out.hidden_states[-2])
        clip = torch.cat(embs, -1)
        width = self.cond_width
        if self.folder.has(T5_SUBFOLDERS[1]):
            tok = self._tokenizer(T5_SUBFOLDERS[0])
            ids = self._tokenize(tok, prompts, self._max_length(tok, 256))["input_ids"].to(self.device)
            t5 = self._text_encoder(T5_SUBFOLDERS[1])(ids)[0]
        else:
            t5 = clip.new_zeros(len(prompts), self.max_text_length, width)
        if clip.shape[-1] > width:
            raise ValueError(f"{self.model_id}: CLIP width {clip.shape[-1]} exceeds the transformer's joint_attention_dim {width}")
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        return Conditioning(emb=torch.cat([clip, t5.to(clip)], dim=-2), pooled=torch.cat(pooled, -1))
