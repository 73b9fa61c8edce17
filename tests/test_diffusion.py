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


def test_graph_and_settings_describe_themselves_and_round_trip():
    graph = path_graph(bridge=0.5)
    assert graph.to_meta() == {"k": 1, "gamma": 1.0, "mutual": True, "knn": "exact", "count": 4, "edges": 6}
    arrays = graph.to_arrays()
    assert sorted(arrays) == ["indices", "indptr", "weights"]
    again = Graph(**arrays, k=1, gamma=1.0)
    np.testing.assert_array_equal(again.affinity().toarray(), graph.affinity().toarray())
    settings = DiffusionSettings(k=7, seeds=3, alpha=0.9, gamma=2.0, candidates=50, truncate=True, iterations=9)
    assert settings.to_meta() == {"k": 7, "seeds": 3, "alpha": 0.9, "gamma": 2.0, "candidates": 50,
                                  "truncate": True, "iterations": 9}
    assert DiffusionSettings.from_meta(settings.to_meta()) == settings


@pytest.mark.parametrize("field", ["k", "seeds", "candidates", "iterations"])
def test_settings_refuse_counts_that_are_not_whole_and_positive(field):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"^diffusion {field} must be a whole number >= 1, got {bad!r}$"):
            DiffusionSettings(**{field: bad}, **({"candidates": 1000} if field != "candidates" else {"seeds": 1}))
    assert getattr(DiffusionSettings(**{field: 12}, **({"seeds": 1} if field == "candidates" else {})), field) == 12


def test_settings_refuse_alpha_and_gamma_out_of_range():
    assert DiffusionSettings(alpha=0.0).alpha == 0.0 and DiffusionSettings(seeds=10, candidates=10).candidates == 10
    for alpha in (-0.01, 1.0):
        with pytest.raises(ValueError, match=rf"^diffusion alpha must be in \[0, 1\), got {alpha!r}$"):
            DiffusionSettings(alpha=alpha)
    for gamma in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^diffusion gamma must be positive, got"):
            DiffusionSettings(gamma=gamma)
    with pytest.raises(ValueError, match=r"^diffusion candidates \(10\) must be at least seeds \(20\)$"):
        DiffusionSettings(seeds=20, candidates=10)


def test_graph_arrays_are_refused_with_what_fails():
    g = path_graph()
    cases = [
        ((g.indptr.astype(np.int32), g.indices, g.weights), r"^graph indptr must be \(n \+ 1,\) int64, got int32 \(5,\)$"),
        ((g.indptr[:1], g.indices[:0], g.weights[:0]), r"^graph indptr must be"),
        ((g.indptr.reshape(1, -1), g.indices, g.weights), r"^graph indptr must be"),
        ((g.indptr + 1, g.indices, g.weights), "^graph indptr does not describe the edge arrays$"),
        ((np.array([0, 2, 1, 5, 6], np.int64), g.indices, g.weights), "^graph indptr does not describe"),
        ((np.array([0, 1, 3, 5, 5], np.int64), g.indices, g.weights), "^graph indptr does not describe"),
        ((g.indptr, g.indices.astype(np.int64), g.weights), r"^graph edges must be int32 indices and float32 weights "
                                                           r"of one length, got int64 \(6,\) and float32 \(6,\)$"),
        ((g.indptr, g.indices, g.weights.astype(np.float64)), "^graph edges must be int32"),
        ((g.indptr, g.indices, g.weights[:5]), "^graph edges must be int32"),
        ((g.indptr, g.indices.reshape(6, 1), g.weights.reshape(6, 1)), "^graph edges must be int32"),
        ((g.indptr, g.indices - 1, g.weights), "^graph edge points outside the 4 images$"),
        ((g.indptr, np.where(g.indices == 3, 4, g.indices).astype(np.int32), g.weights), "^graph edge points outside"),
        ((g.indptr, g.indices, np.where(g.weights > 0, np.nan, 0).astype(np.float32)),
         "^graph weights must be finite and positive$"),
        ((g.indptr, g.indices, np.zeros(6, np.float32)), "^graph weights must be finite and positive$"),
        ((np.array([0, 1, 2], np.int64), np.array([0, 1], np.int32), np.ones(2, np.float32)), "^graph has self loops$"),
        ((np.array([0, 1, 1], np.int64), np.array([1], np.int32), np.ones(1, np.float32)), "^graph is not symmetric$"),
    ]
    for arrays, message in cases:
        with pytest.raises(ValueError, match=message):
            Graph(*arrays, k=1, gamma=1.0)
    # the limits themselves are accepted: an empty graph, and an asymmetry within 1e-6
    assert Graph(np.zeros(3, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), k=1, gamma=1.0).nnz == 0
    near = g.weights.copy()
    near[0] += 5e-7
    assert len(Graph(g.indptr, g.indices, near, k=1, gamma=1.0)) == 4


