"""The texture fit's least-squares solver (threedgen/export/texture_fit.py) against dense linear algebra,
and the reason it has a smoothness term: sparse pixels fitted alone overshoot between them."""

import math

import pytest
import torch

from threedgen.export.mesh_views import lookup
from threedgen.export.texture_fit import bilinear_taps, grid_laplacian, solve_texture


def _dense_lookup_matrix(uv, T):
    index, weight = bilinear_taps(uv, T)
    A = torch.zeros(len(uv), T * T, dtype=torch.float64)
    A.scatter_add_(1, index, weight.double())
    return A


def _dense_laplacian(mask):
    T = mask.shape[0]
    L = torch.zeros(T * T, T * T, dtype=torch.float64)
    for y in range(T):
        for x in range(T):
            for yy, xx in ((y, x + 1), (y + 1, x)):
                if yy < T and xx < T and mask[y, x] and mask[yy, xx]:
                    i, j = y * T + x, yy * T + xx
                    L[i, i] += 1
                    L[j, j] += 1
                    L[i, j] -= 1
                    L[j, i] -= 1
    return L


def test_bilinear_taps_are_the_lookup_filter_at_edges_and_outside_the_atlas():
    g = torch.Generator().manual_seed(0)
    T = 7
    tex = torch.rand(T, T, 3, generator=g)
    uv = torch.cat([torch.rand(500, 2, generator=g) * 1.2 - 0.1,  # some outside [0, 1]: border padding
                    torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5 / T, 0.5 / T], [1 - 0.5 / T, 0.3]])])
    index, weight = bilinear_taps(uv, T)
    rows = (weight[..., None] * tex.reshape(-1, 3)[index]).sum(1)
    torch.testing.assert_close(rows, lookup(tex, uv), atol=1e-6, rtol=0)
    torch.testing.assert_close(weight.sum(1), torch.ones(len(uv)))


def test_grid_laplacian_joins_only_neighbours_inside_the_mask():
    g = torch.Generator().manual_seed(1)
    T = 6
    mask = torch.rand(T, T, generator=g) > 0.3
    t = torch.rand(T, T, 2, generator=g, dtype=torch.float64)
    expect = (_dense_laplacian(mask) @ t.reshape(-1, 2)).reshape(T, T, 2)
    torch.testing.assert_close(grid_laplacian(t, mask), expect)


@pytest.mark.parametrize("smoothness", [0.0, 0.5])
def test_solver_reaches_the_dense_least_squares_solution(smoothness):
    g = torch.Generator().manual_seed(2)
    T = 6
    uv = torch.rand(300, 2, generator=g)  # 300 pixels, 36 texels: every texel tapped, the system is regular
    y = torch.rand(300, 3, generator=g)
    mask = torch.ones(T, T, dtype=torch.bool)
    mask[2, :] = False  # a gutter: no edge across it
    A = _dense_lookup_matrix(uv, T)
    H = A.T @ A + smoothness * _dense_laplacian(mask)
    expect = torch.linalg.solve(H, A.T @ y.double()).reshape(T, T, 3)
    start = torch.full((T, T, 3), 0.5)
    got = solve_texture(start, uv, y, mask, smoothness, iterations=60)
    torch.testing.assert_close(got.double(), expect, atol=1e-4, rtol=0)


def test_sparse_pixels_fitted_alone_overshoot_and_the_smoothness_term_generalises():
    """A smooth colour field seen by fewer pixels than the texture has texels (as a 128 px view sees a
    1024 px texture): the pixel-only fit matches its pixels but is worse than its start between them;
    the smoothed fit is better than both at lookups it never saw."""
    g = torch.Generator().manual_seed(3)
    T = 48

    def field(uv):
        return torch.stack([0.5 + 0.4 * torch.sin(2 * math.pi * uv[:, 0]), 0.5 + 0.4 * torch.cos(2 * math.pi * uv[:, 1]),
                            0.3 + 0.4 * uv[:, 0] * uv[:, 1]], 1)

    seen, held = torch.rand(400, 2, generator=g), torch.rand(4000, 2, generator=g)
    y = field(seen) + 0.05 * torch.randn(400, 3, generator=g)  # renders disagree a little between views
    start = torch.full((T, T, 3), 0.5)
    mask = torch.ones(T, T, dtype=torch.bool)

    def held_error(t):
        return float(((lookup(t, held) - field(held)) ** 2).mean())

    def seen_error(t):
        return float(((lookup(t, seen) - y) ** 2).mean())

    alone = solve_texture(start, seen, y, mask, 0.0, iterations=60)
    smooth = solve_texture(start, seen, y, mask, 3.0, iterations=60)
    assert seen_error(alone) < 0.2 * seen_error(smooth)  # it does fit its pixels
    assert held_error(smooth) < 0.5 * held_error(alone)
    assert held_error(smooth) < 0.5 * held_error(start)
