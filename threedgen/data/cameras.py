"""Cameras: the ``CameraBatch`` every renderer takes, a seeded random sampler and an orbit sampler.

Conventions (DESIGN.md): world +Y up, object front faces +Z; OpenGL cameras (x right, y up,
looking down -z); ``c2w`` is camera-to-world. Azimuth 0 puts the camera on +Z, 90 deg on +X;
elevation is measured up from the XZ plane; position = r (cos e sin a, sin e, cos e cos a).
Angles are degrees in configs and radians inside a ``CameraBatch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal, Optional

import torch

from ..schedule import Schedule


@dataclass
class CameraConfig:
    RANGES = {"elevation_range": (-90, 90), "distance_range": (1e-6, None), "fovy_range": (1e-3, 179.999),
              "light_perturb": (0, None), "eval_elevation": (-90, 90), "eval_distance": (1e-6, None), "eval_fovy": (1e-3, 179.999),
              "frames": (0, 256), "batch_size": (1, 1024), "width": (1, 4096), "height": (1, 4096)}
    batch_size: Schedule = field(default_factory=lambda: Schedule(4))
    width: Schedule = field(default_factory=lambda: Schedule(64))
    """Render width in pixels; a schedule switches resolution (e.g. [[0, 64], [5000, 64], [5001, 256]])."""
    height: Schedule = field(default_factory=lambda: Schedule(64))
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (1.5, 2.0)
    fovy_range: tuple[float, float] = (40.0, 70.0)
    light: Literal["dreamfusion", "camera", "fixed", "none"] = "dreamfusion"
    """'dreamfusion': light near the camera direction, perturbed; 'camera': from the camera;
    'fixed': ``light_direction`` in world space for every view (e.g. a world with known lighting); 'none'."""
    light_perturb: float = 1.0
    light_direction: tuple[float, float, float] = (0.4, 0.8, 0.6)
    """World-space direction towards the light for ``light: fixed`` (normalised)."""
    eval_elevation: float = 15.0
    eval_distance: float = 1.75
    eval_fovy: float = 55.0
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The point every camera orbits and looks at (world); a scene edit sets it to the edit box's centre."""
    frames: int = 0
    """4D: views per clip. 0: a static scene (cameras carry no time). F > 0: the batch is ``batch_size / F``
    clips, each one random camera seen at times 0, 1/(F-1), ..., 1 (a video prior reads them as frames)."""
    clip_orbit: float = 0.0
    """4D: degrees of azimuth a clip's camera turns over its frames (0: a fixed camera per clip)."""

    def check(self, prefix: str = "data") -> None:
        """Ranges the renderers and samplers would otherwise trip over later (ValueError, one line)."""
        def bad(key, expected, got):
            raise ValueError(f"{prefix}.{key}: expected {expected}, got {got!r}")

        for key in ("batch_size", "width", "height"):  # schedules: every knot within the key's RANGES
            low, top = self.RANGES[key]
            vals = getattr(self, key).knot_values
            if not all(low <= v <= top for v in vals):  # NaN fails too
                bad(key, f"values in [{low}, {top}]", getattr(self, key).raw)
        for key in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
            lo, hi = getattr(self, key)
            if lo > hi:
                bad(key, "[low, high] with low <= high", [lo, hi])
        if self.distance_range[0] <= 0:
            bad("distance_range", "distances > 0", list(self.distance_range))
        if not (0 < self.fovy_range[0] and self.fovy_range[1] < 180):
            bad("fovy_range", "angles in (0, 180) degrees", list(self.fovy_range))
        if self.frames < 0:
            bad("frames", "an int >= 0 (0: a static scene)", self.frames)


