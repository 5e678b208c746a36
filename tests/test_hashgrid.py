"""The vectorised hash encoding equals a plain per-level, per-corner loop (incl. hashed levels)."""

import pytest
import torch

from threedgen.representations.hashgrid import HashGrid, HashGridConfig, hash_encode_reference


def _grid(**kw) -> HashGrid:
    torch.manual_seed(0)
    cfg = HashGridConfig(**{"n_levels": 6, "n_features_per_level": 2, "log2_hashmap_size": 12,
                            "base_resolution": 4, "max_resolution": 64, **kw})
    g = HashGrid(cfg)
    with torch.no_grad():  # large values so any indexing mistake shows
        g.params.uniform_(-1, 1)
    return g


def _points(n=2000):
    x = torch.rand(n, 3)
    # the faces and corners of the unit cube exercise tcnn's index wrap-around at the far faces
    edges = torch.tensor([[0.0, 0, 0], [1, 1, 1], [1, 0, 0.5], [0, 1, 1], [0.999999, 0.5, 0.0]])
    return torch.cat([x, edges])


def test_fast_encoding_matches_reference_on_dense_and_hashed_levels():
    g = _grid()
    assert g.hashed_levels > 0 and g.n_dense > 0  # both kinds are covered
    x = _points()
    torch.testing.assert_close(g(x), hash_encode_reference(x, g), atol=1e-6, rtol=0)


@pytest.mark.parametrize("F,T", [(1, 10), (4, 14), (2, 19)])
def test_fast_encoding_matches_reference_other_layouts(F, T):
    g = _grid(n_features_per_level=F, log2_hashmap_size=T, n_levels=5, max_resolution=200)
    x = _points(500)
    torch.testing.assert_close(g(x), hash_encode_reference(x, g), atol=1e-6, rtol=0)


def test_gradients_reach_table_and_points_like_reference():
    g = _grid()
    x = _points(300).requires_grad_(True)
    w = torch.randn(x.shape[0], g.n_output_dims)
    (g(x) * w).sum().backward()
    grad_fast, gx_fast = g.params.grad.clone(), x.grad.clone()
    assert grad_fast.abs().sum() > 0
    g.params.grad, x.grad = None, None
    (hash_encode_reference(x, g) * w).sum().backward()
    torch.testing.assert_close(grad_fast, g.params.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_fast, x.grad, atol=1e-4, rtol=1e-4)


def test_mask_levels_zeroes_fine_levels():
    g = _grid()
    x = _points(100)
    full = g(x)
    g.mask_levels(2)
    part = g(x)
    F = g.cfg.n_features_per_level
    torch.testing.assert_close(part[:, : 2 * F], full[:, : 2 * F])
    assert part[:, 2 * F :].abs().max() == 0


def test_table_init_and_layout():
    g = HashGrid(HashGridConfig(n_levels=16, log2_hashmap_size=19, base_resolution=16, max_resolution=2048))
    assert g.params.abs().max() <= 1e-4
    assert g.res[0] == 16 and abs(g.per_level_scale - 1.3819) < 1e-3
    assert all(int(s) % 8 == 0 and int(s) <= 2**19 for s in g.sizes)
    assert int(g.sizes[-1]) == 2**19 and g.hashed_levels > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tcnn_matches_torch_encoding():
    pytest.importorskip("tinycudann")
    g = _grid(backend="cuda").cuda()
    with torch.no_grad():
        g.params.uniform_(-1e-2, 1e-2)
    x = torch.rand(4096, 3, device="cuda")
    out_tcnn = g(x)
    assert g._tcnn is not None and not g._tcnn_failed
    g.cfg.backend = "torch"
    torch.testing.assert_close(out_tcnn, g(x), atol=1e-4, rtol=1e-3)


def test_init_scale_sets_the_table_spread_and_is_range_checked():
    from threedgen.config import ConfigError, load_config

    small = HashGrid(HashGridConfig(n_levels=2, log2_hashmap_size=8, base_resolution=4, max_resolution=8))
    large = HashGrid(HashGridConfig(n_levels=2, log2_hashmap_size=8, base_resolution=4, max_resolution=8, init_scale=0.5))
    assert float(small.params.abs().max()) <= 1e-4 < float(large.params.abs().max()) <= 0.5
    with pytest.raises(ConfigError, match="init_scale"):
        load_config("configs/toy/sds-nerf.yaml", ["system.representation.grid.init_scale=-1"])
