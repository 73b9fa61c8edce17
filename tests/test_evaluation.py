"""The evaluation's rankings (`retrieval.evaluation.rank_queries`), each against an oracle composed
by hand from the parts it wires together: whitening, DBA, αQE, diffusion, seeds, the ANN's depth.

tests/test_evaluate_command.py runs whole evaluations on a toy dataset; tests/test_engine.py checks
that the engine and the evaluation rank alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from retrieval import evaluation
from retrieval.database import augment_database
from retrieval.defaults import DEFAULT
from retrieval.diffusion import Diffusion, build_graph
from retrieval.evaluation import rank_queries
from retrieval.rerank import alpha_query_expansion
from retrieval.search import Searcher
from retrieval.whitening import apply_whitening, learn_whitening


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


DB, QUERIES = _unit(40, 12, 0), _unit(5, 12, 1)
# The default's kind of diffusion, on a graph small enough for 40 rows.
DIFFUSION = dataclasses.replace(DEFAULT.diffusion, k=5, seeds=3, candidates=20)


def _order(sims: np.ndarray) -> list[int]:
    return np.argsort(-sims, kind="stable").tolist()


def test_without_reranking_each_query_ranks_every_row_by_cosine():
    ranks, seconds = rank_queries(DB, QUERIES, backend="exact")
    assert ranks.shape == (5, 40) and ranks.dtype == np.int64
    assert seconds.shape == (5,) and (seconds > 0).all()
    assert [r.tolist() for r in ranks] == [_order(DB @ q) for q in QUERIES]
    assert np.array_equal(rank_queries(DB, QUERIES)[0], ranks)  # the default backend, the KD-tree, ties alike


def test_whitening_applies_to_the_database_and_to_each_query():
    whitening = learn_whitening(DB, dim=8)
    ranks, _ = rank_queries(DB, QUERIES, backend="exact", whitening=whitening)
    db, queries = apply_whitening(DB, whitening), apply_whitening(QUERIES, whitening)
    assert [r.tolist() for r in ranks] == [_order(db @ q) for q in queries]
    assert not np.array_equal(ranks, rank_queries(DB, QUERIES, backend="exact")[0])


def test_dba_ranks_against_the_augmented_rows_with_the_alpha_given():
    ranks, _ = rank_queries(DB, QUERIES, backend="exact", dba=3, alpha=2.0)
    augmented = augment_database(DB, k=3, alpha=2.0)
    assert [r.tolist() for r in ranks] == [_order(augmented @ q) for q in QUERIES]
    assert not np.array_equal(ranks, rank_queries(DB, QUERIES, backend="exact", dba=3, alpha=3.0)[0])


def test_query_expansion_searches_again_with_the_expanded_query():
    ranks, _ = rank_queries(DB, QUERIES, backend="exact", qe=2, alpha=3.0)
    first = np.array([_order(DB @ q) for q in QUERIES])
    expanded = alpha_query_expansion(QUERIES, DB, first[:, :2], k=2, alpha=3.0)
    assert [r.tolist() for r in ranks] == [_order(DB @ q) for q in expanded]


def test_diffusion_reranks_each_first_ranking_over_the_database_graph():
    ranks, _ = rank_queries(DB, QUERIES, backend="exact", diffusion=DIFFUSION)
    diffusion = Diffusion(build_graph(DB, k=DIFFUSION.k, gamma=DIFFUSION.gamma), DIFFUSION)
    for q, got in zip(QUERIES, ranks):
        first = np.array(_order(DB @ q))
        want, _ = diffusion.ranked(first, DB[first] @ q)
        assert got.tolist() == want.tolist()
    assert not np.array_equal(ranks, rank_queries(DB, QUERIES, backend="exact")[0])


def test_seed_ranks_seed_the_diffusion_and_nothing_without_it():
    seeds = np.array([_order(-(DB @ q)) for q in QUERIES], dtype=np.int64)  # the worst rows first
    ranks, _ = rank_queries(DB, QUERIES, backend="exact", diffusion=DIFFUSION, seed_ranks=seeds)
    diffusion = Diffusion(build_graph(DB, k=DIFFUSION.k, gamma=DIFFUSION.gamma), DIFFUSION)
    for q, seeded, got in zip(QUERIES, seeds, ranks):
        want, _ = diffusion.ranked(seeded, DB[seeded] @ q)
        assert got.tolist() == want.tolist()
    plain, _ = rank_queries(DB, QUERIES, backend="exact")
    assert np.array_equal(rank_queries(DB, QUERIES, backend="exact", seed_ranks=seeds)[0], plain)


def test_reuse_keeps_dba_rows_and_graphs_by_their_settings(monkeypatch):
    made = {"dba": 0, "graph": 0}
    real_dba, real_graph = evaluation.augment_database, evaluation.graph_for

    def dba(*args, **kwargs):
        made["dba"] += 1
        return real_dba(*args, **kwargs)

    def graph(*args, **kwargs):
        made["graph"] += 1
        return real_graph(*args, **kwargs)

    monkeypatch.setattr(evaluation, "augment_database", dba)
    monkeypatch.setattr(evaluation, "graph_for", graph)
    reuse: dict = {}
    first, _ = rank_queries(DB, QUERIES, backend="exact", dba=3, diffusion=DIFFUSION, reuse=reuse)
    again, _ = rank_queries(DB, QUERIES, backend="exact", dba=3, qe=2, diffusion=DIFFUSION, reuse=reuse)
    assert made == {"dba": 1, "graph": 1}
    fresh, _ = rank_queries(DB, QUERIES, backend="exact", dba=3, qe=2, diffusion=DIFFUSION)
    assert np.array_equal(again, fresh) and made == {"dba": 2, "graph": 2}
    # Other DBA rows are another graph; another alpha other rows; another graph k another graph.
    rank_queries(DB, QUERIES, backend="exact", dba=2, diffusion=DIFFUSION, reuse=reuse)
    assert made == {"dba": 3, "graph": 3}
    rank_queries(DB, QUERIES, backend="exact", dba=3, alpha=2.0, diffusion=DIFFUSION, reuse=reuse)
    assert made == {"dba": 4, "graph": 4}
    rank_queries(DB, QUERIES, backend="exact", dba=3, diffusion=dataclasses.replace(DIFFUSION, k=4), reuse=reuse)
    assert made == {"dba": 4, "graph": 5}
    assert np.array_equal(first, rank_queries(DB, QUERIES, backend="exact", dba=3, diffusion=DIFFUSION)[0])


def test_an_indexed_row_sent_as_a_query_comes_first_after_dba():
    ranks, _ = rank_queries(DB, DB[[7, 21]], backend="exact", dba=3, qe=2, diffusion=DIFFUSION)
    assert ranks[:, 0].tolist() == [7, 21]


@pytest.mark.parametrize("ann_k", [10, 40])
def test_the_ann_backend_ranks_its_top_k_then_every_other_row_last_first(monkeypatch, ann_k):
    built = []

    def exact_in_place_of_the_ann(db, backend, ann):
        built.append(backend)
        return Searcher(db, backend="exact")

    monkeypatch.setattr(evaluation, "make_searcher", exact_in_place_of_the_ann)
    ranks, _ = rank_queries(DB, QUERIES, backend="ann", ann_k=ann_k)
    assert built == ["ann"]
    for q, got in zip(QUERIES, ranks):
        top = _order(DB @ q)[:ann_k]
        rest = sorted(set(range(40)) - set(top), reverse=True)  # what the ANN missed: highest rows first
        assert got.tolist() == top + rest
