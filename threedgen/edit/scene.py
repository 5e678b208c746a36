"""A frozen Gaussian scene plus a trainable object inside an edit box, rendered as one.

Issue 19's first restriction: only the object's Gaussians train. The background is loaded from a
PLY (``scene_ply.py``) into non-persistent buffers — never a parameter, so it gets no gradient,
no optimizer state and no densification, and a checkpoint does not copy a possibly
million-splat scene (the file's SHA-256 travels instead and is checked on resume). The object is
an ordinary ``Gaussians`` module, initialised inside the box, so it densifies, prunes and
checkpoints as any Gaussian scene does; its densification sees only its own slice of the
render's screen-space gradients.

The renderer composites both in one rasterisation (object first, then background) and renders
one extra channel, 1 for object Gaussians and 0 for the background: its accumulated value is the
object's visible alpha, occluded by whatever background lies in front (the edit mask's source).
``mode: replace`` drops the background Gaussians whose centres lie in the box.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ..representations.base import Representation
from ..representations.gaussians import Gaussians
from ..representations.spherical_harmonics import sh_basis
from .box import EditBox
from .scene_ply import read_splat_ply


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class SceneWithObject(Representation):
    @dataclass
    class Config:
        scene: str = ""
        """Path of the background scene, an INRIA-layout 3D Gaussian PLY, or ``toy:<layout>`` (toy/scene_builder.py)."""
        axes: Literal["rdf", "rub"] = "rdf"
        """The file's axes: rdf (COLMAP/INRIA captures, y down; also this project's own PLY export) or rub (+Y up)."""
        box: tuple[float, float, float, float, float, float] = (-0.25, -0.25, -0.25, 0.25, 0.25, 0.25)
        """The edit box [x0,y0,z0,x1,y1,z1] in world units (+Y up)."""
        mode: Literal["insert", "replace"] = "insert"
        """insert: keep the background inside the box; replace: drop background Gaussians centred in it."""
        object: Gaussians.Config = field(default_factory=lambda: Gaussians.Config(init="box", num_points=2048, init_radius=1.0))
        """The inserted object's Gaussians; ``init`` box or sphere fills the edit box (its ``init_radius`` is ignored)."""

    def __init__(self, cfg: "SceneWithObject.Config"):
        super().__init__()
        self.cfg = cfg
        self.box = EditBox.parse(cfg.box)
        if not cfg.scene:
            raise ValueError("system.scene is empty: pass the background scene, a 3D Gaussian .ply")
        path = Path(cfg.scene)
        if cfg.scene.startswith("toy:"):  # a toy layout, built offline on first use
            from ..toy.scene_builder import toy_scene_path

            path = toy_scene_path(cfg.scene)
        bg = read_splat_ply(path, cfg.axes)
        means = torch.from_numpy(bg["means"])
        self.box.check_in_scene(means)
        keep = ~self.box.contains(means) if cfg.mode == "replace" else torch.ones(len(means), dtype=torch.bool)
        self.scene_sha256 = file_sha256(path)
        self.removed = int((~keep).sum())
        self.bg_degree = int(bg["sh_degree"])
        pre = {k: torch.from_numpy(bg[k])[keep] for k in ("means", "log_scales", "quats", "logit_opacities", "sh")}
        for k, v in pre.items():  # pre-activation, exactly as read (exports write them back unchanged)
            self.register_buffer(f"bg_{k}", v.contiguous(), persistent=False)
        self.object = Gaussians(cfg.object)
        self._init_object_in_box()

    @torch.no_grad()
    def _init_object_in_box(self) -> None:
        pts, rgb = self.object._initial_points()
        unit = pts / max(self.object.cfg.init_radius, 1e-8)  # in [-1, 1]^3 (box) or the unit ball (sphere)
        self.object._set_points(self.box.center + self.box.half * unit, rgb)

    # ---- sizes --------------------------------------------------------------------------------

    @property
    def num_background(self) -> int:
        return self.bg_means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.object.num_gaussians + self.num_background

    # ---- what the renderer reads ----------------------------------------------------------------

    def activated(self) -> dict:
        o = self.object.activated()
        bg = {"means": self.bg_means, "quats": F.normalize(self.bg_quats, dim=-1), "scales": self.bg_log_scales.exp(),
              "opacities": torch.sigmoid(self.bg_logit_opacities)}
        return {k: torch.cat([o[k], bg[k]]) for k in o}

    def colors(self, cam_positions: torch.Tensor) -> torch.Tensor:
        """[C, N_obj + N_bg, 3]: each part at its own SH degree (3DGS convention)."""
        deg, sh = self.bg_degree, self.bg_sh
        if deg == 0:
            bg = (sh[:, 0] * 0.28209479177387814)[None].expand(cam_positions.shape[0], -1, -1)
        else:
            dirs = F.normalize(self.bg_means[None] - cam_positions[:, None], dim=-1)
            bg = torch.einsum("cnk,nkd->cnd", sh_basis(deg, dirs), sh)
        return torch.cat([self.object.colors(cam_positions), (bg + 0.5).clamp_min(0.0)], 1)

    def normals(self, cam_positions: torch.Tensor) -> torch.Tensor:
        from ..renderers.gaussian_torch import quat_to_rotmat

        R = quat_to_rotmat(self.bg_quats)
        k = self.bg_log_scales.argmin(-1)
        n = torch.gather(R, 2, k[:, None, None].expand(-1, 3, 1)).squeeze(-1)
        to_cam = cam_positions[:, None] - self.bg_means[None]
        bg = n[None] * torch.where((n[None] * to_cam).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        return torch.cat([self.object.normals(cam_positions), bg], 1)

    def extra_features(self, cam_positions: torch.Tensor) -> torch.Tensor:
        """[C, N, 1]: 1 on the object's Gaussians, 0 on the background's (rendered: the object's visible alpha)."""
        ind = torch.cat([torch.ones(self.object.num_gaussians), torch.zeros(self.num_background)]).to(self.bg_means)
        return ind[None, :, None].expand(cam_positions.shape[0], -1, 1)

    def without_object(self) -> "_Background":
        """The scene as it was before the edit, for the renderer (before/after videos)."""
        return _Background(self)

    # ---- exports ----------------------------------------------------------------------------------

    @torch.no_grad()
    def background_splat_data(self) -> dict:
        return {"means": self.bg_means.cpu().clone(), "log_scales": self.bg_log_scales.cpu().clone(),
                "quats": self.bg_quats.cpu().clone(), "logit_opacities": self.bg_logit_opacities.cpu().clone(),
                "sh": self.bg_sh.cpu().clone(), "sh_degree": self.bg_degree}

    @torch.no_grad()
    def splat_data(self) -> dict:
        """The edited scene (object, then background) for the splat exporters; SH padded to the larger degree."""
        o, b = self.object.splat_data(), self.background_splat_data()
        deg = max(o["sh_degree"], b["sh_degree"])
        K = (deg + 1) ** 2
        pad = lambda sh: torch.cat([sh, sh.new_zeros(sh.shape[0], K - sh.shape[1], 3)], 1)  # noqa: E731
        out = {k: torch.cat([o[k], b[k]]) for k in ("means", "log_scales", "quats", "logit_opacities")}
        return {**out, "sh": torch.cat([pad(o["sh"]), pad(b["sh"])]), "sh_degree": deg}

    # ---- training hooks ---------------------------------------------------------------------------

    def param_groups(self) -> list[dict]:
        return self.object.param_groups()

    def bind_optimizer(self, optimizer) -> None:
        self.object.bind_optimizer(optimizer)

    def update_step(self, epoch: int, step: int) -> None:
        self.object.update_step(epoch, step)

    def after_step(self, step: int, render_out) -> None:
        """The object's densification on its own slice of the render's screen-space statistics, then
        the object kept inside the box (``keep_inside``)."""
        self._densify_object(step, render_out)
        self.keep_inside()

    @torch.no_grad()
    def settle(self, min_opacity: float = 0.3) -> float:
        """Move the object down so its lowest splat at least ``min_opacity`` opaque (its filtered 2-sigma
        extent) touches the box's floor; returns the distance moved (0 if it already rests there)."""
        o = self.object
        g = o.activated()
        keep = g["opacities"] >= min(min_opacity, 0.5 * float(g["opacities"].max()))  # a faint object: its most opaque half
        bottom = float((g["means"][keep, 1] - 2 * g["scales"][keep].amax(-1)).min())
        drop = max(0.0, bottom - float(self.box.lo[1]))
        if drop > 0:
            o.params["means"][:, 1] -= drop
            self.keep_inside()
        return drop

    @torch.no_grad()
    def keep_inside(self) -> None:
        """Every object centre projected into the box shrunk by twice the 3D filter's width, and every scale
        capped at a third of the centre's distance to the nearest face: a splat's visible extent (its
        filtered 2-sigma ellipsoid) then ends near the box's faces instead of spilling over the scene
        around it (a cylinder's flat top otherwise bled 5 px past the box in 64 px views)."""
        o = self.object
        m = o.params["means"]
        margin = min(2.0 * o.cfg.min_scale, 0.25 * float(self.box.half.min()))
        lo = torch.tensor(self.box.lo, device=m.device) + margin
        hi = torch.tensor(self.box.hi, device=m.device) - margin
        m.copy_(torch.maximum(torch.minimum(m, hi), lo))
        room = torch.minimum(m - lo + margin, hi + margin - m).amin(-1, keepdim=True)  # distance to the nearest face
        o.params["scales"].copy_(torch.minimum(o.params["scales"], (room / 3).clamp_min(1e-5).log()))

    def _densify_object(self, step: int, render_out) -> None:
        meta = getattr(render_out, "meta", None) or {}
        means2d = meta.get("means2d")
        if means2d is not None and means2d.shape[-2] == self.object.num_gaussians != self.num_gaussians:
            self.object.after_step(step, render_out)  # a render of the object alone (a coarse stage)
            return
        if means2d is None or (means2d.shape[-2] != self.num_gaussians and meta.get("gaussian_ids") is None):
            return  # not a render of the current scene (e.g. an evaluation render after a resize)
        n_obj = self.object.num_gaussians
        self.object.after_step(step, _ObjectRender(object_meta(meta, n_obj)))

    def get_extra_state(self) -> dict:
        return {"scene_sha256": self.scene_sha256}

    def set_extra_state(self, state: dict) -> None:
        saved = state.get("scene_sha256")
        if saved and saved != self.scene_sha256:
            raise ValueError(f"the checkpoint was trained on a different scene file (SHA-256 {saved[:12]}…, now "
                             f"{self.scene_sha256[:12]}… at {self.cfg.scene}); resume with the original scene")


class _Background:
    """Renderer view of a ``SceneWithObject``'s background alone."""

    def __init__(self, scene: SceneWithObject):
        self.scene = scene

    def activated(self) -> dict:
        n = self.scene.object.num_gaussians
        return {k: v[n:] for k, v in self.scene.activated().items()}

    def colors(self, cam_positions):
        return self.scene.colors(cam_positions)[:, self.scene.object.num_gaussians :]

    def normals(self, cam_positions):
        return self.scene.normals(cam_positions)[:, self.scene.object.num_gaussians :]


@dataclass
class _ObjectRender:
    meta: dict


def object_meta(meta: dict, n_obj: int) -> dict:
    """The rasteriser's ``meta`` restricted to Gaussians ``0..n_obj-1`` (the object), gradients included,
    in the layout gsplat's ``DefaultStrategy`` reads (dense ``[C,N,...]`` or packed ``[nnz,...]``)."""
    m = dict(meta)
    means2d = meta.get("means2d")
    if means2d is None or means2d.grad is None:
        return m
    ids: Optional[torch.Tensor] = meta.get("gaussian_ids")
    if ids is not None:
        keep = ids < n_obj
        sel = means2d.detach()[keep]
        sel.grad = means2d.grad[keep]
        for k in ("radii", "camera_ids", "gaussian_ids", "depths", "conics", "opacities"):
            if torch.is_tensor(meta.get(k)) and meta[k].shape[:1] == ids.shape:
                m[k] = meta[k][keep]
    else:
        sel = means2d.detach()[:, :n_obj]
        sel.grad = means2d.grad[:, :n_obj]
        for k in ("radii", "depths", "conics", "opacities"):
            if torch.is_tensor(meta.get(k)) and meta[k].dim() >= 2 and meta[k].shape[1] == means2d.shape[1]:
                m[k] = meta[k][:, :n_obj]
    m["means2d"] = sel
    return m
