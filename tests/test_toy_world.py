"""The toy world's renders match closed-form geometry and an independent ray-intersection check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from threedgen.data.cameras import make_cameras
from threedgen.toy import world as W
from threedgen.toy.render import render_scene, sdf_shape
from threedgen.toy.world import ToyScene, caption, parse_prompt


def _focal(res: int, fovy_deg: float) -> float:
    return 0.5 * res / math.tan(math.radians(fovy_deg) / 2)


def test_sphere_silhouette_radius_matches_closed_form():
    res, fovy, d = 128, 50.0, 1.8
    cams = make_cameras(0.0, 0.0, d, fovy, res, res)
    out = render_scene(ToyScene("sphere", "blue"), cams, ssaa=2)
    r_px = math.sqrt(out["mask"].sum().item() / math.pi)
    R = W.SPHERE_RADIUS
    expected = _focal(res, fovy) * R / math.sqrt(d * d - R * R)
    assert r_px == pytest.approx(expected, rel=0.01)
    # depth at the image centre is the distance to the near surface
    c = out["depth"][0, 0, res // 2 - 1 : res // 2 + 1, res // 2 - 1 : res // 2 + 1].mean().item()
    assert c == pytest.approx(d - R, abs=0.01)


def test_cube_front_view_projects_a_square():
    res, fovy, d = 128, 50.0, 1.9
    out = render_scene(ToyScene("cube", "red"), make_cameras(0.0, 0.0, d, fovy, res, res), ssaa=2)
    half = _focal(res, fovy) * W.CUBE_HALF / (d - W.CUBE_HALF)  # the front face hides the rest
    assert out["mask"].sum().item() == pytest.approx((2 * half) ** 2, rel=0.02)
    rows = (out["mask"][0, 0] > 0.5).any(dim=1).sum().item()
    cols = (out["mask"][0, 0] > 0.5).any(dim=0).sum().item()
    assert abs(rows - 2 * half) <= 1.5 and abs(cols - 2 * half) <= 1.5


def test_cylinder_and_cone_side_view_extents():
    res, fovy, d = 160, 50.0, 1.8
    f = _focal(res, fovy)
    cams = make_cameras(0.0, 90.0, d, fovy, res, res)
    cyl = render_scene(ToyScene("cylinder", "green"), cams, ssaa=2)["mask"][0, 0] > 0.5
    width = cyl[res // 2].sum().item()  # the widest row: tangents to the circle of radius r
    assert width == pytest.approx(2 * f * W.CYLINDER_RADIUS / math.sqrt(d**2 - W.CYLINDER_RADIUS**2), abs=1.5)
    height = cyl[:, res // 2].sum().item()  # the near rim bounds the centre column
    assert height == pytest.approx(2 * f * W.CYLINDER_HALF_HEIGHT / (d - W.CYLINDER_RADIUS), abs=1.5)
    cone = render_scene(ToyScene("cone", "yellow"), cams, ssaa=2)["mask"][0, 0] > 0.5
    h = W.CONE_HALF_HEIGHT
    expected = f * h / d + f * h / (d - W.CONE_BASE_RADIUS)  # apex on the axis + near point of the base rim
    assert cone[:, res // 2].sum().item() == pytest.approx(expected, abs=1.5)


def _reference_hits(shape: str, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Independent exact ray intersections (slabs, quadratics, the torus quartic) in float64 numpy."""
    hits = np.zeros(len(o), dtype=bool)
    for k, (oo, dd) in enumerate(zip(o, d)):
        if shape == "cube":
            with np.errstate(divide="ignore", invalid="ignore"):
                t1, t2 = (-W.CUBE_HALF - oo) / dd, (W.CUBE_HALF - oo) / dd
            hits[k] = np.nanmax(np.minimum(t1, t2)) <= np.nanmin(np.maximum(t1, t2))
        elif shape == "sphere":
            b, c = oo @ dd, oo @ oo - W.SPHERE_RADIUS**2
            hits[k] = b * b - c >= 0
        elif shape in ("cylinder", "cone"):
            # side surface: x^2 + z^2 = rho(y)^2 with rho linear in y; plus the bottom (and top) caps
            ts = []
            h = W.CYLINDER_HALF_HEIGHT if shape == "cylinder" else W.CONE_HALF_HEIGHT
            if shape == "cylinder":
                r0, slope = W.CYLINDER_RADIUS, 0.0
            else:
                r0, slope = W.CONE_BASE_RADIUS / 2, -W.CONE_BASE_RADIUS / (2 * h)  # rho(y) = r0 + slope*y
            a = dd[0] ** 2 + dd[2] ** 2 - (slope * dd[1]) ** 2
            b = 2 * (oo[0] * dd[0] + oo[2] * dd[2] - (r0 + slope * oo[1]) * slope * dd[1])
            c = oo[0] ** 2 + oo[2] ** 2 - (r0 + slope * oo[1]) ** 2
            for t in np.roots([a, b, c]):
                if abs(t.imag) < 1e-9:
                    y = oo[1] + t.real * dd[1]
                    if -h <= y <= h and r0 + slope * y >= 0:
                        ts.append(t.real)
            for yc in (-h, h):
                if abs(dd[1]) > 1e-12:
                    t = (yc - oo[1]) / dd[1]
                    p = oo + t * dd
                    if p[0] ** 2 + p[2] ** 2 <= (r0 + slope * yc) ** 2:
                        ts.append(t)
            hits[k] = any(t > 0 for t in ts)
        elif shape == "torus":
            R, r = W.TORUS_MAJOR, W.TORUS_MINOR
            # (|p|^2 + R^2 - r^2)^2 = 4 R^2 (x^2 + z^2), p = o + t d
            s = np.polynomial.polynomial
            pp = s.polyadd(s.polyadd(s.polymul([oo[0], dd[0]], [oo[0], dd[0]]), s.polymul([oo[1], dd[1]], [oo[1], dd[1]])),
                           s.polymul([oo[2], dd[2]], [oo[2], dd[2]]))
            xz = s.polyadd(s.polymul([oo[0], dd[0]], [oo[0], dd[0]]), s.polymul([oo[2], dd[2]], [oo[2], dd[2]]))
            lhs = s.polypow(s.polyadd(pp, [R * R - r * r]), 2)
            poly = s.polysub(lhs, 4 * R * R * xz)
            roots = s.polyroots(poly)
            hits[k] = any(abs(t.imag) < 1e-6 and t.real > 0 for t in roots)
    return hits


