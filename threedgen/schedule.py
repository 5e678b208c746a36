"""One type for every scheduled scalar (loss weights, timestep ranges, guidance scales, lrs, clips).

Accepted forms (``step`` is the global optimisation step):

- ``0.5``                                    constant
- ``[start_step, start_value, end_value, end_step]``  linear, clamped outside the interval
- ``[start_value, end_value, end_step]``     the same with start_step = 0
- ``[[s0, v0], [s1, v1], ...]``              piecewise linear through the points
- ``{type: sqrt|linear|cosine, start_step, start_value, end_value, end_step}``
- ``{type: step, values: [v0, v1, ...], steps: [s1, ...]}``  v0 before s1, v1 from s1, ...

Nothing else in threedgen reimplements annealing: modules hold ``Schedule`` objects and call them.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

_NAMED = ("linear", "sqrt", "cosine", "step")


class ScheduleError(ValueError):
    pass


def _num(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ScheduleError(f"{what}: expected a number, got {x!r}")
    return float(x)


class Schedule:
    """A scalar as a function of the step. ``Schedule(raw)(step) -> float``."""

    __slots__ = ("raw", "_kind", "_points", "_shape")

    def __init__(self, raw: Any):
        if isinstance(raw, Schedule):
            raw = raw.raw
        self.raw = raw
        self._shape = "linear"
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            self._kind, self._points = "constant", [(0, float(raw))]
        elif isinstance(raw, (list, tuple)):
            self._parse_list(list(raw))
        elif isinstance(raw, dict):
            self._parse_dict(dict(raw))
        else:
            raise ScheduleError(
                f"expected a number, [start_step, start_value, end_value, end_step], "
                f"a list of [step, value] points or a {{type: ...}} mapping, got {raw!r}"
            )

    def _parse_list(self, raw: list) -> None:
        if raw and all(isinstance(p, (list, tuple)) for p in raw):
            pts = [(_num(p[0], "point step"), _num(p[1], "point value")) for p in raw if len(p) == 2]
            if len(pts) != len(raw):
                raise ScheduleError(f"piecewise points must be [step, value] pairs, got {raw!r}")
            if any(b[0] < a[0] for a, b in zip(pts, pts[1:])):
                raise ScheduleError(f"piecewise steps must be increasing, got {raw!r}")
            self._kind, self._points = "piecewise", pts
            return
        if len(raw) == 3:
            raw = [0, *raw]
        if len(raw) != 4:
            raise ScheduleError(f"a list schedule is [start_step, start_value, end_value, end_step], got {raw!r}")
        s0, v0, v1, s1 = (_num(x, "schedule entry") for x in raw)
        if s1 < s0:
            raise ScheduleError(f"end_step {s1} is before start_step {s0} in {raw!r}")
        self._kind, self._points = "piecewise", [(s0, v0), (s1, v1)]

    def _parse_dict(self, raw: dict) -> None:
        kind = raw.pop("type", None)
        if kind not in _NAMED:
            raise ScheduleError(f"schedule type must be one of {', '.join(_NAMED)}, got {kind!r}")
        if kind == "step":
            values = [_num(v, "step value") for v in raw.pop("values", [])]
            steps = [_num(s, "step boundary") for s in raw.pop("steps", [])]
            if len(values) != len(steps) + 1:
                raise ScheduleError("a step schedule needs exactly one more value than boundaries")
            self._kind, self._points = "step", list(zip([-math.inf, *steps], values))
        else:
            s0 = _num(raw.pop("start_step", 0), "start_step")
            s1 = _num(raw.pop("end_step"), "end_step") if "end_step" in raw else None
            v0 = _num(raw.pop("start_value"), "start_value") if "start_value" in raw else None
            v1 = _num(raw.pop("end_value"), "end_value") if "end_value" in raw else None
            if s1 is None or v0 is None or v1 is None:
                raise ScheduleError(f"a {kind} schedule needs start_value, end_value and end_step")
            self._kind, self._shape, self._points = "piecewise", kind, [(s0, v0), (s1, v1)]
        if raw:
            raise ScheduleError(f"unknown schedule keys: {', '.join(sorted(raw))}")

    @property
    def knot_values(self) -> list[float]:
        """Every value the schedule takes at a knot (its range lies between their min and max)."""
        return [v for _, v in self._points]

    @property
    def is_constant(self) -> bool:
        return self._kind == "constant"

    def __call__(self, step: int | float) -> float:
        pts = self._points
        if self._kind == "constant":
            return pts[0][1]
        if self._kind == "step":
            i = bisect.bisect_right([p[0] for p in pts], step) - 1
            return pts[max(i, 0)][1]
        if step <= pts[0][0]:
            return pts[0][1]
        if step >= pts[-1][0]:
            return pts[-1][1]
        i = bisect.bisect_right([p[0] for p in pts], step) - 1
        (s0, v0), (s1, v1) = pts[i], pts[i + 1]
        frac = (step - s0) / (s1 - s0) if s1 > s0 else 1.0
        if self._shape == "sqrt":
            frac = math.sqrt(frac)
        elif self._shape == "cosine":
            frac = 0.5 - 0.5 * math.cos(math.pi * frac)
        return v0 + (v1 - v0) * frac

    def __repr__(self) -> str:
        return f"Schedule({self.raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and other.raw == self.raw

    def __hash__(self) -> int:  # immutable, so usable as a dataclass default
        return hash(repr(self.raw))


def as_schedule(value: Any) -> Schedule:
    return value if isinstance(value, Schedule) else Schedule(value)
