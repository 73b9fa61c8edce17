"""The one query path (`retrieval.query`): each step checked against a hand-made oracle on seeded rows."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.diffusion import Diffusion, DiffusionSettings, build_graph
from retrieval.query import DUPLICATE_TOLERANCE, QueryPath, put_first, self_similarity, similarities
from retrieval.rerank import alpha_query_expansion
from retrieval.search import Searcher


def _rows(n: int = 40, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _oracle(db: np.ndarray, q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    sims = db @ q
    order = np.argsort(-sims, kind="stable")[:depth]
    return order, sims[order]


# ---------------------------------------------------------------- self_similarity


def test_self_similarity_is_each_row_dotted_with_its_stored_copy():
    own = _rows(6, 8, seed=1)
    stored = own + 0.01 * _rows(6, 8, seed=2)  # as DBA mixes neighbours into a row
    got = self_similarity(own, stored)  # the default: rows kept in float32
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, [float(own[i] @ stored[i]) for i in range(6)], rtol=0, atol=1e-6)


def test_self_similarity_reads_the_rows_as_saved_in_float16():
    own = _rows(6, 8, seed=3)
    stored = own + 0.01 * _rows(6, 8, seed=4)
    halves = stored.astype(np.float16).astype(np.float32)
    got = self_similarity(own, stored, "float16")
    np.testing.assert_allclose(got, np.sum(own * halves, axis=1), rtol=0, atol=1e-7)
    # float16 rounding moves the value by more than the tolerance's resolution, so the dtype matters
    assert np.max(np.abs(got - self_similarity(own, stored))) > 1e-6


# ---------------------------------------------------------------- similarities


def test_similarities_are_the_query_cosine_with_each_row_asked_in_that_order():
    db = _rows(7, 8, seed=5)
    q = _rows(1, 8, seed=6)[0]
    got = similarities(q.astype(np.float64), db, np.array([5, 0, 5]))
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, [float(db[5] @ q), float(db[0] @ q), float(db[5] @ q)], rtol=0, atol=1e-6)
    one = similarities(q, db, np.array([3]))  # a single row is a row, not "no rows"
    assert one.shape == (1,) and one[0] == pytest.approx(float(db[3] @ q), abs=1e-6)
    none = similarities(q, db, np.array([], np.int64))
    assert none.shape == (0,) and none.dtype == np.float32


def test_similarities_read_float16_rows_as_stored():
    db = _rows(7, 8, seed=7)
    q = _rows(1, 8, seed=8)[0]
    halves = db.astype(np.float16)
    got = similarities(q, halves, np.arange(7))
    np.testing.assert_allclose(got, halves.astype(np.float32) @ q, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- put_first


def test_put_first_leaves_a_ranking_without_a_duplicate_alone():
    assert put_first([4, 2, 9], [0.9, 0.8, 0.7], None) == ([4, 2, 9], [0.9, 0.8, 0.7])
    assert put_first([], [], 3) == ([], [])
    assert put_first([3, 2], [0.9, 0.8], 3) == ([3, 2], [0.9, 0.8])


def test_put_first_moves_the_duplicate_up_with_the_best_score():
    assert put_first([4, 2, 9], [0.9, 0.8, 0.7], 9) == ([9, 4, 2], [0.9, 0.9, 0.8])
    # not in the list at all: it comes in first and the last one drops out
    assert put_first([4, 2, 9], [0.9, 0.8, 0.7], 5) == ([5, 4, 2], [0.9, 0.9, 0.8])


# ---------------------------------------------------------------- QueryPath.rank


def test_rank_without_reranking_is_the_exact_search():
    db = _rows()
    q = _rows(1, seed=9)[0]
    path = QueryPath(db, Searcher(db, backend="exact"))  # qe defaults to 0: no expansion
    ranked = path.rank(q.astype(np.float64), 7)  # a float64, 1-D query is taken as it comes
    rows, sims = _oracle(db, q, 7)
    np.testing.assert_array_equal(ranked.rows, rows)
    np.testing.assert_allclose(ranked.scores, sims, atol=1e-6)
    assert ranked.rows.dtype == np.int64 and ranked.scores.dtype == np.float32
    assert ranked.same is None


def test_rank_with_query_expansion_searches_again_with_the_expanded_query():
    db = _rows()
    q = _rows(1, seed=9)
    path = QueryPath(db, Searcher(db, backend="exact"), qe=3)  # alpha defaults to 3, as in the recipe
    first, _ = _oracle(db, q[0], 3)
    expanded = alpha_query_expansion(q, db, first[None], k=3, alpha=3.0)[0]
    rows, sims = _oracle(db, expanded, 10)
    ranked = path.rank(q[0], 10)
    np.testing.assert_array_equal(ranked.rows, rows)
    np.testing.assert_allclose(ranked.scores, sims, atol=1e-6)
    assert not np.array_equal(rows, _oracle(db, q[0], 10)[0])  # the expansion changed something


def test_an_indexed_row_sent_as_the_query_is_found_and_first():
    db = _rows()
    path = QueryPath(db, Searcher(db, backend="exact"), qe=3)
    ranked = path.rank(db[11], 5)
    assert ranked.same == 11 and ranked.rows[0] == 11 and len(ranked.rows) == 5


def test_seeded_diffusion_ranks_from_the_given_seeds_and_keeps_them_all():
    db = _rows(60, seed=5)
    settings = DiffusionSettings(k=5, seeds=3, candidates=20)
    diffusion = Diffusion(build_graph(db, k=5), settings)
    path = QueryPath(db, Searcher(db, backend="exact"), diffusion=diffusion)
    q = _rows(1, seed=6)[0]
    # verified seeds: a ranking the query's own similarity would not give (its worst rows first)
    seeds = np.argsort(db @ q, kind="stable")[:30].astype(np.int64)
    ranked = path.rank(q, 4, seed_rows=seeds)
    rows, scores = diffusion.ranked(seeds, q @ db[seeds[:3]].T)
    assert len(ranked.rows) == max(4, len(seeds))  # a seeded ranking is kept whole, not cut to depth
    np.testing.assert_array_equal(ranked.rows, rows[: len(ranked.rows)])
    np.testing.assert_allclose(ranked.scores, scores[: len(ranked.rows)], atol=1e-6)
    # and it is not what the query's own first rows would have seeded
    own = path.rank(q, len(ranked.rows))
    assert not np.array_equal(own.rows, ranked.rows)


# ---------------------------------------------------------------- duplicate_row


def test_duplicate_row_ignores_padding_rows():
    db = _rows(5)
    path = QueryPath(db, Searcher(db, backend="exact"))
    # FAISS pads a short result with -1 and a score; a -1 is never the image
    assert path.duplicate_row(np.array([1.0, 0.5], np.float32), np.array([-1, 2])) is None


def test_duplicate_row_takes_the_closest_within_the_tolerance():
    db = _rows(5)
    own = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    path = QueryPath(db, Searcher(db, backend="exact"), self_similarity=own, augmented=True)
    near = DUPLICATE_TOLERANCE / 4
    # row 1 is 3/4 of the tolerance off, row 3 a quarter: row 3 wins; row 0 is outside
    scores = np.array([0.9 + 2 * DUPLICATE_TOLERANCE, 0.8 + 3 * near, 0.6 - near], np.float64)
    assert path.duplicate_row(scores, np.array([0, 1, 3])) == 3
    assert path.duplicate_row(scores[:1], np.array([0])) is None
    # a photo stored twice: both rows equally close, the one ranked first is the image
    twin = QueryPath(db, Searcher(db, backend="exact"), self_similarity=np.array([1, 1, 1, 1, 1], np.float32))
    assert twin.duplicate_row(np.array([1.0, 1.0, 0.3], np.float32), np.array([4, 1, 0])) == 4
    # with DBA and no self-similarities nothing can be told
    blind = QueryPath(db, Searcher(db, backend="exact"), augmented=True)
    assert blind.duplicate_row(np.array([1.0]), np.array([0])) is None


@pytest.mark.parametrize("qe", [0, 2])
def test_rank_depth_is_capped_by_the_rows(qe):
    db = _rows(6)
    ranked = QueryPath(db, Searcher(db, backend="exact"), qe=qe).rank(_rows(1, seed=7)[0], 6)
    assert sorted(ranked.rows.tolist()) == list(range(6))


class _ShortLists:
    """A searcher that, as an ANN can, finds fewer rows than asked and pads the list with -1."""

    def __init__(self, db: np.ndarray, found: int):
        self.exact, self.found = Searcher(db, backend="exact"), found

    def __len__(self) -> int:
        return len(self.exact)

    def search(self, q, k):
        scores, rows = self.exact.search(q, k)
        scores[:, self.found:], rows[:, self.found:] = -np.inf, -1
        return scores, rows


@pytest.mark.parametrize("qe, diffusion", [(0, False), (2, False), (2, True)])
def test_the_rows_an_ann_pads_a_short_list_with_never_reach_the_ranking(qe, diffusion):
    db = _rows(30, seed=9)
    settings = DiffusionSettings(k=5, seeds=3, candidates=20, truncate=True)
    path = QueryPath(db, _ShortLists(db, 6), qe=qe,
                     diffusion=Diffusion(build_graph(db, k=5), settings) if diffusion else None)
    ranked = path.rank(db[0], 10)  # row 0 itself is found (first), and kept
    assert len(ranked.rows) == 6 and (ranked.rows >= 0).all() and ranked.rows[0] == 0  # no -1: the last image
    assert np.isfinite(ranked.scores).all() and np.isfinite(ranked.similarities).all()
