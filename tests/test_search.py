import numpy as np
import pytest

from retrieval.search import Searcher, l2_normalize


def random_unit(n, d, seed):
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, d)))


def oracle(db, q, k):
    sims = q @ db.T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, axis=1), rows


@pytest.mark.parametrize("backend", ["kdtree", "exact"])
@pytest.mark.parametrize("k", [1, 7, 300])
def test_search_matches_brute_force_oracle(backend, k):
    db, q = random_unit(300, 24, 0), random_unit(11, 24, 1)
    scores, rows = Searcher(db, backend=backend).search(q, k)
    want_scores, want_rows = oracle(db, q, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_backends_rank_identically_and_self_match_first():
    db = random_unit(500, 64, 2)
    a = Searcher(db, backend="kdtree").search(db[:20], 10)
    b = Searcher(db, backend="exact").search(db[:20], 10)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[1][:, 0], np.arange(20))
    np.testing.assert_allclose(a[0][:, 0], 1.0, atol=1e-5)


def test_single_vector_query_and_tie_order():
    db = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    scores, rows = Searcher(db, backend="exact").search(np.array([1, 0]), 2)
    assert rows.tolist() == [[0, 1]]
    assert scores.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("k", [0, -1, 4, 2.5, True, "3"])
def test_bad_k_refused(k):
    with pytest.raises((ValueError, TypeError)):
        Searcher(random_unit(3, 4, 0), backend="exact").search(random_unit(1, 4, 1), k)


def test_wrong_dimension_and_bad_backend_refused():
    s = Searcher(random_unit(5, 4, 0))
    with pytest.raises(ValueError, match="dimension 3 does not match the index dimension 4"):
        s.search(np.ones(3), 1)
    with pytest.raises(ValueError, match="unknown search backend"):
        Searcher(random_unit(5, 4, 0), backend="faiss")
    with pytest.raises(ValueError, match="NaN"):
        s.search(np.array([np.nan, 0, 0, 0]), 1)
