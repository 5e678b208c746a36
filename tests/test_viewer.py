"""viewer.html (threedgen/export/viewer.py) opened from disk in headless Chromium (tests/browser.py).

The exports are real (``runner.export`` on a Gaussian scene and on a moving one, no training): a grey cube
with a red arm towards +x, a green post towards +y and a blue disc on its front (+z), built of long,
rotated Gaussians, so a page that mirrors, turns upside down or mishandles rotations shows it in the
colours' places. Screenshots go to test-artifacts/.
"""

import base64
import json
import math
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from browser import browser_fixture, save_screenshot, screenshot_rgb
from export_fixtures import cfg, read_glb
from threedgen.config import ConfigError, ExportConfig, from_dict
from threedgen.export.viewer import viewer_html, with_viewer
from threedgen.systems import runner

browser = browser_fixture(scope="module", webgl=True)
BACKGROUND = np.array([245, 245, 245])  # the page's clear colour, 0.96


# ---- scenes -------------------------------------------------------------------------------------


def _quat_about(axis, degrees):
    h = math.radians(degrees) / 2
    return [math.cos(h)] + [math.sin(h) * a for a in axis]


def _line(direction, start, stop, n):
    d = torch.tensor(direction, dtype=torch.float32)
    return torch.linspace(start, stop, n)[:, None] * d / d.norm()


def marker_scene(rep):
    """Overwrite ``rep``'s Gaussians: a grey 0.4 m cube of round ones; a red arm of long ones towards +x
    (tilted 30° to +z), a green post towards +y (leaning 25° to +x), a flat blue disc on the +z face."""
    ax = torch.linspace(-0.2, 0.2, 6)
    body = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).view(-1, 3)
    c30, s30, c25, s25 = math.cos(math.radians(30)), math.sin(math.radians(30)), math.cos(math.radians(25)), math.sin(math.radians(25))
    parts = [  # points, colour, scale, quaternion (w, x, y, z)
        (body, [0.55, 0.55, 0.6], [0.05, 0.05, 0.05], [1, 0, 0, 0]),
        (_line([c30, 0, s30], 0.28, 0.55, 4), [0.9, 0.1, 0.1], [0.07, 0.025, 0.025], _quat_about([0, 1, 0], -30)),
        (_line([s25, c25, 0], 0.28, 0.55, 4), [0.1, 0.75, 0.1], [0.07, 0.025, 0.025], _quat_about([0, 0, 1], 65)),
        (torch.tensor([[0.0, 0.0, 0.26]]), [0.1, 0.2, 0.9], [0.09, 0.09, 0.02], [1, 0, 0, 0]),
    ]
    rep._set_points(torch.cat([p for p, *_ in parts]), torch.cat([torch.tensor(c).expand(len(p), 3) for p, c, _, _ in parts]),
                    scale=0.05, opacity=0.9)
    with torch.no_grad():
        rep.params["scales"].copy_(torch.cat([torch.tensor(s).log().expand(len(p), 3) for p, _, s, _ in parts]))
        rep.params["quats"].copy_(torch.cat([torch.tensor(q, dtype=torch.float32).expand(len(p), 4) for p, _, _, q in parts]))
    return rep


class MovingScene(torch.nn.Module):
    """What ``runner.export`` needs of a system: dynamic Gaussians (the marker scene sliding 0.22 m along +x
    over the clip) and their renderer for the solid mesher."""

    def __init__(self):
        from threedgen.renderers.gaussian import GaussianRenderer
        from threedgen.representations.dynamic_gaussians import DynamicGaussians

        super().__init__()
        small = {"resolutions": [4], "time_resolution": 4, "features": 4, "mlp_width": 8}
        rep = marker_scene(DynamicGaussians(from_dict(DynamicGaussians.Config, {"init": "box", "num_points": 10, "deformation": small})))
        f = rep.deformation
        with torch.no_grad():  # features s^3 everywhere in space, s going 0.5 -> 1.5 over the clip
            for spatial, temporal in zip(f.spatial, f.temporal):
                spatial.fill_(1.0)
                temporal.copy_(torch.linspace(0.5, 1.5, temporal.shape[2])[None, None, :, None].expand_as(temporal))
            f.trunk[0].weight.fill_(1.0 / f.trunk[0].in_features)
            f.trunk[0].bias.zero_()
            f.heads["dx"].weight.zero_()
            f.heads["dx"].weight[0] = 0.15 / f.trunk[0].out_features  # dx = 0.5 tanh(0.15 s^3): 0.01 m -> 0.23 m along +x
        self.representation, self.renderer, self.device = rep, GaussianRenderer(GaussianRenderer.Config()), torch.device("cpu")


