"""Diffusion on hand-built graphs, against values and rankings worked out by hand."""

import numpy as np
import pytest

from retrieval.diffusion import (
    Diffusion, DiffusionSettings, Graph, build_graph, conjugate_gradient, exact_knn, graph_from_knn, normalized,
)


def path_graph(bridge: float = 1.0) -> Graph:
    """Two clusters {0, 1} and {2, 3}, each one edge of weight 1, joined by the edge 1-2."""
    rows = [(0, 1, 1.0), (1, 0, 1.0), (1, 2, bridge), (2, 1, bridge), (2, 3, 1.0), (3, 2, 1.0)]
    indptr = np.array([0, 1, 3, 5, 6], dtype=np.int64)
    return Graph(indptr, np.array([c for _, c, _ in rows], np.int32), np.array([w for *_, w in rows], np.float32),
                 k=1, gamma=1.0)


# By hand, bridge 1 and alpha 0.5: degrees 1, 2, 2, 1, so S01 = S23 = 1/sqrt(2) and S12 = 1/2. With
# c = 0.5/sqrt(2) (c^2 = 1/8), f = y + 0.5 S f for y = e0 gives f3 = c f2, f2 = (1/4) f1 / (7/8),
# f1 = c f0 / (1 - 1/14), f0 = 1 / (1 - c f1 / f0).
F2_OVER_F1 = 0.25 / 0.875
F1_OVER_F0 = (0.5 / np.sqrt(2)) / (1 - 0.25 * F2_OVER_F1)
F0 = 1 / (1 - 0.5 / np.sqrt(2) * F1_OVER_F0)
BY_HAND = np.array([F0, F0 * F1_OVER_F0, F0 * F1_OVER_F0 * F2_OVER_F1,
                    0.5 / np.sqrt(2) * F0 * F1_OVER_F0 * F2_OVER_F1])


def test_diffusion_on_two_clusters_matches_the_hand_computed_solution():
    s = normalized(path_graph().affinity())
    np.testing.assert_allclose(s.toarray()[[0, 1, 2], [1, 2, 3]], [1 / np.sqrt(2), 0.5, 1 / np.sqrt(2)], rtol=1e-6)
    f = conjugate_gradient(s, np.array([1, 0, 0, 0], np.float32), alpha=0.5)
    np.testing.assert_allclose(f, BY_HAND, rtol=1e-5)
    np.testing.assert_allclose(BY_HAND[:2], [1.155553, 0.439975], rtol=1e-5)


def test_diffusion_ranks_the_seeds_cluster_before_a_look_alike_from_the_other():
    # The first ranking puts image 2 (other cluster, a look-alike) second; seeded by image 0 alone,
    # diffusion brings 0's cluster-mate 1 before it, and 3 (reached only through 2) last.
    diffusion = Diffusion(path_graph(bridge=0.5), DiffusionSettings(k=1, seeds=1, alpha=0.5, gamma=1.0))
    assert diffusion.rerank(np.array([0, 2, 1, 3]), np.array([0.9, 0.8, 0.7, 0.1])).tolist() == [0, 1, 2, 3]
    # Seeded from image 3 instead, the order reverses.
    assert diffusion.rerank(np.array([3, 0, 1, 2]), np.array([0.9, 0.8, 0.7, 0.1])).tolist() == [3, 2, 1, 0]


def test_truncated_diffusion_and_candidates_keep_the_tail_in_order():
    graph = path_graph(bridge=0.5)
    # Only the top 3 are re-ranked: 3 stays last whatever its score.
    diffusion = Diffusion(graph, DiffusionSettings(k=1, seeds=1, alpha=0.5, gamma=1.0, candidates=3))
    assert diffusion.rerank(np.array([1, 3, 0, 2]), np.array([0.9, 0.5, 0.4, 0.3])).tolist() == [1, 0, 3, 2]
    # Truncated: the subgraph of {1, 3, 0} has no edge 1-3 or 0-3, so 3 gets nothing and drops below 0.
    truncated = Diffusion(graph, DiffusionSettings(k=1, seeds=1, alpha=0.5, gamma=1.0, candidates=3, truncate=True))
    assert truncated.rerank(np.array([1, 3, 0, 2]), np.array([0.9, 0.5, 0.4, 0.3])).tolist() == [1, 0, 3, 2]
    with pytest.raises(ValueError, match="top 3"):
        truncated.rerank(np.array([1, 3]), np.array([0.9, 0.5]))


def test_conjugate_gradient_matches_a_dense_solve_on_a_random_graph():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((60, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    s = normalized(build_graph(db, k=6, gamma=3.0).affinity())
    y = np.zeros((60, 2), np.float32)
    y[[3, 7], 0], y[[10, 11, 12], 1] = 1.0, 0.5
    dense = np.linalg.solve(np.eye(60) - 0.9 * s.toarray(), y)
    np.testing.assert_allclose(conjugate_gradient(s, y, alpha=0.9, iterations=60), dense, rtol=1e-3, atol=1e-5)


def test_graph_from_knn_keeps_mutual_neighbours_with_powered_weights():
    rows = np.array([[1, 2], [0, 2], [1, 3], [2, 0]])  # 0-1 mutual, 1-2 mutual, 2-3 mutual, 0-2 and 3-0 one-way
    sims = np.array([[0.9, 0.5], [0.9, 0.8], [0.8, 0.7], [0.7, 0.1]], np.float32)
    a = graph_from_knn(rows, sims, gamma=2.0).affinity().toarray()
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 0] = 0.81
    expected[1, 2] = expected[2, 1] = 0.64
    expected[2, 3] = expected[3, 2] = 0.49
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    union = graph_from_knn(rows, sims, gamma=2.0, mutual=False).affinity().toarray()
    assert union[0, 2] == pytest.approx(0.25) and union[0, 3] == pytest.approx(0.01)
    # -1 (a missing neighbour from an approximate search) and self entries are ignored.
    assert graph_from_knn(np.array([[-1, 1], [0, 1]]), np.ones((2, 2), np.float32)).nnz == 2


def test_exact_knn_excludes_self_and_sorts_best_first():
    db = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], np.float32)
    rows, sims = exact_knn(db, 2)
    assert rows.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    np.testing.assert_allclose(sims[1], [0.8, 0.6], rtol=1e-6)


def test_bad_graphs_and_settings_are_refused():
    graph = path_graph()
    with pytest.raises(ValueError, match="symmetric"):
        Graph(graph.indptr, graph.indices, graph.weights * np.array([1, 2, 1, 1, 1, 1], np.float32), k=1, gamma=1)
    with pytest.raises(ValueError, match="outside"):
        Graph(graph.indptr, graph.indices + 1, graph.weights, k=1, gamma=1)
    with pytest.raises(ValueError, match="positive"):
        Graph(graph.indptr, graph.indices, -graph.weights, k=1, gamma=1)
    with pytest.raises(ValueError, match="alpha"):
        DiffusionSettings(alpha=1.0)
    with pytest.raises(ValueError, match="candidates"):
        DiffusionSettings(seeds=20, candidates=10)
