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
    with pytest.raises(ValueError, match="^unknown search backend 'faiss'; choose one of kdtree, exact, ann, milvus$"):
        Searcher(random_unit(3, 2, 0), backend="faiss")
    with pytest.raises(ValueError, match="^the milvus backend searches a collection: give milvus=MilvusRows"):
        Searcher(random_unit(3, 2, 0), backend="milvus")
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


# Memory-mapped features, the ANN backend and which structure answers (see Searcher's docstring).


def mapped(tmp_path, rows, dtype=np.float16):
    """Returns `rows` saved as a .npy file and mapped read-only, as `load_index` maps a large index."""
    path = tmp_path / "features.npy"
    np.save(path, np.asarray(rows, dtype=dtype))
    mm = np.load(path, mmap_mode="r")
    assert isinstance(mm, np.memmap)
    return mm


@pytest.fixture
def blocks_calls(monkeypatch):
    """Records every call of `retrieval.ann.exact_search_blocks` (which still does the work)."""
    import retrieval.ann as ann_module

    calls, real = [], ann_module.exact_search_blocks

    def recording(features, queries, k, **kwargs):
        calls.append((features, np.array(queries), k))
        return real(features, queries, k, **kwargs)

    monkeypatch.setattr(ann_module, "exact_search_blocks", recording)
    return calls


def test_a_memory_mapped_matrix_is_searched_in_place_block_by_block(tmp_path, blocks_calls):
    mm = mapped(tmp_path, random_unit(300, 24, 0))
    db, q = np.asarray(mm, dtype=np.float32), random_unit(5, 24, 1)
    s = Searcher(mm, backend="exact")
    assert s.features is mm and len(s) == 300 and s.dim == 24  # not read into memory
    for k in (1, 7, 300):
        scores, rows = s.search(q.astype(np.float64), k)
        want_scores, want_rows = oracle(db, q, k)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)
        assert scores.dtype == np.float32 and rows.dtype == np.int64
        features, queries, kk = blocks_calls[-1]
        assert features is mm and kk == k and queries.dtype == np.float32
        np.testing.assert_array_equal(queries, q)
        in_memory = Searcher(db, backend="exact").search(q, k)
        np.testing.assert_array_equal(rows, in_memory[1])
        np.testing.assert_allclose(scores, in_memory[0], atol=1e-6)
    assert len(blocks_calls) == 3  # the in-memory searcher takes its one matrix product instead


def test_the_kd_tree_reads_a_memory_map_into_memory_and_checks_it(tmp_path):
    mm = mapped(tmp_path, random_unit(60, 6, 2))
    s = Searcher(mm, backend="kdtree")
    assert not isinstance(s.features, np.memmap)
    assert s.features.dtype == np.float32 and s.features.flags.c_contiguous
    q = random_unit(4, 6, 3)
    np.testing.assert_array_equal(s.search(q, 5)[1], oracle(np.asarray(mm, dtype=np.float32), q, 5)[1])
    bad = np.array(mm, dtype=np.float32)
    bad[17, 2] = np.nan
    with pytest.raises(ValueError, match="^features holds NaN or infinite values$"):
        Searcher(mapped(tmp_path, bad, np.float32), backend="kdtree")


def test_each_backend_answers_with_its_own_structure(monkeypatch, blocks_calls):
    import sklearn.neighbors  # Searcher imports its KDTree from here when it builds one

    trees, real_tree = [], sklearn.neighbors.KDTree

    class RecordingTree:
        def __init__(self, x, **kwargs):
            self.tree, self.queries = real_tree(x, **kwargs), 0
            trees.append(self)

        def query(self, *args, **kwargs):
            self.queries += 1
            return self.tree.query(*args, **kwargs)

        def query_radius(self, *args, **kwargs):
            return self.tree.query_radius(*args, **kwargs)

    monkeypatch.setattr(sklearn.neighbors, "KDTree", RecordingTree)
    db, q = random_unit(120, 5, 4), random_unit(3, 5, 5)
    want = oracle(db, q, 4)[1]
    np.testing.assert_array_equal(Searcher(db, backend="kdtree").search(q, 4)[1], want)
    assert len(trees) == 1 and trees[0].queries == 1  # the scikit-learn KD-tree, as asked
    np.testing.assert_array_equal(Searcher(db, backend="exact").search(q, 4)[1], want)
    assert len(trees) == 1 and trees[0].queries == 1 and blocks_calls == []  # one matrix product
    ann = StubAnn(120, 5)
    Searcher(db, backend="ann", ann=ann).search(q, 4)
    assert len(trees) == 1 and len(ann.calls) == 1 and blocks_calls == []


class StubAnn:
    """Stands in for `retrieval.ann.AnnIndex`: records each search and answers with fixed results."""

    def __init__(self, n, dim):
        self.n, self.dim, self.calls = n, dim, []
        self.answer = (np.array([[0.5, 0.25]], dtype=np.float32), np.array([[4, 1]], dtype=np.int64))

    def __len__(self):
        return self.n

    def search(self, features, queries, k):
        self.calls.append((features, queries, k))
        return self.answer


def test_the_ann_backend_answers_through_the_index_it_is_given(tmp_path, blocks_calls):
    db, q = random_unit(6, 4, 6), random_unit(1, 4, 7)
    ann = StubAnn(6, 4)
    s = Searcher(db.astype(np.float64), backend="ann", ann=ann)
    assert s.ann is ann and s.backend == "ann" and len(s) == 6 and s.dim == 4
    assert s.search(q[0], 2.0) is ann.answer  # the ANN's answer, not an exact search's
    features, queries, k = ann.calls[0]
    assert features is s.features and features.dtype == np.float32
    assert queries.shape == (1, 4) and queries.dtype == np.float32 and k == 2 and type(k) is int
    np.testing.assert_array_equal(queries, q)
    with pytest.raises(ValueError, match="^query dimension 3 does not match the index dimension 4$"):
        s.search(np.ones(3), 1)
    assert len(ann.calls) == 1
    mm = mapped(tmp_path, db)
    s = Searcher(mm, backend="ann", ann=ann)
    assert s.features is mm and s.search(q, 2) is ann.answer and ann.calls[-1][0] is mm
    assert blocks_calls == []


@pytest.mark.parametrize("n, dim", [(5, 4), (7, 4), (6, 3)])
def test_an_ann_index_of_other_rows_or_dimension_is_refused(n, dim):
    with pytest.raises(ValueError, match=rf"^the ANN index holds {n} rows of dimension {dim}, "
                                         r"the features 6 of dimension 4$"):
        Searcher(random_unit(6, 4, 8), backend="ann", ann=StubAnn(n, dim))


@pytest.fixture
def one_faiss_thread():
    """FAISS on one thread: no OpenMP pool in this process (tests may run in forked children)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_the_ann_backend_builds_an_index_when_none_is_given(one_faiss_thread):
    from retrieval.ann import AnnIndex

    db, q = random_unit(200, 8, 9), random_unit(4, 8, 10)
    s = Searcher(db, backend="ann")
    assert isinstance(s.ann, AnnIndex) and len(s.ann) == 200 and s.ann.dim == 8
    # 200 rows make 2 lists, all visited (nprobe 128), and 256 candidates cover every row: exact.
    for k in (1, 10):
        scores, rows = s.search(q, k)
        want_scores, want_rows = oracle(db, q, k)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)
