"""Writing what a person looks at: image grids (PNG) and orbit videos (MP4)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3,H,W] or [1,H,W] float in [0,1] -> HxWx3 uint8."""
    img = img.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def make_grid(rows: Sequence[Sequence[torch.Tensor]], pad: int = 2) -> np.ndarray:
    """Rows of [C,H,W] images (each row may mix rgb/alpha/depth) -> one uint8 image, white padding."""
    tiles = [[to_uint8(t) for t in row] for row in rows]
    h = max(t.shape[0] for row in tiles for t in row)
    w = max(t.shape[1] for row in tiles for t in row)
    n_cols = max(len(r) for r in tiles)
    out = np.full((len(tiles) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def save_png(path: str | Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    iio.imwrite(tmp, image)
    os.replace(tmp, path)


def save_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 12) -> None:
    """MP4 through imageio's bundled ffmpeg (H.264, even sizes)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1) as w:
        for f in frames:
            w.append_data(f)


def depth_to_image(depth: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Normalise a [1,H,W] depth map to [0,1] over the object (near = bright), background black."""
    mask = alpha > 0.5
    if mask.any():
        d = depth[mask]
        lo, hi = d.min(), d.max()
        img = 1 - (depth - lo) / (hi - lo + 1e-6)
        return (img * mask).clamp(0, 1)
    return torch.zeros_like(depth)