@pytest.fixture(scope="module", params=["rdf", "rub"])
def static_export(request, tmp_path_factory):
    from threedgen.representations.gaussians import Gaussians

    rep = marker_scene(Gaussians(from_dict(Gaussians.Config, {"init": "box", "num_points": 10})))
    c = cfg(texture_size=256, splat_axes=request.param, formats=["glb", "splat", "viewer"])
    run = tmp_path_factory.mktemp(f"viewer-{request.param}")
    paths = runner.export(SimpleNamespace(representation=rep), SimpleNamespace(export=c), run)
    assert sorted(p.name for p in paths) == ["gaussians.splat", "model.glb", "viewer.html"]
    return request.param, run / "export"


@pytest.fixture(scope="module")
def moving_export(tmp_path_factory):
    c = from_dict(ExportConfig, {"views": 24, "view_resolution": 64, "resolution": 48, "refine_steps": 5, "texture_fit_steps": 0,
                                 "texture_size": 128, "frames": 4, "fps": 2, "formats": ["glb", "splat", "viewer"]})
    run = tmp_path_factory.mktemp("viewer-moving")
    names = [p.name for p in runner.export(MovingScene(), SimpleNamespace(export=c), run)]
    assert "viewer.html" in names and "manifest.json" in names
    return run / "export"


# ---- page helpers -------------------------------------------------------------------------------


def open_viewer(driver, path, timeout=60.0):
    """Load the page from disk; wait for its first frame or its error; returns (stats, error)."""
    driver.get(path.resolve().as_uri())
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, stats, error = driver.execute_script("return [window.viewerReady === true, window.viewerStats || null, window.viewerError || null]")
        if ready or error:
            return stats, error
        time.sleep(0.05)
    raise AssertionError(f"{path.name} drew no frame and reported no error in {timeout:.0f} s")


