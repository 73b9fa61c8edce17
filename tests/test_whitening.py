import numpy as np
import pytest

from retrieval.search import l2_normalize
from retrieval.whitening import apply_whitening, learn_whitening


def test_full_rank_plain_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 6)) @ rng.standard_normal((6, 6))
    w = learn_whitening(x, shrinkage=0.0)
    y = (x - w.mean) @ w.projection
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(6), atol=1e-3)


def test_rank_deficient_training_keeps_only_usable_dimensions():
    # 10 descriptors in 64 dimensions: the centred covariance has rank 9.
    x = l2_normalize(np.random.default_rng(1).standard_normal((10, 64)))
    w = learn_whitening(x)
    assert w.dim_in == 64 and w.dim_out == 9
    assert np.isfinite(w.projection).all()
    out = apply_whitening(x, w)
    assert out.shape == (10, 9)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert learn_whitening(x, dim=4).dim_out == 4


def test_shrinkage_damps_weak_directions():
    x = np.random.default_rng(2).standard_normal((500, 5)) * np.array([10, 5, 1, 0.1, 0.01])
    plain, shrunk = learn_whitening(x, shrinkage=0.0), learn_whitening(x, shrinkage=1.0)
    plain_gain = np.linalg.norm(plain.projection, axis=0)
    shrunk_gain = np.linalg.norm(shrunk.projection, axis=0)
    assert plain_gain[-1] / plain_gain[0] > 500
    assert shrunk_gain[-1] / shrunk_gain[0] < 20


def test_bad_inputs_refused():
    with pytest.raises(ValueError, match="at least two"):
        learn_whitening(np.ones((1, 4)))
    w = learn_whitening(np.random.default_rng(3).standard_normal((20, 4)))
    with pytest.raises(ValueError, match="dimension 5"):
        apply_whitening(np.ones((2, 5)), w)
