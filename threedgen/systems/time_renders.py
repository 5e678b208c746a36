"""Test renders of a moving scene: an orbit through time, the front view at the export's frames, and (for a
clip-anchored scene) the clip against the scene from the clip's camera.

The front-view strip (``time_front.png``) is what a person checks the motion on, so it makes the motion
easy to see: each frame has a thin grey cross at the image centre, drawn behind the object, and the
strip ends with a **trail** tile, every frame laid over the previous ones with the later frames more
opaque (``trail``), so the path reads in one picture. ``time_front.mp4`` plays the plain frames.
"""

from __future__ import annotations

from pathlib import Path

import torch

GUIDE = 0.75
"""Grey level of the centre cross."""


def with_centre_cross(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` renders with a one-pixel grey cross through the image centre where the render is empty."""
    out = rgb.clone()
    H, W = rgb.shape[-2:]
    guide = torch.zeros(1, 1, H, W, dtype=torch.bool)
    guide[..., H // 2, :] = True
    guide[..., :, W // 2] = True
    empty = alpha.cpu() < 0.5
    mask = (guide & empty).expand_as(out)
    out[mask] = GUIDE
    return out


def trail(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``[F,3,H,W]`` frames (alpha ``[F,1,H,W]``) -> one ``[3,H,W]`` picture: frame f over the ones before it with
    opacity ramping from 0.25 (first) to 1 (last), so where the object went and in which order reads in one
    picture. It starts from the backdrop: each pixel from the frame where it is emptiest."""
    F_ = len(rgb)
    emptiest = alpha.argmin(0, keepdim=True).expand(1, 3, *rgb.shape[-2:])
    out = rgb.gather(0, emptiest)[0]
    for f in range(F_):
        w = 0.25 + 0.75 * f / max(F_ - 1, 1)
        a = alpha[f].clamp(0, 1) * w
        out = out * (1 - a) + rgb[f] * a
    return out


def time_renders(system, cfg, folder: Path) -> None:
    """``orbit_time.mp4``, ``time_front.mp4`` / ``time_front.png`` and, for a clip-anchored scene, ``anchor.png``."""
    from ..data.cameras import clip_times, orbit_cameras, still_cameras
    from ..guidance.clip_anchor import clip_and_scene
    from ..utils.images import make_grid, save_png, save_video, to_uint8

    res = cfg.trainer.test_resolution
    n = cfg.trainer.test_views  # as many as the still orbit's
    t = (torch.arange(n, dtype=torch.float32) * 2 / max(n - 1, 1)) % 1.0  # two passes through time per orbit
    orbit = torch.cat([o.rgb for o in system.render_views(orbit_cameras(cfg.data, n, res, time=t))])
    save_video(folder / "orbit_time.mp4", [to_uint8(im) for im in orbit.cpu()])
    outs = system.render_views(still_cameras(cfg.data, clip_times(cfg.export.frames), res))
    rgb, alpha = torch.cat([o.rgb for o in outs]).cpu(), torch.cat([o.alpha for o in outs]).cpu()
    save_video(folder / "time_front.mp4", [to_uint8(im) for im in rgb])
    strip = list(with_centre_cross(rgb, alpha)) + [with_centre_cross(trail(rgb, alpha)[None], alpha.amax(0, keepdim=True))[0]]
    save_png(folder / "time_front.png", make_grid([strip]))
    anchored = clip_and_scene(system)
    if anchored is not None:  # a clip-anchored scene: the clip above, the scene from the clip's camera below
        k = max(1, res // anchored[0].shape[-1])  # shown at the test renders' size
        up = [torch.nn.functional.interpolate(a, scale_factor=k, mode="nearest") for a in anchored]
        save_png(folder / "anchor.png", make_grid([list(up[0]), list(up[1])]))