@dataclass
class CameraBatch:
    c2w: torch.Tensor  # [B,4,4]
    fovy: torch.Tensor  # [B] radians
    width: int
    height: int
    elevation: torch.Tensor  # [B] radians
    azimuth: torch.Tensor  # [B] radians
    distance: torch.Tensor  # [B]
    time: Optional[torch.Tensor] = None  # [B] in [0,1] (4D)
    light_dir: Optional[torch.Tensor] = None  # [B,3] unit vector towards the light, world space

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device) -> "CameraBatch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return CameraBatch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in kw.items()})

    def __getitem__(self, idx) -> "CameraBatch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: v[idx] if torch.is_tensor(v) else v for k, v in kw.items()}
        if out["c2w"].dim() == 2:
            out = {k: v.unsqueeze(0) if torch.is_tensor(v) else v for k, v in out.items()}
        return CameraBatch(**out)

    @property
    def elevation_deg(self) -> torch.Tensor:
        return torch.rad2deg(self.elevation)

    @property
    def azimuth_deg(self) -> torch.Tensor:
        return torch.rad2deg(self.azimuth)

    @property
    def focal(self) -> torch.Tensor:
        """Focal length in pixels [B] (square pixels)."""
        return 0.5 * self.height / torch.tan(0.5 * self.fovy)

    def intrinsics(self) -> torch.Tensor:
        """Pinhole K [B,3,3] in OpenCV pixel convention (pixel centres at +0.5)."""
        f = self.focal
        K = torch.zeros(len(self), 3, 3, device=self.device, dtype=self.c2w.dtype)
        K[:, 0, 0], K[:, 1, 1] = f, f
        K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = self.width / 2, self.height / 2, 1.0
        return K

    def w2c(self) -> torch.Tensor:
        return torch.linalg.inv(self.c2w)

    def camera_position(self) -> torch.Tensor:
        return self.c2w[:, :3, 3]

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ray origins and unit directions, each [B,H,W,3] in world space."""
        H, W = self.height, self.width
        dev, dt = self.device, self.c2w.dtype
        j, i = torch.meshgrid(
            torch.arange(H, device=dev, dtype=dt) + 0.5, torch.arange(W, device=dev, dtype=dt) + 0.5, indexing="ij"
        )
        f = self.focal.to(dt).view(-1, 1, 1)
        x = (i - W / 2) / f
        y = -(j - H / 2) / f
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B,H,W,3]
        d = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], d_cam)
        d = d / d.norm(dim=-1, keepdim=True)
        o = self.c2w[:, None, None, :3, 3].expand_as(d)
        return o, d

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points [B,N,3] -> pixel coordinates [B,N,2] (x right, y down) and depth [B,N] (> 0 in front)."""
        w2c = self.w2c()
        p = torch.einsum("bij,bnj->bni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
        depth = -p[..., 2]
        f = self.focal.view(-1, 1)
        u = self.width / 2 + f * p[..., 0] / depth
        v = self.height / 2 - f * p[..., 1] / depth
        return torch.stack([u, v], dim=-1), depth

    def with_resolution(self, width: int, height: int) -> "CameraBatch":
        return replace(self, width=width, height=height)


def spherical_to_c2w(elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor,
                     center: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Camera-to-world [B,4,4] for cameras on a sphere looking at ``center`` (default the origin; radians)."""
    elevation = elevation.clamp(-math.pi / 2 + 1e-4, math.pi / 2 - 1e-4)
    pos = torch.stack(
        [
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
            distance * torch.cos(elevation) * torch.cos(azimuth),
        ],
        dim=-1,
    )
    target = torch.zeros_like(pos) if center is None else torch.as_tensor(center, dtype=pos.dtype).expand_as(pos)
    return look_at(pos + target, target)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: Optional[torch.Tensor] = None) -> torch.Tensor:
    """OpenGL camera-to-world [B,4,4] at ``eye`` looking at ``target`` (world up +Y)."""
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    z = eye - target
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(up, z, dim=-1)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    y = torch.cross(z, x, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eye
    return c2w


def make_cameras(
    elevation_deg, azimuth_deg, distance, fovy_deg, width: int, height: int, light_dir=None, time=None, center=None
) -> CameraBatch:
    """Cameras from angles in degrees (scalars or [B] tensors), orbiting ``center`` (default the origin)."""
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1))
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1))
    B = max(el.numel(), az.numel())
    el, az = el.expand(B).contiguous(), az.expand(B).contiguous()
    dist = torch.as_tensor(distance, dtype=torch.float32).reshape(-1).expand(B).contiguous()
    fovy = torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32).reshape(-1).expand(B).contiguous())
    c2w = spherical_to_c2w(el, az, dist, center)
    if light_dir is None:
        light_dir = (c2w[:, :3, 3] - (0.0 if center is None else torch.as_tensor(center, dtype=torch.float32))) / dist[:, None]
    return CameraBatch(c2w, fovy, int(width), int(height), el, az, dist, time=time, light_dir=light_dir)


class RandomCameraSampler:
    """Seeded random training views. ``sample(step)`` is a pure function of (seed, step), so resume is exact."""

    def __init__(self, cfg: CameraConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed

    def resolution(self, step: int) -> tuple[int, int]:
        return int(round(self.cfg.width(step))), int(round(self.cfg.height(step)))

    def batch_size(self, step: int) -> int:
        return max(1, int(round(self.cfg.batch_size(step))))

    def sample(self, step: int, batch_size: Optional[int] = None) -> CameraBatch:
        cfg = self.cfg
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        B = batch_size or self.batch_size(step)
        F_ = max(1, cfg.frames)
        if B % F_:
            raise ValueError(f"data.batch_size {B} is not a whole number of {F_}-frame clips (data.frames); use a multiple of {F_}")
        n = B // F_

        def uniform(lo_hi):
            lo, hi = lo_hi
            v = lo + (hi - lo) * torch.rand(n, generator=g)
            return v.repeat_interleave(F_) if F_ > 1 else v

        # elevation uniform in sin(el) would be area-uniform; DreamFusion samples the angle uniformly
        el, az = uniform(cfg.elevation_range), uniform(cfg.azimuth_range)
        dist, fovy = uniform(cfg.distance_range), uniform(cfg.fovy_range)
        time = None
        if cfg.frames:
            time = clip_times(F_).repeat(n)
            az = az + cfg.clip_orbit * (time - 0.5)
        W, H = self.resolution(step)
        cams = make_cameras(el, az, dist, fovy, W, H, time=time, center=_center(cfg))
        cam_dir = (cams.c2w[:, :3, 3] - torch.tensor(cfg.center, dtype=torch.float32)) / cams.distance[:, None]
        if cfg.light == "dreamfusion":
            ld = cam_dir + cfg.light_perturb * torch.randn(B, 3, generator=g) * 0.5
            cams.light_dir = ld / ld.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        elif cfg.light == "camera":
            cams.light_dir = cam_dir
        elif cfg.light == "fixed":
            cams.light_dir = fixed_light(cfg, B)
        else:
            cams.light_dir = None
        return cams


def clip_times(frames: int) -> torch.Tensor:
    """Normalised times of a clip's frames: 0, 1/(F-1), ..., 1 (a single frame is at 0)."""
    return torch.linspace(0.0, 1.0, frames) if frames > 1 else torch.zeros(1)


def _center(cfg: CameraConfig):
    """``cfg.center`` as a tensor, or None at the origin (keeps the default cameras bit-identical)."""
    return None if not any(cfg.center) else torch.tensor(cfg.center, dtype=torch.float32)


def fixed_light(cfg: CameraConfig, n: int) -> torch.Tensor:
    d = torch.tensor(cfg.light_direction, dtype=torch.float32)
    return (d / d.norm()).expand(n, 3).contiguous()


def orbit_cameras(cfg: CameraConfig, n_views: int, resolution: int, elevation: Optional[float] = None,
                  time: Optional[torch.Tensor] = None) -> CameraBatch:
    """Evenly spaced views around the object (azimuth from 0 = front), for test videos and benchmarks;
    ``time`` [n_views] gives each view a time (a moving scene's orbit through time)."""
    az = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    el = cfg.eval_elevation if elevation is None else elevation
    light = fixed_light(cfg, n_views) if cfg.light == "fixed" else None
    return make_cameras(el, az, cfg.eval_distance, cfg.eval_fovy, resolution, resolution, light_dir=light, time=time,
                        center=_center(cfg))


def still_cameras(cfg: CameraConfig, times: torch.Tensor, resolution: int, azimuth: float = 0.0) -> CameraBatch:
    """One fixed evaluation view (the front by default) at each of ``times``: a moving scene seen still."""
    n = len(times)
    light = fixed_light(cfg, n) if cfg.light == "fixed" else None
    return make_cameras(cfg.eval_elevation, torch.full((n,), float(azimuth)), cfg.eval_distance, cfg.eval_fovy, resolution,
                        resolution, light_dir=light, time=times, center=_center(cfg))
