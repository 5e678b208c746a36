"""``system: edit`` — the generation system on a frozen Gaussian scene with one object to insert.

What differs from ``GenerationSystem`` (everything else — guidances, schedules, stages,
checkpoints — is inherited unchanged):

- the representation is ``SceneWithObject``: ``system.scene`` (a 3DGS PLY) frozen, and the
  object's Gaussians (``system.representation``, a ``gaussians`` spec) filling ``system.edit.box``;
- every camera orbits the box centre (``data.center`` is set to it);
- each training render carries an edit mask (``GuidanceInput.mask``): the box's silhouette or the
  object's visible alpha, dilated (``edit.mask``), which DI-SDS needs;
- start-up checks (before any file is written): the scene is a Gaussian PLY, the box is sane and
  in the scene, and some training view sees the box unoccluded; the anchor view is proposed and
  reported;
- the export adds the inserted object alone (``export/object/``: its splats and mesh, centred on
  the box centre, with ``placement.json`` saying where it sits in the scene).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from ..config import ModuleSpec, module
from ..data.cameras import RandomCameraSampler
from ..guidance.base import GuidanceInput
from ..systems.generation import GenerationSystem
from .box import EditBox
from .scene import SceneWithObject
from .views import alpha_mask, box_mask, dilate, propose_anchor, score_views

log = logging.getLogger("threedgen")


@dataclass
class EditConfig:
    box: tuple[float, float, float, float, float, float] = (-0.25, -0.25, -0.25, 0.25, 0.25, 0.25)
    """The edit box [x0,y0,z0,x1,y1,z1] in world units (+Y up, after ``axes``)."""
    axes: Literal["rdf", "rub"] = "rdf"
    """The scene file's axes: rdf (COLMAP/INRIA captures, y down; this project's own PLY export) or rub (+Y up)."""
    mode: Literal["insert", "replace"] = "insert"
    """insert: keep the scene inside the box; replace: remove the scene's Gaussians centred in it."""
    mask: Literal["box", "alpha"] = "box"
    """Edit mask per view: the box's silhouette, or the object's visible alpha (both dilated by ``dilate_px``)."""
    dilate_px: int = 2
    anchor_views: int = 12
    """Azimuths per elevation (0, 15, 30, 45°) scored for the anchor view at start-up; 0 skips the proposal."""
    render: Literal["scene", "object"] = "scene"
    """What training renders show: the edited scene (DI-SDS), or the object alone over the background
    colour (a coarse stage with plain SDS and a text-to-image prior; no edit mask then)."""
    settle: bool = True
    """Before training on the scene, move the object straight down until its lowest opaque splat rests on the
    box's floor (an object made alone floats wherever SDS put it; a flat torus mid-box)."""