def test_graph_from_knn_refuses_bad_lists_and_ignores_self_missing_and_negative_entries():
    rows = np.array([[1, 0, -1], [0, 2, 1], [1, 2, 0]])
    sims = np.array([[0.5, 1.0, 0.9], [0.5, -0.4, 1.0], [0.0, 1.0, 0.3]], np.float32)
    graph = graph_from_knn(rows, sims, gamma=2.0, mutual=False, knn="faiss")
    dense = graph.affinity().toarray()
    expected = np.zeros((3, 3), np.float32)
    expected[0, 1] = expected[1, 0] = 0.25  # 1 -> 2 has a negative similarity, 2 -> 1 a zero one: no edge
    expected[0, 2] = expected[2, 0] = 0.09  # only 2 -> 0 lists it: kept without mutual
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    assert graph.to_meta() == {"k": 3, "gamma": 2.0, "mutual": False, "knn": "faiss", "count": 3, "edges": 4}
    assert graph.indices.dtype == np.int32 and graph.indptr.dtype == np.int64 and graph.weights.dtype == np.float32
    mutual = graph_from_knn(rows, sims, gamma=2.0)
    assert mutual.to_meta()["mutual"] is True and mutual.to_meta()["knn"] == "exact"
    np.testing.assert_allclose(mutual.affinity().toarray(), np.where(expected == 0.25, 0.25, 0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"^rows and sims must be \(n, k\), integers and floats, got \(3, 3\) \(3, 2\)$"):
        graph_from_knn(rows, sims[:, :2])
    with pytest.raises(ValueError, match="^rows and sims must be"):
        graph_from_knn(rows.astype(np.float32), sims)
    with pytest.raises(ValueError, match="^rows and sims must be"):
        graph_from_knn(rows.ravel(), sims.ravel())
    for gamma in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="^gamma must be a positive number, got"):
            graph_from_knn(rows, sims, gamma=gamma)
    for bad in (3, -2):
        with pytest.raises(ValueError, match=r"^neighbour rows must be in \[-1, 3\)$"):
            graph_from_knn(np.where(rows == 2, bad, rows), sims)


def test_exact_knn_refuses_k_out_of_range_and_breaks_ties_by_row():
    db = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], np.float32)
    rows, sims = exact_knn(db, 3)
    assert rows.tolist() == [[1, 2, 3], [2, 3, 0], [1, 3, 0], [1, 2, 0]]  # equal sims: lower row first
    assert rows.dtype == np.int64 and sims.dtype == np.float32
    for k in (0, 4, True):
        with pytest.raises(ValueError, match=rf"^k must be between 1 and 3 \(n - 1\), got {k!r}$"):
            exact_knn(db, k)
    assert exact_knn(db, 1)[0][[0, 2, 3]].ravel().tolist() == [1, 1, 1]  # (row 1's single tie: either)


def test_build_graph_caps_k_and_needs_two_images():
    db = np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32)
    graph = build_graph(db, k=10, gamma=1.0)
    assert graph.k == 2 and graph.gamma == 1.0 and graph.mutual
    np.testing.assert_allclose(graph.affinity().toarray(), [[0, 0.6, 0], [0.6, 0, 0.8], [0, 0.8, 0]], atol=1e-6)
    assert not build_graph(db, k=1, gamma=1.0, mutual=True).affinity().toarray()[0, 2]
    either = build_graph(db, k=1, gamma=1.0, mutual=False).affinity().toarray()
    np.testing.assert_allclose(either, [[0, 0.6, 0], [0.6, 0, 0.8], [0, 0.8, 0]], atol=1e-6)
    with pytest.raises(ValueError, match="^a graph needs at least two images$"):
        build_graph(db[:1], k=1)
