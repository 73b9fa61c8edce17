"""Diffusion on hand-built graphs, against values and rankings worked out by hand."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import sparse

from retrieval import diffusion as diffusion_module
from retrieval.diffusion import (
    CandidateDiffusion, Diffusion, DiffusionSettings, Graph, build_graph, conjugate_gradient, exact_knn, graph_from_knn,
    normalized,
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
    # A shorter first ranking (an ANN that found fewer rows) is diffused whole: 1 seeds, 3 has no edge to it.
    assert truncated.rerank(np.array([1, 3]), np.array([0.9, 0.5])).tolist() == [1, 3]


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
                                  "truncate": True, "iterations": 9, "self_loops": False, "degree_power": 0.0,
                                  "blend": 1.0, "seed_ratio": 0.0}
    assert DiffusionSettings.from_meta(settings.to_meta()) == settings
    # index.json written before self loops, degree power, blend and seed ratio: diffusion as it was
    old = {"k": 7, "seeds": 3, "alpha": 0.9, "gamma": 2.0, "candidates": 50, "truncate": True, "iterations": 9}
    assert DiffusionSettings.from_meta(old) == settings
    new = replace(settings, self_loops=True, degree_power=0.25, blend=0.5, seed_ratio=0.9)
    assert DiffusionSettings.from_meta(new.to_meta()) == new


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


def test_graph_from_knn_keeps_a_neighbour_listed_twice_once_at_its_largest_weight():
    # An approximate search may list a neighbour twice: 0 -> 1 at 0.5 and at 0.8 is one edge of 0.8^2.
    rows = np.array([[1, 1], [0, -1]])
    sims = np.array([[0.5, 0.8], [0.8, 0.0]], np.float32)
    for mutual in (True, False):
        dense = graph_from_knn(rows, sims, gamma=2.0, mutual=mutual).affinity().toarray()
        np.testing.assert_allclose(dense, [[0, 0.64], [0.64, 0]], rtol=1e-6)
    reordered = graph_from_knn(rows[:, ::-1], sims[:, ::-1], gamma=2.0).affinity().toarray()
    np.testing.assert_allclose(reordered, [[0, 0.64], [0.64, 0]], rtol=1e-6)
    # Repeats in any row and of any neighbour, not only the first ones: 2 lists 0 twice, 1 lists 2 twice.
    rows = np.array([[1, 2, -1], [0, 2, 2], [0, 1, 0]])
    sims = np.array([[0.5, 0.6, 0.0], [0.5, 0.7, 0.9], [0.3, 0.9, 0.6]], np.float32)
    dense = graph_from_knn(rows, sims, gamma=1.0, mutual=False).affinity().toarray()
    np.testing.assert_allclose(dense, [[0, 0.5, 0.6], [0.5, 0, 0.9], [0.6, 0.9, 0]], rtol=1e-6)


def test_exact_knn_refuses_k_out_of_range_and_breaks_ties_by_row():
    db = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], np.float32)
    rows, sims = exact_knn(db, 3)
    assert rows.tolist() == [[1, 2, 3], [2, 3, 0], [1, 3, 0], [1, 2, 0]]  # equal sims: lower row first
    assert rows.dtype == np.int64 and sims.dtype == np.float32
    for k in (0, 4, True):
        with pytest.raises(ValueError, match=rf"^k must be between 1 and 3 \(n - 1\), got {k!r}$"):
            exact_knn(db, k)
    assert exact_knn(db, 1)[0].ravel().tolist() == [1, 2, 1, 1]  # row 1's tie between 2 and 3: the lower


def test_exact_knn_cuts_ties_at_the_kth_place_by_row_in_wide_blocks():
    # 300 copies of one row and a few others: each copy's 5 nearest are all ties, and argpartition
    # alone picks any 5 of the 299 other copies. The lowest rows are kept, as a stable full sort does.
    rng = np.random.default_rng(3)
    copies = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (300, 1))
    others = rng.standard_normal((20, 3)).astype(np.float32)
    others[:, 0] = -np.abs(others[:, 0])
    db = np.r_[copies, others / np.linalg.norm(others, axis=1, keepdims=True)][rng.permutation(320)]
    full = db.astype(np.float64) @ db.T.astype(np.float64)
    np.fill_diagonal(full, -np.inf)
    rows, sims = exact_knn(db, 5)
    expected = np.argsort(-np.round(full, 5), axis=1, kind="stable")[:, :5]
    copy_rows = np.flatnonzero(db[:, 0] == 1.0)
    np.testing.assert_array_equal(rows[copy_rows], expected[copy_rows])
    assert rows[copy_rows[0]].tolist() == copy_rows[1:6].tolist()


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


def chain(n: int) -> Graph:
    """Images 0 - 1 - ... - (n - 1) in a line, each edge of weight 1."""
    a = sparse.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], format="csr", dtype=np.float32)
    a.sort_indices()
    return Graph(a.indptr.astype(np.int64), a.indices.astype(np.int32), a.data.astype(np.float32), k=2, gamma=1.0)


# S of path_graph() by hand: S01 = S23 = 1/sqrt(2), S12 = 1/2.
PATH_S = np.array([[0, 2 ** -0.5, 0, 0], [2 ** -0.5, 0, 0.5, 0], [0, 0.5, 0, 2 ** -0.5], [0, 0, 2 ** -0.5, 0]])


def test_ranked_scores_are_the_weighted_diffusion_relative_to_the_best():
    # Seeds 0 (sim 0.6) and 3 (sim 0.3) with gamma 2: y = 0.36 e0 + 0.09 e3. path_graph() is its own mirror
    # (0 <-> 3, 1 <-> 2), so by linearity f = 0.36 BY_HAND + 0.09 BY_HAND reversed: f0 > f1 > f3 > f2.
    f = 0.36 * BY_HAND + 0.09 * BY_HAND[::-1]
    assert f[0] < 1  # the best score is below 1: the scores are divided by it, whatever its size
    diffusion = Diffusion(path_graph(), DiffusionSettings(k=1, seeds=2, alpha=0.5, gamma=2.0, candidates=3))
    rows, sims = np.array([0, 3, 2, 1], np.int32), np.array([0.6, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(diffusion.scores(rows, sims), f[[0, 3, 2]], rtol=1e-5)
    ranking, scores = diffusion.ranked(rows, sims)
    # only the top 3 (0, 3, 2) are re-ranked; 1 follows them with score 0
    assert ranking.tolist() == [0, 3, 2, 1] and ranking.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, [1.0, f[3] / f[0], f[2] / f[0], 0.0], rtol=1e-5)
    # the mirror image: seeded by 3 (0.6) and 0 (0.3), image i scores f[3 - i]
    assert diffusion.rerank(np.array([3, 0, 2, 1]), sims).tolist() == [3, 2, 0, 1]
    # No positive similarity: nothing is seeded, every score is 0 and the first order stays.
    ranking, scores = diffusion.ranked(np.array([2, 0, 3, 1]), np.array([-0.2, 0.0]))
    assert ranking.tolist() == [2, 0, 3, 1] and scores.tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("truncate", [False, True])
def test_seeds_are_capped_by_the_rows_and_similarities_given(truncate):
    diffusion = Diffusion(path_graph(), DiffusionSettings(k=1, seeds=10, alpha=0.5, gamma=1.0, truncate=truncate))
    # more similarities than rows: all 4 rows seed, with their own similarity (dense solve as the oracle)
    sims = np.array([0.9, 0.8, 0.4, 0.2, 0.1, 0.05])
    y = np.zeros(4)
    y[[1, 0, 3, 2]] = sims[:4]
    expected = np.linalg.solve(np.eye(4) - 0.5 * PATH_S, y)[[1, 0, 3, 2]]
    np.testing.assert_allclose(diffusion.scores(np.array([1, 0, 3, 2]), sims), expected, rtol=1e-5)
    # fewer similarities than seeds: only image 3 seeds
    np.testing.assert_allclose(diffusion.scores(np.array([3, 0, 1, 2]), np.array([0.9])),
                               0.9 * BY_HAND[::-1][[3, 0, 1, 2]], rtol=1e-5)


@pytest.mark.parametrize("truncate", [False, True])
def test_diffusion_takes_its_iterations_from_the_settings(truncate):
    # Each conjugate-gradient step reaches one image further along a line: after 2 steps from image 0
    # only 0, 1 and 2 have a score, and the others keep their first order after them.
    rows = np.array([0, 7, 6, 5, 4, 3, 2, 1])
    two = Diffusion(chain(8), DiffusionSettings(k=2, seeds=1, alpha=0.5, gamma=1.0, iterations=2, truncate=truncate))
    ranking, scores = two.ranked(rows, np.array([0.9]))
    assert ranking.tolist() == [0, 1, 2, 7, 6, 5, 4, 3]
    assert np.all(scores[:3] > 0) and scores[3:].tolist() == [0.0] * 5
    many = Diffusion(chain(8), DiffusionSettings(k=2, seeds=1, alpha=0.5, gamma=1.0, iterations=20, truncate=truncate))
    assert many.rerank(rows, np.array([0.9])).tolist() == list(range(8))


def test_conjugate_gradient_does_20_steps_by_default():
    s = normalized(chain(30).affinity())
    y = np.zeros(30, np.float32)
    y[0] = 1
    f = conjugate_gradient(s, y, alpha=0.9)  # far from converged: every step reaches one image further
    assert np.all(f[:21] > 0) and not f[21:].any()
    assert np.count_nonzero(conjugate_gradient(s, y, alpha=0.9, iterations=21)) == 22


def test_conjugate_gradient_stops_at_a_relative_residual_and_returns_float32():
    # Two images joined by one edge: S = [[0, 1], [1, 0]]; with alpha 0.5, f = y + 0.5 S f solves to
    # (4/3, 2/3) for y = e0. The first residual is alpha S y = (0, 1) for y = 2 e0.
    s = normalized(path_graph().affinity()[:2, :2])
    np.testing.assert_array_equal(s.toarray(), [[0, 1], [1, 0]])
    # |r| = 1 is exactly tol |y| = 0.5 * 2: accepted at once, y comes back as it is
    assert conjugate_gradient(s, np.array([2, 0], np.float32), alpha=0.5, tol=0.5).tolist() == [2.0, 0.0]
    # just below: one step, f = (2, 1) with the residual (0.5, 0), which tol 0.49 accepts and tol 0.1 does not
    assert conjugate_gradient(s, np.array([2, 0], np.float32), alpha=0.5, tol=0.49).tolist() == [2.0, 1.0]
    np.testing.assert_allclose(conjugate_gradient(s, np.array([2, 0], np.float32), alpha=0.5, tol=0.1),
                               [8 / 3, 4 / 3], rtol=1e-6)
    # relative: a tiny right-hand side is solved as well as a unit one
    np.testing.assert_allclose(conjugate_gradient(s, np.array([1e-6, 0], np.float32), alpha=0.5),
                               [4e-6 / 3, 2e-6 / 3], rtol=1e-5)
    # integers or float64 in, float32 out
    for y in ([1, 0], np.array([1.0, 0.0])):
        f = conjugate_gradient(s, y, alpha=0.5)
        assert f.dtype == np.float32
        np.testing.assert_allclose(f, [4 / 3, 2 / 3], rtol=1e-6)


def test_normalized_keeps_isolated_rows_zero_and_returns_float32():
    # image 0's edge to 1 is a stored zero (as a sparse operation can leave): 0 is isolated all the same
    a = sparse.csr_matrix((np.array([0, 0, 1, 1], np.float32), (np.array([0, 1, 1, 2]), np.array([1, 0, 2, 1]))),
                          shape=(3, 3))
    assert a.nnz == 4
    s = normalized(a)
    np.testing.assert_array_equal(s.toarray(), [[0, 0, 0], [0, 0, 1], [0, 1, 0]])
    wide = normalized(path_graph().affinity().astype(np.float64))
    assert wide.dtype == np.float32
    np.testing.assert_allclose(wide.toarray(), PATH_S, rtol=1e-6)


def test_results_depend_only_on_the_float32_similarities_and_the_row_numbers():
    rng = np.random.default_rng(3)
    rows = np.array([[i - 1, i + 1 if i < 11 else -1] for i in range(12)])  # a line, -1 past the end
    sims = rng.uniform(0.2, 1.0, rows.shape)  # float64
    wide, narrow = graph_from_knn(rows, sims), graph_from_knn(rows, sims.astype(np.float32))
    np.testing.assert_array_equal(wide.weights, narrow.weights)
    np.testing.assert_array_equal(wide.indices, narrow.indices)
    diffusion = Diffusion(narrow, DiffusionSettings(k=2, seeds=6, alpha=0.9, gamma=3.0))
    first, query = rng.permutation(12), rng.uniform(0.2, 1.0, 6)
    expected = diffusion.scores(first, query.astype(np.float32))
    np.testing.assert_array_equal(diffusion.scores(first, query), expected)
    np.testing.assert_array_equal(diffusion.scores(first.astype(np.float64), query), expected)


def test_ties_keep_their_first_order_among_many_images():
    # 100 images, only 0 - 1 joined: seeded by 0, the 98 others all score 0 and keep their first order.
    n = 100
    graph = Graph(np.r_[0, 1, 2, np.full(n - 2, 2)].astype(np.int64), np.array([1, 0], np.int32),
                  np.ones(2, np.float32), k=1, gamma=1.0)
    others = np.random.default_rng(1).permutation(np.arange(1, n))
    diffusion = Diffusion(graph, DiffusionSettings(k=1, seeds=1, alpha=0.5, gamma=1.0))
    assert diffusion.rerank(np.r_[0, others], np.array([0.9])).tolist() == [0, 1] + [r for r in others if r != 1]


def test_exact_knn_in_blocks_matches_a_full_sort(monkeypatch):
    monkeypatch.setattr(diffusion_module, "_BLOCK", 16)  # 50 rows: blocks starting at 0, 16, 32 and 48
    rng = np.random.default_rng(5)
    db = rng.standard_normal((50, 6)).astype(np.float32)
    full = db.astype(np.float64) @ db.T.astype(np.float64)
    np.fill_diagonal(full, -np.inf)
    for k in (1, 5, 49):
        rows, sims = exact_knn(db, k)
        expected = np.argsort(-full, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_allclose(sims, np.take_along_axis(full, expected, axis=1), rtol=1e-5, atol=1e-6)


def test_graph_defaults_small_graphs_and_named_refusals():
    # gamma 3 by default, in both builders; two images are enough for build_graph, one for a graph
    graph = build_graph(np.array([[1, 0], [0.6, 0.8]], np.float32), k=1)
    assert graph.gamma == 3.0 and graph.to_meta()["edges"] == 2
    np.testing.assert_allclose(graph.affinity().toarray(), [[0, 0.216], [0.216, 0]], rtol=1e-6)
    from_knn = graph_from_knn(np.array([[1], [0]]), np.array([[0.5], [0.5]]))
    assert from_knn.gamma == 3.0 and from_knn.weights.tolist() == [0.125, 0.125]
    one = graph_from_knn(np.array([[-1]]), np.array([[0.0]]))
    assert len(one) == 1 and one.nnz == 0
    ranking, scores = Diffusion(one, DiffusionSettings(k=1, seeds=1)).ranked(np.array([0]), np.array([0.9]))
    assert ranking.tolist() == [0] and scores.tolist() == [1.0]
    # an asymmetry of exactly 1e-6 (in float32) is still symmetric enough
    tiny = np.float32(1e-6)
    assert Graph(np.array([0, 1, 2], np.int64), np.array([1, 0], np.int32), np.array([2 * tiny, tiny]),
                 k=1, gamma=1.0).nnz == 2
    with pytest.raises(ValueError, match=r"^database must be \(n, d\) rows, got shape \(2, 2, 2\)$"):
        build_graph(np.zeros((2, 2, 2)), k=1)
    with pytest.raises(ValueError, match=r"^database must be \(n, d\) rows, got shape \(2, 2, 2\)$"):
        exact_knn(np.zeros((2, 2, 2)), 1)
    with pytest.raises(ValueError, match="^database holds NaN or infinite values$"):
        exact_knn(np.array([[np.nan, 0], [0, 1]]), 1)


def test_exact_knn_cuts_a_single_tie_at_the_kth_place_by_row():
    # Twins: 60 random rows and a copy of each, shuffled. Where a row's k-th nearest has its twin just
    # outside the k, the tie is one row wide; the lower row of the two is kept, as a stable full sort does.
    # Small integers, so that every inner product is exact whatever the order of the sums.
    rng = np.random.default_rng(11)
    base = rng.integers(-3, 4, (60, 8)).astype(np.float32)
    db = np.r_[base, base][rng.permutation(120)]
    full = db.astype(np.float64) @ db.T.astype(np.float64)
    np.fill_diagonal(full, -np.inf)
    for k in (2, 3, 4, 5, 6, 7, 8, 40):
        rows, _ = exact_knn(db, k)
        expected = np.argsort(-full, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(rows, expected)


def small_place_beside_a_clique() -> Graph:
    """A place with two photos {0, 1} (edge 1) beside a six-photo clique {2..7} (edges 1), 0-2 joined at 0.5."""
    a = np.zeros((8, 8), np.float32)
    a[0, 1] = a[1, 0] = 1.0
    a[2:, 2:] = 1.0 - np.eye(6, dtype=np.float32)
    a[0, 2] = a[2, 0] = 0.5
    m = sparse.csr_matrix(a)
    return Graph(m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.float32), k=5, gamma=1.0)


def test_degree_power_and_blend_keep_a_small_place_from_being_buried_by_a_clique():
    # The first ranking: the query's best match 0, two clique photos, then 0's other photo 1.
    rows = np.array([0, 2, 3, 1, 4, 5, 6, 7])
    sims = np.array([0.9, 0.7, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5], np.float32)
    graph = small_place_beside_a_clique()
    base = dict(k=5, seeds=3, alpha=0.9, gamma=1.0, candidates=8)
    # Plain diffusion buries photo 1 behind the whole clique and puts a clique photo above the best match.
    plain = Diffusion(graph, DiffusionSettings(**base, truncate=True))
    assert plain.rerank(rows, sims).tolist() == [2, 0, 3, 4, 5, 6, 7, 1]
    # Divided by degree^0.25 (self loops in) and blended half and half with the similarity, 1 rises to third.
    settings = DiffusionSettings(**base, truncate=True, self_loops=True, degree_power=0.25, blend=0.5)
    ranking, scores = Diffusion(graph, settings).ranked(rows, sims)
    assert ranking.tolist() == [0, 2, 1, 3, 4, 5, 6, 7]
    # Oracle: a dense solve over the candidates' graph with self loops, in the first ranking's order.
    a = graph.affinity().toarray()[np.ix_(rows, rows)] + np.eye(8)
    degree = a.sum(axis=1)
    s = a / np.sqrt(np.outer(degree, degree))
    y = np.zeros(8)
    y[:3] = sims[:3]  # gamma 1: the seeds weigh their similarity
    f = np.linalg.solve(np.eye(8) - 0.9 * s, y) / degree ** 0.25
    expected = 0.5 * f / f.max() + 0.5 * sims
    np.testing.assert_allclose(scores, np.sort(expected)[::-1], rtol=1e-5)
    # The whole graph (not truncated) diffuses over the same 8 photos: the same ranking and scores.
    whole = Diffusion(graph, replace(settings, truncate=False)).ranked(rows, sims)
    assert whole[0].tolist() == ranking.tolist()
    np.testing.assert_allclose(whole[1], scores, rtol=1e-5)


def test_blend_keeps_the_tail_after_the_candidates_at_its_weighted_similarity():
    settings = DiffusionSettings(k=1, seeds=1, alpha=0.5, gamma=1.0, candidates=3, blend=0.25)
    rows, sims = np.array([0, 2, 1, 3]), np.array([0.9, 0.8, 0.7, 0.1], np.float32)
    ranking, scores = Diffusion(path_graph(bridge=0.5), settings).ranked(rows, sims)
    assert ranking[3] == 3 and scores[3] == pytest.approx(0.75 * 0.1)
    assert np.all(np.diff(scores) <= 0)
    with pytest.raises(ValueError, match="similarity of each of the 4 rows"):
        Diffusion(path_graph(), settings).ranked(rows, sims[:2])


def test_seed_ratio_seeds_only_with_rows_close_to_the_best():
    # Seeds 10 but ratio 0.9: of similarities 0.9, 0.85, 0.5 only the first two (>= 0.81) seed.
    diffusion = Diffusion(path_graph(), DiffusionSettings(k=1, seeds=10, alpha=0.5, gamma=1.0, seed_ratio=0.9))
    y = np.zeros(4)
    y[[1, 0]] = [0.9, 0.85]
    expected = np.linalg.solve(np.eye(4) - 0.5 * PATH_S, y)[[1, 0, 3, 2]]
    np.testing.assert_allclose(diffusion.scores(np.array([1, 0, 3, 2]), np.array([0.9, 0.85, 0.5, 0.1])), expected,
                               rtol=1e-5)


def test_new_settings_are_refused_out_of_range():
    with pytest.raises(ValueError, match="degree_power needs self_loops"):
        DiffusionSettings(degree_power=0.25)
    for name, bad in (("degree_power", 1.5), ("blend", -0.1), ("blend", 1.1), ("seed_ratio", 2.0)):
        with pytest.raises(ValueError, match=rf"^diffusion {name} must be in \[0, 1\], got"):
            DiffusionSettings(self_loops=True, **{name: bad})


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) L2-normalised rows in clusters of about 20, as image descriptors are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 20), d))
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# The default's kind of diffusion: truncated, self loops, degree power, blend.
TRUNCATED = DiffusionSettings(k=8, seeds=5, candidates=120, truncate=True, self_loops=True, degree_power=0.25,
                              blend=0.5)


def test_candidate_diffusion_is_the_stored_graphs_truncated_diffusion_on_the_candidates_own_graph():
    db = clustered(120, 16, 7)
    sims_all = db @ db[0]
    rows = np.argsort(-sims_all, kind="stable")  # a first ranking of every row
    sims = sims_all[rows]
    # Every row a candidate: the candidates' own graph is the stored graph.
    stored = Diffusion(build_graph(db, k=8, gamma=3.0), TRUNCATED).ranked(rows, sims)
    built = CandidateDiffusion(db, TRUNCATED).ranked(rows, sims)
    np.testing.assert_array_equal(built[0], stored[0])
    np.testing.assert_allclose(built[1], stored[1], atol=1e-6)
    # 30 candidates: the stored diffusion of those 30 rows' own graph, the rest after them unchanged.
    few = replace(TRUNCATED, candidates=30)
    got = CandidateDiffusion(db, few).ranked(rows, sims)
    alone = Diffusion(build_graph(db[rows[:30]], k=8, gamma=3.0), few).ranked(np.arange(30), sims[:30])
    np.testing.assert_array_equal(got[0][:30], rows[:30][alone[0]])
    np.testing.assert_allclose(got[1][:30], alone[1], atol=1e-6)
    np.testing.assert_array_equal(got[0][30:], rows[30:])
    # Whole-graph settings are diffused over the candidates' graph all the same: there is no other.
    assert CandidateDiffusion(db, replace(few, truncate=False)).settings.truncate


def test_candidate_diffusion_diffuses_a_shorter_first_ranking_whole():
    db = clustered(40, 8, 8)
    sims_all = db @ db[0]
    rows = np.argsort(-sims_all, kind="stable")[:30]  # an ANN that found 30 rows of the 40 asked
    ranked, _ = CandidateDiffusion(db, replace(TRUNCATED, candidates=40)).ranked(rows, sims_all[rows])
    alone, _ = Diffusion(build_graph(db[rows], k=8, gamma=3.0), replace(TRUNCATED, candidates=30)).ranked(
        np.arange(30), sims_all[rows])
    np.testing.assert_array_equal(ranked, rows[alone])