@pytest.mark.parametrize("shape", W.SHAPES)
def test_silhouette_matches_independent_ray_intersection(shape):
    res = 40
    cams = make_cameras([20.0, -5.0, 70.0], [30.0, 135.0, -100.0], 1.7, 55.0, res, res)
    mask = render_scene(ToyScene(shape, "purple"), cams)["mask"] > 0.5
    o, d = cams.rays()
    ref = _reference_hits(shape, o.reshape(-1, 3).double().numpy(), d.reshape(-1, 3).double().numpy())
    ref = torch.from_numpy(ref).view(3, res, res)
    bad = (mask[:, 0] != ref).nonzero().tolist()
    assert len(bad) <= 0.01 * ref.sum().item(), f"{shape}: {len(bad)} of {ref.sum().item()} silhouette pixels disagree"
    for b, i, j in bad:  # only grazing rays may disagree: they pass within the tracer's tolerance of the surface
        ts = torch.linspace(0, 4, 40001, dtype=torch.float64)
        p = o[b, i, j].double() + ts[:, None] * d[b, i, j].double()
        assert sdf_shape(shape, p).min().abs() < 1e-3


def test_shading_formula_on_the_sphere():
    """A pixel whose normal faces the light gets albedo * (ambient + 0.65); the unlit side gets ambient."""
    l = torch.tensor(W.LIGHT_DIR)
    el = math.degrees(math.asin(l[1].item()))
    az = math.degrees(math.atan2(l[0].item(), l[2].item()))
    res = 65
    out = render_scene(ToyScene("sphere", "red"), make_cameras(el, az, 3.0, 30.0, res, res))
    centre = out["rgb"][0, :, res // 2, res // 2]
    assert torch.allclose(centre, torch.tensor(W.COLOURS["red"]), atol=0.02)
    back = render_scene(ToyScene("sphere", "red"), make_cameras(-el, az + 180, 3.0, 30.0, res, res))
    assert torch.allclose(back["rgb"][0, :, res // 2, res // 2], W.AMBIENT * torch.tensor(W.COLOURS["red"]), atol=0.02)
    assert out["rgb"][0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # white background


def _marker_pixels(rgb, mask):
    """White-ish object pixels (a red object has g < 0.1, so g > 0.3 on the object is the marker)."""
    return ((rgb[:, 1] > 0.3) & (mask[:, 0] > 0.99)).sum(dim=(1, 2))


def test_marker_visible_from_front_hidden_from_back():
    for shape in W.SHAPES:
        cams = make_cameras(10.0, [0.0, 180.0], 1.8, 50.0, 64, 64)
        out = render_scene(ToyScene(shape, "red", marker=True), cams)
        n_front, n_back = _marker_pixels(out["rgb"], out["mask"]).tolist()
        assert n_front > 15, shape
        assert n_back == 0, shape
        assert out["marker"][0].sum() > 15 and out["marker"][1].sum() == 0  # the marker-coverage output agrees
        plain = render_scene(ToyScene(shape, "red"), cams)
        assert _marker_pixels(plain["rgb"], plain["mask"]).sum() == 0


def test_supersampling_antialiases_edges():
    cams = make_cameras(15.0, 30.0, 1.8, 50.0, 32, 32)
    hard = render_scene(ToyScene("cube", "green"), cams)["mask"]
    soft = render_scene(ToyScene("cube", "green"), cams, ssaa=2)["mask"]
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).sum() > 20


def test_batched_render_mixes_scenes():
    scenes = [ToyScene(s, c) for s, c in zip(W.SHAPES, W.COLOUR_NAMES)]
    cams = make_cameras(20.0, torch.linspace(-90, 90, 5), 1.8, 50.0, 24, 24)
    out = render_scene(scenes, cams)
    assert out["rgb"].shape == (5, 3, 24, 24) and out["mask"].shape == (5, 1, 24, 24)
    for i, sc in enumerate(scenes):
        single = render_scene(sc, cams[i])
        assert torch.allclose(single["rgb"][0], out["rgb"][i])


# --- prompts -------------------------------------------------------------------------------------


def test_parse_prompt_round_trips_every_caption():
    for sc in W.all_scenes():
        assert parse_prompt(caption(sc)) == sc
        for v in ("front", "side", "back", "overhead"):
            assert parse_prompt(caption(sc, v)) == sc
    assert parse_prompt("an orange cube") == ToyScene("cube", "orange")
    assert parse_prompt("A Red Torus With a White Dot, back view") == ToyScene("torus", "red", True)
    assert caption(ToyScene("cone", "orange", True), "front") == "an orange cone with a white dot, front view"


def test_parse_prompt_errors_name_unknown_words_and_vocabulary():
    with pytest.raises(ValueError) as e:
        parse_prompt("a ceramic owl")
    msg = str(e.value)
    assert "ceramic" in msg and "owl" in msg and "torus" in msg and "purple" in msg
    with pytest.raises(ValueError, match="does not match"):
        parse_prompt("a cube red")
    with pytest.raises(ValueError, match="unknown view"):
        caption(ToyScene("cube", "red"), "diagonal")
