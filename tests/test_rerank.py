"""Alpha query expansion and database-side augmentation against hand-computed vectors."""

import numpy as np
import pytest

from retrieval import rerank
from retrieval.rerank import alpha_query_expansion, database_augmentation


def unit(*v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


DB = np.array([[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
Q = np.array([[1.0, 0.0]], dtype=np.float32)


def test_qe_adds_top_neighbour_weighted_by_cubed_similarity():
    out = alpha_query_expansion(Q, DB, np.array([[0, 1, 2]]), k=1, alpha=3)
    # q + 0.6^3 * (0.6, 0.8) = (1.1296, 0.1728)
    np.testing.assert_allclose(out[0], unit(1.1296, 0.1728), rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == (1, 2)


def test_qe_alpha_one_and_orthogonal_or_opposite_neighbours_add_nothing():
    out = alpha_query_expansion(Q, DB, np.array([[0, 1, 2]]), k=3, alpha=1)
    # (0, 1) has similarity 0 and (-1, 0) similarity -1, clamped to 0: only 0.6 * (0.6, 0.8) counts
    np.testing.assert_allclose(out[0], unit(1.36, 0.48), rtol=1e-6)


def test_qe_follows_the_given_ranking_not_its_own():
    out = alpha_query_expansion(Q, DB, np.array([[1, 0, 2]]), k=1)
    np.testing.assert_allclose(out[0], [1.0, 0.0], atol=1e-7)  # db[1] is orthogonal to q


def test_qe_two_queries_and_k_zero():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ranks = np.array([[0, 1, 2], [1, 0, 2]])
    out = alpha_query_expansion(queries, DB, ranks, k=2, alpha=1)
    np.testing.assert_allclose(out[0], unit(1.36, 0.48), rtol=1e-6)
    # second query: itself + 1.0 * (0, 1) + 0.8 * (0.6, 0.8) = (0.48, 2.64)
    np.testing.assert_allclose(out[1], unit(0.48, 2.64), rtol=1e-6)
    np.testing.assert_array_equal(alpha_query_expansion(queries, DB, ranks, k=0), queries)


def test_dba_adds_nearest_other_row_never_itself():
    db = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    out = database_augmentation(db, k=1, alpha=1)
    # similarities: r0.r1 = 0.8, r0.r2 = 0, r1.r2 = 0.6
    np.testing.assert_allclose(out[0], unit(1 + 0.8 * 0.8, 0.8 * 0.6), rtol=1e-6)
    np.testing.assert_allclose(out[1], unit(0.8 + 0.8, 0.6), rtol=1e-6)
    np.testing.assert_allclose(out[2], unit(0.6 * 0.8, 1 + 0.6 * 0.6), rtol=1e-6)
    cubed = database_augmentation(db, k=1)
    np.testing.assert_allclose(cubed[0], unit(1 + 0.512 * 0.8, 0.512 * 0.6), rtol=1e-6)


def test_dba_k_two_and_k_zero():
    db = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    out = database_augmentation(db, k=2, alpha=1)
    np.testing.assert_allclose(out[1], unit(0.8 + 0.8 * 1 + 0.6 * 0, 0.6 + 0.8 * 0 + 0.6 * 1), rtol=1e-6)
    np.testing.assert_array_equal(database_augmentation(db, k=0), db)


def brute_force_dba(db, k, alpha):
    out = []
    for i, x in enumerate(db.astype(np.float64)):
        sims = db @ x
        sims[i] = -np.inf
        nbrs = np.argsort(-sims, kind="stable")[:k]
        v = x + sum(max(sims[j], 0) ** alpha * db[j] for j in nbrs)
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def test_dba_in_blocks_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(3)
    db = rng.normal(size=(23, 6)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    monkeypatch.setattr(rerank, "_BLOCK", 5)
    np.testing.assert_allclose(database_augmentation(db, k=4, alpha=3), brute_force_dba(db, 4, 3), atol=1e-5)


@pytest.mark.parametrize("k", [-1, 1.5, True])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k must be"):
        alpha_query_expansion(Q, DB, np.array([[0, 1, 2]]), k=k)
    with pytest.raises(ValueError, match="k must be"):
        database_augmentation(DB, k=k)


def test_k_beyond_the_data_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        alpha_query_expansion(Q, DB, np.array([[0, 1]]), k=3)
    with pytest.raises(ValueError, match="smaller than the 3"):
        database_augmentation(DB, k=3)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="dimension"):
        alpha_query_expansion(np.ones((1, 3)), DB, np.array([[0]]), k=1)
    with pytest.raises(ValueError, match="ranks must be"):
        alpha_query_expansion(Q, DB, np.array([[0], [1]]), k=1)


def test_alpha_defaults_to_3_and_may_be_0_or_fractional():
    ranks = np.array([[0, 1, 2]])
    np.testing.assert_array_equal(alpha_query_expansion(Q, DB, ranks, k=1), alpha_query_expansion(Q, DB, ranks, k=1, alpha=3))
    assert not np.allclose(alpha_query_expansion(Q, DB, ranks, k=1), alpha_query_expansion(Q, DB, ranks, k=1, alpha=4))
    db = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(database_augmentation(db, k=1), database_augmentation(db, k=1, alpha=3))
    # alpha 0: every neighbour with a positive similarity weighs 1.
    np.testing.assert_allclose(alpha_query_expansion(Q, DB, ranks, k=1, alpha=0)[0], unit(1.6, 0.8), rtol=1e-6)
    np.testing.assert_allclose(alpha_query_expansion(Q, DB, ranks, k=1, alpha=0.5)[0],
                               unit(1 + 0.6**1.5, 0.8 * 0.6**0.5), rtol=1e-6)


@pytest.mark.parametrize("alpha", [-0.5, np.nan, np.inf])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got"):
        alpha_query_expansion(Q, DB, np.array([[0, 1, 2]]), k=1, alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got"):
        database_augmentation(DB, k=1, alpha=alpha)


def test_messages_name_the_bad_array():
    with pytest.raises(ValueError, match="^queries holds NaN"):
        alpha_query_expansion(np.array([[np.nan, 0.0]]), DB, np.array([[0]]), k=1)
    with pytest.raises(ValueError, match="^database holds NaN"):
        alpha_query_expansion(Q, np.array([[np.nan, 0.0]]), np.array([[0]]), k=1)
    with pytest.raises(ValueError, match="^database holds NaN"):
        database_augmentation(np.array([[np.nan, 0.0], [1.0, 0.0]]), k=1)
    with pytest.raises(ValueError, match=r"^ranks must be \(1, n_ranked\) integers, got float64 \(1, 3\)$"):
        alpha_query_expansion(Q, DB, np.array([[0.0, 1.0, 2.0]]), k=1)
    with pytest.raises(ValueError, match=r"^k = 3 exceeds the 2 ranked rows per query$"):
        alpha_query_expansion(Q, DB, np.array([[0, 1]]), k=3)


def test_dba_on_a_larger_database_matches_brute_force():
    rng = np.random.default_rng(11)
    db = rng.normal(size=(300, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    for k in (1, 2, 5):
        np.testing.assert_allclose(database_augmentation(db, k=k, alpha=3), brute_force_dba(db, k, 3), atol=1e-5)