def wait_for(driver, script, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if driver.execute_script(script):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def middle(img):
    """The central part of the viewport (leaves out the buttons and the info line)."""
    h, w = img.shape[:2]
    return img[h // 10 : h - h // 10, w // 6 : w - w // 6].astype(np.int32)


def object_mask(img):
    return np.abs(middle(img) - BACKGROUND).sum(-1) > 30


def centroid(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else None


def colour_masks(img):
    r, g, b = np.moveaxis(middle(img), -1, 0)
    return {"red": (r > 150) & (g < 110) & (b < 110), "green": (g > 110) & (r < 110) & (b < 110), "blue": (b > 140) & (r < 110) & (g < 140)}


def check_marker_layout(img, label):
    """The object fills a sensible part of the middle, and its markers sit where +x, +y and +z put them:
    green (+y) above the centre, red (+x) right of it (the camera looks from the front-right, +Y up)."""
    mask = object_mask(img)
    assert 0.03 < mask.mean() < 0.6, f"{label}: {mask.mean():.3f} of the middle is object"
    colours = colour_masks(img)
    for name, m in colours.items():
        assert m.sum() > 100, f"{label}: only {m.sum()} {name} pixels: the texture/colours are missing"
    centre = centroid(mask)
    red, green = centroid(colours["red"]), centroid(colours["green"])
    assert green[1] < centre[1] - 40, f"{label}: the +y post is not above the centre ({green} vs {centre}): upside down?"
    assert red[0] > centre[0] + 40, f"{label}: the +x arm is not right of the centre ({red} vs {centre}): mirrored?"
    return mask, {k: centroid(m) for k, m in colours.items()}


CANVAS_CENTROID_X = """
const canvas = document.getElementById("view"), gl = canvas.getContext("webgl2"), w = canvas.width, h = canvas.height;
const px = new Uint8Array(w * h * 4);
gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
let sum = 0, n = 0;
for (let i = 0; i < w * h; i++) {
  if (Math.abs(px[4 * i] - 245) + Math.abs(px[4 * i + 1] - 245) + Math.abs(px[4 * i + 2] - 245) > 30) { sum += i % w; n++; }
}
return n ? sum / n : null;
"""  # the object's mean pixel column in the last frame drawn (kept: preserveDrawingBuffer)


def glb_counts(path):
    gltf, _ = read_glb(path)
    prim = gltf["meshes"][0]["primitives"][0]
    return (gltf["accessors"][prim["attributes"]["POSITION"]]["count"], gltf["accessors"][prim["indices"]]["count"] // 3,
            len(prim.get("targets", [])))


# ---- the page in a browser ----------------------------------------------------------------------


def test_mesh_and_splats_show_the_scene_the_same_way_up(browser, static_export):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    axes, folder = static_export
    stats, error = open_viewer(browser, folder / "viewer.html")
    assert error is None
    vertices, triangles, _ = glb_counts(folder / "model.glb")
    n_splats = (folder / "gaussians.splat").stat().st_size // 32
    assert stats["mode"] == "mesh" and (stats["vertices"], stats["triangles"], stats["splats"], stats["morphTargets"]) == (vertices, triangles, n_splats, 0)
    save_screenshot(browser, f"viewer-{axes}-mesh")
    mesh_mask, mesh_marks = check_marker_layout(screenshot_rgb(browser), f"mesh ({axes})")

    browser.find_element("id", "mode-splats").click()
    wait_for(browser, "return window.viewerStats.mode === 'splats'")
    save_screenshot(browser, f"viewer-{axes}-splats")
    splat_mask, splat_marks = check_marker_layout(screenshot_rgb(browser), f"splats ({axes})")
    iou = (mesh_mask & splat_mask).sum() / (mesh_mask | splat_mask).sum()
    assert iou > 0.6, f"mesh and splats cover different pixels (IoU {iou:.2f})"
    for name in ("red", "green", "blue"):  # each marker in the same place in both views
        assert np.linalg.norm(mesh_marks[name] - splat_marks[name]) < 30, (name, mesh_marks[name], splat_marks[name])

    canvas = browser.find_element("id", "view")
    before = browser.execute_script("return window.viewerStats.frames")
    ActionChains(browser).click_and_hold(canvas).move_by_offset(150, 0).release().perform()  # orbit: the view turns
    wait_for(browser, f"return window.viewerStats.frames > {before}")
    turned = object_mask(screenshot_rgb(browser))
    assert (turned != splat_mask).mean() > 0.01
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 400).perform()  # zoom out
    time.sleep(0.5)
    zoomed = object_mask(screenshot_rgb(browser))
    assert zoomed.sum() < 0.8 * turned.sum(), (zoomed.sum(), turned.sum())


def test_animated_glb_plays_its_morph_targets_in_a_loop(browser, moving_export):
    stats, error = open_viewer(browser, moving_export / "viewer.html")
    assert error is None
    vertices, triangles, targets = glb_counts(moving_export / "model.glb")
    assert targets == 3 and stats["morphTargets"] == 3 and (stats["vertices"], stats["triangles"]) == (vertices, triangles)
    assert stats["splats"] == (moving_export / "gaussians.splat").stat().st_size // 32
    xs, start = [], browser.execute_script("return window.viewerStats.frames")
    for k in range(12):  # the clip is 1.5 s long (4 frames at 2 fps); the scene slides 0.22 m along +x
        xs.append(browser.execute_script(CANVAS_CENTROID_X))
        if k % 6 == 0:
            save_screenshot(browser, f"viewer-animated-{k // 6}")
        time.sleep(0.1)
    assert browser.execute_script("return window.viewerStats.frames") > start + 5  # it keeps drawing without input
    assert max(xs) - min(xs) > 15, xs
    browser.find_element("id", "mode-splats").click()
    wait_for(browser, "return window.viewerStats.mode === 'splats'")
    save_screenshot(browser, "viewer-animated-splats")
    assert object_mask(screenshot_rgb(browser)).mean() > 0.03


def test_a_scene_edit_gets_a_page_of_the_edited_scene_alone(browser, tmp_path):
    """runner.export's scene-edit branch: the top level has the edited scene's splats (no mesh of a whole
    captured scene), so its page shows splats and needs no buttons; export/object/ gets no page."""
    from threedgen.representations.gaussians import Gaussians

    scene, obj = (marker_scene(Gaussians(from_dict(Gaussians.Config, {"init": "box", "num_points": 10}))) for _ in range(2))
    system = SimpleNamespace(representation=scene, object_alone=lambda: obj, placement=lambda: b"{}\n")
    paths = runner.export(system, SimpleNamespace(export=cfg(formats=["glb", "splat", "viewer"])), tmp_path)
    folder = tmp_path / "export"
    assert sorted(p.relative_to(folder).as_posix() for p in paths) == [
        "gaussians.splat", "object/gaussians.splat", "object/model.glb", "object/placement.json", "viewer.html"]
    stats, error = open_viewer(browser, folder / "viewer.html")
    assert error is None and stats["mode"] == "splats" and stats["vertices"] == 0
    assert stats["splats"] == (folder / "gaussians.splat").stat().st_size // 32
    assert browser.find_elements("css selector", "#bar button") == []
    save_screenshot(browser, "viewer-edit-splats")
    check_marker_layout(screenshot_rgb(browser), "a scene edit's splats")


def pack_glb(gltf: dict, binary: bytes) -> bytes:
    import struct

    js = json.dumps(gltf).encode()
    js += b" " * (-len(js) % 4)
    binary += b"\0" * (-len(binary) % 4)
    return b"".join([struct.pack("<III", 0x46546C67, 2, 28 + len(js) + len(binary)), struct.pack("<II", len(js), 0x4E4F534A), js,
                     struct.pack("<II", len(binary), 0x004E4942), binary])


def test_node_transforms_place_the_mesh(browser, static_export, tmp_path):
    """The marker mesh under a parent node turned 180° about z: the +y post now points down, the +x arm left."""
    axes, folder = static_export
    gltf, binary = read_glb(folder / "model.glb")
    gltf["nodes"].append({"name": "turned", "rotation": [0.0, 0.0, 1.0, 0.0], "children": [0]})
    gltf["scenes"] = [{"nodes": [len(gltf["nodes"]) - 1]}]
    page = tmp_path / "viewer.html"
    page.write_bytes(viewer_html({"model.glb": pack_glb(gltf, binary)}, splat_axes=axes))
    _, error = open_viewer(browser, page)
    assert error is None
    img = screenshot_rgb(browser)
    save_screenshot(browser, "viewer-node-turned")
    centre, colours = centroid(object_mask(img)), colour_masks(img)
    assert centroid(colours["green"])[1] > centre[1] + 40 and centroid(colours["red"])[0] < centre[0] - 40


def test_a_plain_glb_without_normals_indices_or_texture(browser, tmp_path):
    """What other tools write: a non-indexed red box (baseColorFactor only, no NORMAL) scaled by a node matrix."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    positions = corners[[i for a, b, c, d in quads for i in (a, b, c, a, c, d)]]
    gltf = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}],
            "nodes": [{"matrix": [0.3, 0, 0, 0, 0, 0.2, 0, 0, 0, 0, 0.1, 0, 0.5, 0, 0, 1], "mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "material": 0}]}],
            "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [0.8, 0.05, 0.05, 1.0]}}],
            "accessors": [{"bufferView": 0, "componentType": 5126, "count": len(positions), "type": "VEC3",
                           "min": [-1, -1, -1], "max": [1, 1, 1]}],
            "bufferViews": [{"buffer": 0, "byteLength": positions.nbytes}], "buffers": [{"byteLength": positions.nbytes}]}
    page = tmp_path / "viewer.html"
    page.write_bytes(viewer_html({"model.glb": pack_glb(gltf, positions.tobytes())}))
    stats, error = open_viewer(browser, page)
    assert error is None and (stats["vertices"], stats["triangles"], stats["splats"]) == (36, 12, 0)
    img = screenshot_rgb(browser)
    save_screenshot(browser, "viewer-plain-box")
    assert 0.03 < object_mask(img).mean() < 0.6 and colour_masks(img)["red"].sum() > 1000


CORRUPT = {
    "garbage": lambda glb: b"not a glb at all" * 10,
    "truncated": lambda glb: glb[:4000],
    "bad-json": lambda glb: glb[:20] + b"}{][" + glb[24:],
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_glb_gives_one_visible_error_line(browser, static_export, tmp_path, kind):
    axes, folder = static_export
    page = tmp_path / "viewer.html"
    page.write_bytes(viewer_html({"model.glb": CORRUPT[kind]((folder / "model.glb").read_bytes())}, splat_axes=axes))
    stats, error = open_viewer(browser, page)
    assert stats is None and error
    box = browser.find_element("id", "error")
    assert box.is_displayed() and "model.glb" in box.text and "\n" not in box.text
    assert box.size["height"] < 40  # one line
    save_screenshot(browser, f"viewer-corrupt-glb-{kind}")


def test_a_corrupt_splat_file_is_reported_and_the_mesh_still_shown(browser, static_export, tmp_path):
    axes, folder = static_export
    page = tmp_path / "viewer.html"
    page.write_bytes(viewer_html({"model.glb": (folder / "model.glb").read_bytes(), "gaussians.splat": b"\0" * 33}, splat_axes=axes))
    _, error = open_viewer(browser, page)
    wait_for(browser, "return window.viewerReady === true")
    assert "gaussians.splat" in error
    assert "gaussians.splat" in browser.find_element("id", "error").text
    assert browser.execute_script("return window.viewerStats.mode") == "mesh"
    check_marker_layout(screenshot_rgb(browser), "mesh beside a corrupt splat file")


# ---- the page itself ----------------------------------------------------------------------------


def test_the_page_is_self_contained_and_embeds_the_exported_bytes(static_export):
    _, folder = static_export
    html = (folder / "viewer.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    loads = [r"<\w+[^>]*\s(src|href)\s*=", r"\.(src|href)\s*=", r"\bfetch\s*\(", r"\bimport\s*\(", r"^\s*import\s", r"XMLHttpRequest",
             r"\bWorker\s*\(", r"<link\b", r"@import", r"\burl\s*\("]  # anything that could load another file
    assert [p for p in loads if re.search(p, html, re.M)] == []
    data = json.loads(re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', html, re.S).group(1))
    assert base64.b64decode(data["glb"]) == (folder / "model.glb").read_bytes()
    assert base64.b64decode(data["splat"]) == (folder / "gaussians.splat").read_bytes()
    assert data["splatAxes"] == static_export[0]
    assert "preserveDrawingBuffer: true" in html


def test_viewer_is_a_default_format_that_can_be_turned_off():
    assert "viewer" in ExportConfig().formats
    files = {"model.glb": b"glb", "model.obj": b"obj"}
    assert set(with_viewer(files, ExportConfig())) == {"model.glb", "model.obj", "viewer.html"}
    assert with_viewer(files, from_dict(ExportConfig, {"formats": ["glb", "obj"]})) == files
    assert with_viewer({"model.obj": b"obj"}, ExportConfig()) == {"model.obj": b"obj"}  # nothing it can show
    with pytest.raises(ValueError, match="model.glb or gaussians.splat"):
        viewer_html({"model.obj": b"obj"})
    with pytest.raises(ValueError, match="splat axes"):
        viewer_html({"model.glb": b"glb"}, splat_axes="xyz")
    with pytest.raises(ConfigError, match=r"export.formats.0: expected one of .*'viewer'.*got 'viewr'"):
        from_dict(ExportConfig, {"formats": ["viewr"]}, "export")