class EditSystem(GenerationSystem):
    @dataclass
    class Config(GenerationSystem.Config):
        scene: str = ""
        """The background scene: an INRIA-layout 3D Gaussian PLY (ours or a third party's, SH degree 0-3)."""
        edit: EditConfig = field(default_factory=EditConfig)
        representation: ModuleSpec = module("representation", "gaussians", init="box", num_points=2048)
        """The inserted object's Gaussians (``init`` box or sphere fills the edit box)."""
        renderer: ModuleSpec = module("renderer", "gaussian")

    def __init__(self, cfg: "EditSystem.Config", cameras, seed: int = 0):
        if cfg.representation.name != "gaussians":
            raise ValueError(f"system.representation must be gaussians for a scene edit (the object's Gaussians), got {cfg.representation.name!r}")
        if cfg.particles != 1:
            raise ValueError(f"a scene edit trains one object: system.particles must be 1, got {cfg.particles}")
        box = EditBox.parse(cfg.edit.box)
        cameras = replace(cameras, center=tuple(float(x) for x in box.center))
        e = cfg.edit
        # every check on the scene, the box and the views runs before super() loads the priors
        scene = SceneWithObject(SceneWithObject.Config(scene=cfg.scene, axes=e.axes, box=tuple(e.box), mode=e.mode,
                                                       object=cfg.representation.cfg))
        probe, background = cfg.renderer.build(), cfg.background.build()  # probe: the training renderer logs its own backend

        def render_scene(cams):
            with torch.no_grad():
                return probe(scene, cams, background)

        level = log.level
        log.setLevel(logging.WARNING)  # a bad box must print one line, not the renderer's start-up notes first
        try:
            _check_views_see_the_box(render_scene, RandomCameraSampler(cameras, seed), box)
        finally:
            log.setLevel(level)
        anchor = _propose_anchor(render_scene, box, cameras, cfg) if e.anchor_views > 0 else (None, None)
        log.info("edit scene: %d background Gaussians (SH degree %d%s) from %s; object of %d Gaussians in box %s..%s",
                 scene.num_background, scene.bg_degree, f", {scene.removed} removed from the box" if scene.removed else "",
                 cfg.scene, scene.object.num_gaussians, list(box.lo), list(box.hi))
        super().__init__(cfg, cameras, seed)
        self.representation, self.background = scene, background
        self.box = box
        self.anchor, self.anchor_camera = anchor

    # ---- training -----------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.cfg.edit.settle and self.cfg.edit.render == "scene":
            drop = self.representation.settle()
            if drop > 1e-6:
                log.info("edit: object settled %.3f down onto the box floor", drop)

    def edit_mask(self, out, cameras) -> torch.Tensor:
        """[B,1,H,W] where the guidance may change the render (see ``EditConfig.mask``)."""
        e = self.cfg.edit
        if e.mask == "alpha":
            return alpha_mask(out.meta["extra"], e.dilate_px)
        return dilate(box_mask(cameras, self.box).to(out.rgb.device), e.dilate_px)

    def render(self, cameras, shading=None, particle: int = 0):
        if self.cfg.edit.render == "object":
            return self.renderer(self.representation.object, cameras, self.background, shading=shading)
        return super().render(cameras, shading, particle)

    def guidance_input(self, out, cameras) -> GuidanceInput:
        inp = super().guidance_input(out, cameras)
        if self.cfg.edit.render == "scene":
            inp.mask = self.edit_mask(out, cameras)
        return inp

    @torch.no_grad()
    def before_after(self, cameras):
        """Per camera, the scene before the edit and after it (eval mode): two ``[N,3,H,W]`` tensors."""
        was = self.training
        self.eval()
        try:
            before = [self.renderer(self.representation.without_object(), c, self.background).rgb
                      for c in (cameras[i : i + 4].to(self.device) for i in range(0, len(cameras), 4))]
            after = [self.renderer(self.representation, c, self.background).rgb
                     for c in (cameras[i : i + 4].to(self.device) for i in range(0, len(cameras), 4))]
        finally:
            self.train(was)
        return torch.cat(before).cpu(), torch.cat(after).cpu()

    @torch.no_grad()
    def anchor_view(self, resolution: int) -> torch.Tensor | None:
        """``[3,H,3W]``: from the proposed anchor view, the scene before the edit with the box's
        silhouette tinted, before, and after (None when the proposal was skipped)."""
        if self.anchor_camera is None:
            return None
        cam = self.anchor_camera.with_resolution(resolution, resolution)
        before, after = self.before_after(cam)
        box = box_mask(cam, self.box).cpu()[0]
        tint = before[0] * (1 - 0.5 * box) + 0.5 * box * torch.tensor([1.0, 0.2, 0.2])[:, None, None]
        return torch.cat([tint, before[0], after[0]], -1)

    # ---- export -------------------------------------------------------------------------------

    def object_alone(self):
        """A copy of the inserted object's Gaussians moved so the box centre is the origin."""
        obj = copy.deepcopy(self.representation.object)
        with torch.no_grad():
            obj.params["means"] -= self.box.center.to(obj.params["means"])
        return obj

    def placement(self) -> bytes:
        return json.dumps({
            "translation": [float(x) for x in self.box.center], "axes": "world, +Y up, metres",
            "box": {"lo": list(self.box.lo), "hi": list(self.box.hi)}, "scene": self.cfg.scene,
            "scene_sha256": self.representation.scene_sha256, "anchor": self.anchor,
            "note": "the object's files are centred on the box centre; translate them by 'translation' to place them in the scene",
        }, indent=2).encode()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["threedgen"]["edit"] = {"scene": self.cfg.scene, "box": list(self.cfg.edit.box)}


def _check_views_see_the_box(render_scene, sampler, box: EditBox) -> None:
    cams = sampler.sample(0, batch_size=32)
    scores = score_views(render_scene, cams.with_resolution(min(cams.width, 64), min(cams.height, 64)), box)
    if max(s.visible * s.area for s in scores) <= 0:
        raise ValueError(f"no training view sees the edit box {list(box.lo)}..{list(box.hi)}: it is off-frame or "
                         "behind scene content from every sampled camera; check data.distance_range / elevation_range or move the box")


def _propose_anchor(render_scene, box: EditBox, cameras, cfg) -> tuple[dict, object]:
    """The anchor view (``views.propose_anchor`` at the evaluation distance and field of view), logged."""
    best, scores, cams = propose_anchor(render_scene, box, distance=float(cameras.eval_distance), fovy=float(cameras.eval_fovy),
                                        resolution=64, n_azimuth=int(cfg.edit.anchor_views))  # 64 px ranks views well enough
    s = scores[best]
    anchor = {"elevation": s.elevation, "azimuth": s.azimuth, "score": s.score, "visible": s.visible, "area": s.area,
              "context": s.context}
    log.info("edit: anchor view elevation %.0f°, azimuth %.0f° (box %.0f%% unoccluded, %.1f%% of the frame, context %.2f)",
             s.elevation, s.azimuth, 100 * s.visible, 100 * s.area, s.context)
    return anchor, cams[best : best + 1]
