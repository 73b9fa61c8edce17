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


# A database that is not a 2-D array, or a memory map read only at the ranked rows.

QE_ONE = unit(1.1296, 0.1728)  # Q expanded by DB[0] with alpha 3, as in the first test


def test_qe_takes_a_database_given_as_a_list_or_a_single_row():
    np.testing.assert_allclose(alpha_query_expansion(Q, DB.tolist(), np.array([[0, 1, 2]]), k=1)[0], QE_ONE, rtol=1e-6)
    np.testing.assert_allclose(alpha_query_expansion(Q, np.array([0.6, 0.8]), np.array([[0]]), k=1)[0], QE_ONE,
                               rtol=1e-6)


def mapped(tmp_path, rows, dtype=np.float16):
    path = tmp_path / f"rows_{np.dtype(dtype).name}.npy"
    np.save(path, np.asarray(rows, dtype=dtype))
    mm = np.load(path, mmap_mode="r")
    assert isinstance(mm, np.memmap)
    return mm


@pytest.mark.parametrize("mapped_db", [False, True])
def test_qe_checks_only_the_rows_it_reads_of_an_array_or_memory_map(mapped_db, tmp_path):
    # A bad row left unranked is never read; the ranked rows of a float16 map widen exactly.
    db = np.vstack([DB, [[np.nan, 0.0]], [[0.0, np.inf]]]).astype(np.float32)
    db = mapped(tmp_path, db, np.float32) if mapped_db else db
    np.testing.assert_allclose(alpha_query_expansion(Q, db, np.array([[0, 1, 2, 3, 4]]), k=1)[0], QE_ONE, rtol=1e-6)
    with pytest.raises(ValueError, match=r"^database holds NaN or infinite values \(in the ranked rows\)$"):
        alpha_query_expansion(Q, db, np.array([[0, 4, 1]]), k=2)
    halves = np.array([[0.6, 0.8], [0.28, 0.96], [1.0, 0.0], [0.0, 1.0]])
    db16 = mapped(tmp_path, halves) if mapped_db else halves.astype(np.float16)
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ranks = np.array([[0, 1, 3], [3, 1, 0]])
    want = alpha_query_expansion(queries, halves.astype(np.float16).astype(np.float32), ranks, k=2)
    np.testing.assert_allclose(alpha_query_expansion(queries, db16, ranks, k=2), want, rtol=1e-6)


def test_qe_names_the_database_when_it_cannot_be_read_as_rows():
    with pytest.raises(ValueError, match="^database holds NaN or infinite values$"):
        alpha_query_expansion(Q, [[0.6, 0.8], [np.nan, 0.0]], np.array([[0]]), k=1)
    with pytest.raises(ValueError, match=r"^database must be \(n, d\) rows, got shape \(1, 3, 2\)$"):
        alpha_query_expansion(Q, np.zeros((1, 3, 2)), np.array([[0]]), k=1)


# augment_with_neighbours: DBA with neighbours given (found by an ANN), in blocks of rows.


