"""Synthetic distractors: fitted to real descriptors, reproducible, unit-norm and clustered."""

import numpy as np
import pytest

from retrieval.distractors import fit_distractor_model, sample_distractors


@pytest.fixture(scope="module")
def real():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((8, 64)).astype(np.float32)
    x = rng.standard_normal((300, 8)).astype(np.float32) @ basis + 3.0 * np.ones(64, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_samples_follow_the_fitted_distribution(real):
    model = fit_distractor_model(real, rank=8)
    d = sample_distractors(model, 4000, seed=1, cluster_size=1)
    assert d.shape == (4000, 64) and d.dtype == np.float32
    assert np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    # Same mean direction as the real rows, and almost all variance inside their 8-dim subspace.
    mean_real, mean_d = real.mean(0), d.mean(0)
    assert mean_real @ mean_d / np.linalg.norm(mean_real) / np.linalg.norm(mean_d) > 0.99
    centred = d - mean_d
    inside = np.linalg.norm(centred @ model.directions.T) ** 2 / np.linalg.norm(centred) ** 2
    assert inside > 0.95


def test_seeded_and_clustered(real):
    model = fit_distractor_model(real, rank=8)
    assert np.array_equal(sample_distractors(model, 100, seed=5), sample_distractors(model, 100, seed=5))
    assert not np.array_equal(sample_distractors(model, 100, seed=5), sample_distractors(model, 100, seed=6))

    def nearest(x):
        s = x @ x.T
        np.fill_diagonal(s, -1)
        return s.max(1).mean()

    assert nearest(sample_distractors(model, 500, seed=2, cluster_size=20, spread=0.3)) > \
        nearest(sample_distractors(model, 500, seed=2, cluster_size=1)) + 0.01


def test_bad_inputs_refused(real):
    with pytest.raises(ValueError, match="at least 2"):
        fit_distractor_model(real[:1])
    with pytest.raises(ValueError, match="NaN"):
        fit_distractor_model(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="spread"):
        sample_distractors(fit_distractor_model(real), 10, spread=0)
