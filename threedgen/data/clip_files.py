"""Read a video clip from disk as frames for a 4D recipe: an MP4/GIF/WebM file or a folder of images.

A clip anchors a moving scene (``threedgen/guidance/clip_anchor.py``), so what matters is the object
and where it is in each frame: frames are picked evenly over the clip, centre-cropped to the render's
aspect ratio, area-resized to the render size, and each gets a foreground mask — the image's alpha where
it has one (composited over ``background`` first), else the pixels that differ from ``background`` by
more than ``tolerance`` in some channel (a clip on a plain backdrop, as video priors are asked for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")


def _read_frames(path: Path) -> list:
    import imageio.v2 as iio

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"clip folder {path} has no image files ({', '.join(IMAGE_SUFFIXES)}); put the frames there, "
                             "named so they sort in order (frame_000.png, ...)")
        return [iio.imread(p) for p in files]
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"clip {path}: expected a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames")
    with iio.get_reader(path) as reader:
        return [frame for frame in reader]


def pick_frames(n: int, frames: int) -> list[int]:
    """``frames`` indices spread evenly over ``n`` frames, first and last included."""
    if frames == 1:
        return [0]
    return torch.linspace(0, n - 1, frames).round().long().tolist()


def fit_frames(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[F,C,h,w]`` -> ``[F,C,height,width]``: centre crop to the target aspect ratio, then area resize."""
    h, w = images.shape[-2:]
    if w * height > h * width:  # too wide
        cw = round(h * width / height)
        images = images[..., (w - cw) // 2 : (w - cw) // 2 + cw]
    elif w * height < h * width:
        ch = round(w * height / width)
        images = images[..., (h - ch) // 2 : (h - ch) // 2 + ch, :]
    if images.shape[-2:] != (height, width):
        mode = "area" if images.shape[-1] >= width else "bilinear"
        images = F.interpolate(images, (height, width), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return images.clamp(0, 1)


def foreground(rgb: torch.Tensor, background: Sequence[float], tolerance: float) -> torch.Tensor:
    """``[F,3,H,W]`` -> ``[F,1,H,W]`` in {0, 1}: pixels farther than ``tolerance`` from the background colour."""
    bg = torch.tensor(list(background), dtype=rgb.dtype).view(1, 3, 1, 1)
    return ((rgb - bg).abs().amax(1, keepdim=True) > tolerance).to(rgb.dtype)


def prepare_clip(images: torch.Tensor, frames: int, width: int, height: int, background: Sequence[float],
                 tolerance: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``[N,3|4,h,w]`` in [0,1] -> (rgb ``[F,3,H,W]``, mask ``[F,1,H,W]``) as described above."""
    if images.dim() != 4 or images.shape[1] not in (3, 4):
        raise ValueError(f"a clip must be frames [N, 3 or 4, H, W], got shape {tuple(images.shape)}")
    images = fit_frames(images[pick_frames(images.shape[0], frames)].float(), width, height)
    if images.shape[1] == 4:
        alpha = images[:, 3:]
        bg = torch.tensor(list(background), dtype=images.dtype).view(1, 3, 1, 1)
        return images[:, :3] * alpha + bg * (1 - alpha), alpha
    rgb = images[:, :3]
    return rgb, foreground(rgb, background, tolerance)


def read_clip(path: str | Path, frames: int, width: int, height: int, background: Sequence[float] = (1.0, 1.0, 1.0),
              tolerance: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip file or folder -> (rgb ``[F,3,H,W]``, mask ``[F,1,H,W]``) in [0,1]; ValueError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"clip {path} does not exist: give a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames")
    raw = _read_frames(path)
    if not raw:
        raise ValueError(f"clip {path} has no frames")
    if len(raw) < frames:
        raise ValueError(f"clip {path} has {len(raw)} frames but the recipe needs {frames}; give a longer clip or fewer frames")
    shapes = {tuple(f.shape[:2]) for f in raw}
    if len(shapes) > 1:
        raise ValueError(f"clip {path}: frames of different sizes {sorted(shapes)}")
    stack = []
    for f in raw:
        t = torch.as_tensor(f)
        t = t[..., None].expand(*t.shape, 3) if t.dim() == 2 else t  # greyscale
        scale = 65535.0 if t.dtype == torch.uint16 else 255.0
        stack.append(t.permute(2, 0, 1).float() / scale)
    return prepare_clip(torch.stack(stack), frames, width, height, background, tolerance)
