"""``viewer.html``: one self-contained page that shows an export's mesh and splats in a browser.

The page is opened straight from disk (file://, no server, no network), so the files it shows are
embedded in it as base64: ``model.glb`` (textured mesh; morph-target animation played in a loop) and
``gaussians.splat`` (rendered as anisotropic Gaussians), with Mesh/Splats buttons when both exist. The
page's own code (WebGL2, no libraries) is in ``viewer_web/``: ``template.html`` and the scripts
``SCRIPTS`` lists, inlined in that order. Tests: tests/test_viewer.py (headless Chromium).
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

log = logging.getLogger("threedgen")

WEB = Path(__file__).with_name("viewer_web")
SCRIPTS = ("math.js", "glb.js", "mesh.js", "splats.js", "main.js")
VIEWER_NAME = "viewer.html"


def viewer_html(files: dict[str, bytes], splat_axes: str = "rdf") -> bytes:
    """The page for an export's ``{file name: bytes}``; ``splat_axes`` is the frame ``gaussians.splat``
    was written in (``export.splat_axes``: rdf = the world turned 180° about x, rub = the world)."""
    if splat_axes not in ("rdf", "rub"):
        raise ValueError(f"unknown splat axes {splat_axes!r}; expected 'rdf' or 'rub'")
    data = {"splatAxes": splat_axes}
    for key, name in (("glb", "model.glb"), ("splat", "gaussians.splat")):
        if name in files:
            data[key] = base64.b64encode(files[name]).decode("ascii")
    if len(data) == 1:
        raise ValueError("viewer.html needs model.glb or gaussians.splat among the exported files")
    script = "\n".join((WEB / name).read_text(encoding="utf-8") for name in SCRIPTS)
    page = (WEB / "template.html").read_text(encoding="utf-8")
    page = page.replace("__DATA__", json.dumps(data), 1).replace("__SCRIPT__", script, 1)
    return page.encode("utf-8")


def with_viewer(files: dict[str, bytes], export_cfg) -> dict[str, bytes]:
    """``files`` plus ``viewer.html`` when ``export.formats`` asks for it and there is something to show."""
    if "viewer" not in export_cfg.formats:
        return files
    if "model.glb" not in files and "gaussians.splat" not in files:
        log.info("export: viewer.html skipped: it shows model.glb or gaussians.splat and neither is exported")
        return files
    return {**files, VIEWER_NAME: viewer_html(files, getattr(export_cfg, "splat_axes", "rdf"))}
