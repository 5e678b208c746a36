import math

import pytest

from threedgen.schedule import Schedule, ScheduleError


def test_constant():
    s = Schedule(0.5)
    assert s(0) == 0.5 and s(10**6) == 0.5 and s.is_constant


def test_linear_four_list_clamped():
    s = Schedule([100, 1.0, 3.0, 300])
    assert s(0) == 1.0
    assert s(100) == 1.0
    assert s(200) == pytest.approx(2.0)
    assert s(250) == pytest.approx(2.5)
    assert s(300) == 3.0 and s(10_000) == 3.0


def test_three_list_starts_at_zero():
    s = Schedule([0.98, 0.5, 1000])
    assert s(500) == pytest.approx(0.74)


def test_step_drop_like_prolificdreamer():
    s = Schedule([5000, 0.98, 0.5, 5001])
    assert s(4999) == 0.98 and s(5001) == 0.5


def test_piecewise_points():
    s = Schedule([[0, 0.0], [10, 1.0], [30, 0.0]])
    assert s(5) == pytest.approx(0.5)
    assert s(20) == pytest.approx(0.5)
    assert s(40) == 0.0


def test_sqrt_named():
    s = Schedule({"type": "sqrt", "start_value": 700, "end_value": 100, "end_step": 400})
    assert s(100) == pytest.approx(700 - 600 * math.sqrt(0.25))
    assert s(400) == 100


def test_cosine_named():
    s = Schedule({"type": "cosine", "start_value": 0.0, "end_value": 2.0, "end_step": 10})
    assert s(5) == pytest.approx(1.0)


def test_step_named():
    s = Schedule({"type": "step", "values": [64, 128, 256], "steps": [100, 200]})
    assert (s(0), s(99), s(100), s(199), s(200), s(10**5)) == (64, 64, 128, 128, 256, 256)


@pytest.mark.parametrize("bad", ["abc", [1, 2], [0, 1, 2, 3, 4], {"type": "bogus"}, [10, 1.0, 2.0, 5], {"type": "sqrt"}])
def test_bad_schedules_raise(bad):
    with pytest.raises(ScheduleError):
        Schedule(bad)
