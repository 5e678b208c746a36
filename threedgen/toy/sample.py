"""Draw images from the toy prior through the prior's own sampler (``Prior.sample``: deterministic DDIM
with classifier-free guidance), and write them as a grid.

Guidance is the project's one form, ``eps_u + s * (eps_c - eps_u)``; samples are clipped to [-1, 1]
only at the end (clipping every step collapses pixel-space samples at useful guidance scales).
"""

from __future__ import annotations

from pathlib import Path

import torch


def load_prior(path: str | Path = "assets/toy-prior", device="cpu"):
    """The shared prior for the toy folder, through the same ``from_pretrained`` path as Stable Diffusion."""
    from ..guidance.model_folder import PriorConfig
    from ..guidance.priors import get_prior

    return get_prior(PriorConfig(model=str(path), device=str(device)))


@torch.no_grad()
def sample(
    prior,
    prompts: list[str],
    guidance_scale: float = 5.0,
    steps: int = 50,
    seed: int = 0,
    negative_prompt: str = "",
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """One image per prompt, ``[B,3,H,W]`` in [0,1]. Deterministic for a given seed and prompt order."""
    from tqdm import tqdm

    g = torch.Generator().manual_seed(seed)
    res, ch = prior.latent_resolution, prior.latent_channels
    noise = torch.randn(len(prompts), ch, res, res, generator=g)
    uncond = prior.encode_text([negative_prompt])
    out = []
    bar = tqdm(total=len(prompts), desc="sampling", unit="img", disable=not progress, mininterval=10.0)
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        x_T = noise[s : s + batch_size].to(prior.device)
        out.append(prior.sample(prior.encode_text(chunk), uncond, guidance_scale, steps, x_T=x_T).cpu())
        bar.update(len(chunk))
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