def loop_augment(db, neighbours, alpha):
    """Row i + sum over its given neighbours j of max(x_i . x_j, 0)^alpha x_j, normalised, one row at a time."""
    db = np.asarray(db, dtype=np.float64)
    out = []
    for i, row in enumerate(neighbours):
        v = db[i] + sum((max(db[i] @ db[j], 0.0) ** alpha * db[j] for j in row), np.zeros(db.shape[1]))
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def random_rows(n, d, seed):
    rng = np.random.default_rng(seed)
    db = rng.normal(size=(n, d)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    neighbours = np.array([rng.choice(np.delete(np.arange(n), i), size=3, replace=False) for i in range(n)])
    return db, neighbours


@pytest.mark.parametrize("block", [4, 5, 13, None])
def test_augment_with_neighbours_matches_a_loop_over_the_rows(block):
    db, neighbours = random_rows(13, 5, 12)
    kwargs = {} if block is None else {"block": block}
    out = rerank.augment_with_neighbours(db, neighbours, **kwargs)  # alpha 3 by default
    assert out.dtype == np.float32 and out.shape == (13, 5)
    np.testing.assert_allclose(out, loop_augment(db, neighbours, 3), atol=1e-6)
    np.testing.assert_allclose(rerank.augment_with_neighbours(db, neighbours.tolist(), alpha=1, **kwargs),
                               loop_augment(db, neighbours, 1), atol=1e-6)


def test_augment_with_neighbours_writes_into_the_given_array(tmp_path):
    db, neighbours = random_rows(11, 4, 13)
    db16 = mapped(tmp_path, db)  # a float16 index's memory map
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=db.shape)
    out[:] = np.nan
    assert rerank.augment_with_neighbours(db16, neighbours, alpha=2, out=out, block=3) is out
    np.testing.assert_allclose(out, loop_augment(db16, neighbours, 2), atol=1e-6)
    wide = np.full(db.shape, np.nan)
    assert rerank.augment_with_neighbours(db, neighbours, out=wide, block=4) is wide
    np.testing.assert_allclose(wide, loop_augment(db, neighbours, 3), atol=1e-6)


def test_augment_with_no_neighbours_only_normalises():
    db = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    out = rerank.augment_with_neighbours(db, np.zeros((3, 0), dtype=np.int64), block=2)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], rtol=1e-6)


def test_augment_with_neighbours_refuses_a_bad_shape_or_alpha():
    with pytest.raises(ValueError, match=r"^neighbours must be \(3, k\), got \(2, 1\)$"):
        rerank.augment_with_neighbours(DB, np.array([[1], [0]]))
    with pytest.raises(ValueError, match=r"^neighbours must be \(3, k\), got \(3,\)$"):
        rerank.augment_with_neighbours(DB, np.array([1, 0, 0]))
    with pytest.raises(ValueError, match=r"^alpha must be a finite number >= 0, got -1$"):
        rerank.augment_with_neighbours(DB, np.array([[1], [0], [0]]), alpha=-1)


def test_augment_with_neighbours_skips_missing_neighbours_and_refuses_rows_out_of_range():
    # An approximate search marks neighbours it did not find with -1: they add nothing (never the last row).
    db, neighbours = random_rows(9, 4, 14)
    holes = neighbours.copy()
    holes[2, 1:] = -1
    holes[7, 0] = -1
    expected = loop_augment(db, [[j for j in row if j >= 0] for row in holes], 3)
    np.testing.assert_allclose(rerank.augment_with_neighbours(db, holes, block=4), expected, atol=1e-6)
    for bad in (9, -2):
        wrong = neighbours.copy()
        wrong[4, 2] = bad
        with pytest.raises(ValueError, match=r"^neighbour rows must be in \[-1, 9\)$"):
            rerank.augment_with_neighbours(db, wrong)
    with pytest.raises(ValueError, match=r"^neighbours must be integer rows, got float64$"):
        rerank.augment_with_neighbours(db, neighbours + 0.5)


def test_augment_with_neighbours_of_a_single_row_or_a_memory_map_with_missing_neighbours(tmp_path):
    # One row has no other row to list: its neighbours are all missing, and it comes back normalised.
    one = np.array([[3.0, 4.0]], np.float32)
    np.testing.assert_allclose(rerank.augment_with_neighbours(one, np.array([[-1, -1]])), [[0.6, 0.8]], rtol=1e-6)
    db, neighbours = random_rows(9, 4, 15)
    holes = neighbours.copy()
    holes[:, 2] = -1
    expected = loop_augment(db, [[j for j in row if j >= 0] for row in holes], 3)
    out = rerank.augment_with_neighbours(mapped(tmp_path, db), holes, block=4)
    np.testing.assert_allclose(out, loop_augment(mapped(tmp_path, db), holes[:, :2], 3), atol=1e-6)
    assert np.abs(out - expected).max() < 2e-3  # the same up to the float16 rows
