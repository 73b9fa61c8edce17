import numpy as np
import pytest

from retrieval.search import Searcher, as_rows, l2_normalize


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


def test_messages_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"^array must be \(n, d\) rows, got shape \(2, 2, 2\)$"):
        as_rows(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="^features holds NaN or infinite values$"):
        Searcher(np.array([[np.inf, 0.0]]))
    with pytest.raises(ValueError, match=r"^queries must be \(n, d\) rows, got shape \(1, 1, 2\)$"):
        Searcher(random_unit(3, 2, 0)).search(np.zeros((1, 1, 2)), 1)
    with pytest.raises(ValueError, match="^queries holds NaN or infinite values$"):
        Searcher(random_unit(3, 2, 0), backend="exact").search(np.array([np.nan, 1.0]), 1)
    with pytest.raises(ValueError, match="^cannot search an empty index$"):
        Searcher(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="^unknown search backend 'faiss'; choose one of kdtree, exact, ann$"):
        Searcher(random_unit(3, 2, 0), backend="faiss")
    s = Searcher(random_unit(3, 2, 0), backend="exact")
    with pytest.raises(ValueError, match=r"^k must be a whole number, got 2\.5$"):
        s.check_k(2.5)
    with pytest.raises(ValueError, match=r"^k must be between 1 and 3 \(the index size\), got 4$"):
        s.check_k(4)
    assert s.check_k(3.0) == 3 and type(s.check_k(np.int64(2))) is int


@pytest.mark.parametrize("backend", ["kdtree", "exact"])
def test_types_one_row_and_rank_all(backend):
    one = Searcher(np.array([[0.6, 0.8]]), backend=backend)
    assert one.backend == backend and len(one) == 1 and one.dim == 2
    scores, rows = one.search(np.array([1.0, 0.0]), 1)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert rows.tolist() == [[0]] and scores.tolist() == [[pytest.approx(0.6)]]
    db, q = random_unit(40, 6, 3), random_unit(3, 6, 4)
    s = Searcher(db.astype(np.float64), backend=backend)
    assert s.features.dtype == np.float32 and s.features.flags.c_contiguous
    for k in (5, 40):
        scores, rows = s.search(q, k)
        assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (3, k)
    np.testing.assert_array_equal(s.rank_all(q), oracle(db, q, 40)[1])


def test_l2_normalize_scales_every_row_to_unit_length():
    np.testing.assert_allclose(l2_normalize(np.array([[0.3, 0.4], [3.0, 4.0], [0.0, 0.0]])),
                               [[0.6, 0.8], [0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert l2_normalize(np.array([1e-8, 0.0])).tolist() == [[1.0, 0.0]]


def test_ties_at_the_kth_place_go_to_the_lower_row():
    # Rows 1, 3 and 4 tie for second place; k = 2 and 3 must take them in row order.
    db = np.array([[1, 0], [0.6, 0.8], [0, 1], [0.6, 0.8], [0.6, 0.8]], dtype=np.float32)
    for backend in ("kdtree", "exact"):
        s = Searcher(db, backend=backend, leaf_size=1)
        assert s.search(np.array([1.0, 0.0]), 2)[1].tolist() == [[0, 1]]
        assert s.search(np.array([1.0, 0.0]), 3)[1].tolist() == [[0, 1, 3]]
        assert s.search(np.array([0.6, 0.8]), 2)[1].tolist() == [[1, 3]]
