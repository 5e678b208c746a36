"""Draw images from the toy prior: DDIM with classifier-free guidance, straight from the diffusers folder.

Why a separate sampler (and not a diffusers pipeline): the toy prior is a pixel-space model with no VAE,
which no stock text-to-image pipeline covers. Guidance is written the project's one way,
``eps_u + s * (eps_c - eps_u)``; samples are clipped to [-1, 1] only at the end (clipping every step
collapses pixel-space samples at useful guidance scales, see notes/toy-prior-findings.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ToyPrior:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        from .tokenizer import tokenize

        ids = tokenize(self.tokenizer, prompts)
        return self.text_encoder(ids.to(self.unet.device)).last_hidden_state


def load_prior(path: str | Path = "assets/toy-prior", device="cpu") -> ToyPrior:
    """Load the four components with the same ``from_pretrained`` calls used for Stable Diffusion."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = str(path)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").to(device).eval()
    te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").to(device).eval()
    tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    sched = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
    return ToyPrior(unet, te, tok, sched)


@torch.no_grad()
def sample(
    prior: ToyPrior,
    prompts: list[str],
    guidance_scale: float = 5.0,
    steps: int = 50,
    seed: int = 0,
    negative_prompt: str = "",
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """One image per prompt, ``[B,3,H,W]`` in [0,1]. Deterministic for a given seed and prompt order."""
    from diffusers import DDIMScheduler
    from tqdm import tqdm

    unet = prior.unet
    sched = DDIMScheduler.from_config(prior.scheduler.config)
    sched.set_timesteps(steps)
    res, ch = unet.config.sample_size, unet.config.in_channels
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), ch, res, res, generator=g)
    enc_u1 = prior.encode([negative_prompt])
    out = []
    bar = tqdm(total=len(sched.timesteps) * len(prompts), desc="DDIM sampling", unit="img-step",
               disable=not progress, mininterval=10.0)
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        enc_c = prior.encode(chunk)
        enc = torch.cat([enc_u1.expand(len(chunk), -1, -1), enc_c])
        x = noise[s : s + batch_size].to(unet.device)
        for t in sched.timesteps:
            eps = unet(torch.cat([x, x]), t, enc).sample
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
            bar.update(len(chunk))
        out.append(((x.clamp(-1, 1) + 1) / 2).cpu())
    bar.close()
    return torch.cat(out)


def save_grid(images: torch.Tensor, path: str | Path, ncol: int, scale: int = 2, pad: int = 1) -> None:
    """Write ``images`` [N,3,H,W] in [0,1] as a PNG grid (nearest-neighbour upscaled)."""
    import numpy as np
    from PIL import Image

    N, _, H, Wd = images.shape
    nrow = (N + ncol - 1) // ncol
    grid = torch.ones(3, nrow * (H + pad) + pad, ncol * (Wd + pad) + pad)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        y, x = pad + r * (H + pad), pad + c * (Wd + pad)
        grid[:, y : y + H, x : x + Wd] = im
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    arr = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
