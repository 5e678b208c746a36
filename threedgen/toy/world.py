"""The toy world: a fixed vocabulary of shapes x colours (+ an optional front marker) with analytic geometry.

Everything here is ground truth that ToyBench scores against and that the toy prior is trained on, so
the numbers are constants, not configuration. World conventions are the project's (DESIGN.md): +Y up,
metres, the object's front faces +Z, objects centred at the origin.

Geometry (all centred at the origin):

- ``cube``: edge 0.76 (half-extent 0.38)
- ``sphere``: radius 0.5
- ``cylinder``: radius 0.4, height 0.9, axis Y
- ``cone``: base radius 0.5 at y = -0.45, apex at y = +0.45
- ``torus``: major radius 0.35, tube radius 0.15, lying in the XZ plane
- marker: a white sphere of radius 0.12 centred on the object's surface point on the +Z axis

Shading (see ``shade``): ``rgb = clamp(albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . l)), 0, 1)`` with the
fixed world light ``l = normalize(0.4, 0.8, 0.6)`` and ``AMBIENT = 0.35``; white background.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from ..data.cameras import CameraConfig
from ..prompts.views import VIEWS, view_prompt
from ..schedule import Schedule

SHAPES = ("cube", "sphere", "cylinder", "cone", "torus")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.10, 0.25, 0.85),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.55, 0.15, 0.70),
    "orange": (0.95, 0.50, 0.05),
    "black": (0.08, 0.08, 0.08),
}
COLOUR_NAMES = tuple(COLOURS)
MARKER_COLOUR = (0.95, 0.95, 0.95)
MARKER_RADIUS = 0.12
BACKGROUND = (1.0, 1.0, 1.0)

CUBE_HALF = 0.38
SPHERE_RADIUS = 0.5
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.4, 0.45
CONE_BASE_RADIUS, CONE_HALF_HEIGHT = 0.5, 0.45
TORUS_MAJOR, TORUS_MINOR = 0.35, 0.15

_L = (0.4, 0.8, 0.6)
_n = math.sqrt(sum(c * c for c in _L))
LIGHT_DIR = tuple(c / _n for c in _L)
"""Unit vector towards the single fixed world light."""
AMBIENT = 0.35

FRONT_Z = {
    "cube": CUBE_HALF,
    "sphere": SPHERE_RADIUS,
    "cylinder": CYLINDER_RADIUS,
    "cone": CONE_BASE_RADIUS * 0.5,  # radius at y = 0 is half the base radius
    "torus": TORUS_MAJOR + TORUS_MINOR,
}
"""z of each shape's surface on the +Z axis: where the front marker's centre sits."""

BOUND_RADIUS = 0.75
"""Every object (marker included) lies inside this sphere; rays that miss it are background."""

TOY_CAMERAS = CameraConfig(
    batch_size=Schedule(1),
    width=Schedule(32),
    height=Schedule(32),
    elevation_range=(-10.0, 80.0),
    azimuth_range=(-180.0, 180.0),
    distance_range=(1.6, 2.0),
    fovy_range=(45.0, 60.0),
    light="none",
    eval_elevation=15.0,
    eval_distance=1.8,
    eval_fovy=52.5,
)
"""Training views of the toy prior: elevation up to 80 deg so that all four view words (incl. overhead) occur."""

MARKER_PHRASE = "with a white dot"
VOCABULARY = (
    ("a", "an", "with", "white", "dot", "view", ",")
    + SHAPES
    + COLOUR_NAMES
    + VIEWS
)
"""Every word a toy caption can contain (the toy tokenizer's vocabulary)."""


@dataclass(frozen=True)
class ToyScene:
    shape: str
    colour: str
    marker: bool = False

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known shapes: {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known colours: {', '.join(COLOUR_NAMES)}")

    @property
    def albedo(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]

    @property
    def marker_centre(self) -> tuple[float, float, float]:
        return (0.0, 0.0, FRONT_Z[self.shape])

    @property
    def prompt(self) -> str:
        return caption(self)


def all_scenes() -> list[ToyScene]:
    """Every scene of the world, in a fixed order (shape-major, then colour, then marker)."""
    return [ToyScene(s, c, m) for s in SHAPES for c in COLOUR_NAMES for m in (False, True)]


def caption(scene: ToyScene, view: Optional[str] = None) -> str:
    """``"a red cube"``, ``"an orange cone with a white dot"``, ``"a red cube, front view"``."""
    article = "an" if scene.colour[0] in "aeiou" else "a"
    text = f"{article} {scene.colour} {scene.shape}"
    if scene.marker:
        text += f" {MARKER_PHRASE}"
    if view is not None:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; known views: {', '.join(VIEWS)}")
        text = view_prompt(text, view)
    return text


_VIEW_SUFFIX = re.compile(r"\s*,\s*(" + "|".join(VIEWS) + r")\s+view\s*$")
_VIEW_PREFIX = re.compile(r"^\s*(" + "|".join(VIEWS) + r")\s+view\s+of\s+")


def split_view(prompt: str) -> tuple[str, Optional[str]]:
    """Strip a view suffix (``", front view"``) or prefix (``"front view of "``); return (rest, view)."""
    p = prompt.strip().lower()
    m = _VIEW_SUFFIX.search(p)
    if m:
        return p[: m.start()].strip(), m.group(1)
    m = _VIEW_PREFIX.match(p)
    if m:
        return p[m.end():].strip(), m.group(1)
    return p, None


def parse_prompt(prompt: str) -> ToyScene:
    """Parse ``"a {colour} {shape}[ with a white dot][, {view} view]"`` into a ``ToyScene``.

    Raises ``ValueError`` naming the unknown words and the known vocabulary, so a typo in a benchmark
    prompt fails loudly instead of scoring against the wrong ground truth.
    """
    body, _ = split_view(prompt)
    words = body.replace(",", " , ").split()
    unknown = [w for w in words if w not in VOCABULARY or w in VIEWS or w in (",", "view")]
    if unknown:
        raise ValueError(
            f"toy prompt {prompt!r}: unknown word(s) {unknown}; expected 'a <colour> <shape>"
            f"[ {MARKER_PHRASE}][, <view> view]' with colours {list(COLOUR_NAMES)}, shapes {list(SHAPES)}, "
            f"views {list(VIEWS)}"
        )
    marker = False
    if len(words) >= 4 and words[-4:] == MARKER_PHRASE.split():
        marker, words = True, words[:-4]
    if len(words) == 2:
        words = ["a"] + words
    if len(words) != 3 or words[0] not in ("a", "an") or words[1] not in COLOURS or words[2] not in SHAPES:
        raise ValueError(
            f"toy prompt {prompt!r} does not match 'a <colour> <shape>[ {MARKER_PHRASE}][, <view> view]'; "
            f"colours {list(COLOUR_NAMES)}, shapes {list(SHAPES)}, views {list(VIEWS)}"
        )
    return ToyScene(words[2], words[1], marker)
