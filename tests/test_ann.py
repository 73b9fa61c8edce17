"""The ANN backend against the exact oracle; indexes from descriptors (--vectors) with their ANN structure,
memory-mapped, saved, tampered with; distractors in evaluation; the app over such an index."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.ann import ANN_FILE, ann_neighbours, build_ann, default_factory, exact_search_blocks, rerank_exact
from retrieval.distractors import fit_distractor_model, sample_distractors
from retrieval.features import Pipeline
from retrieval.index import IndexFormatError, load_index
from retrieval.search import Searcher, l2_normalize
from retrieval.vectors import build_from_vectors

# ANN recall@10 against exact search on the structured data below must stay above this floor.
RECALL_FLOOR = 0.9
LITE0_DIM = 1280


def structured(n: int, d: int, *, seed: int) -> np.ndarray:
    """Returns n rows drawn from a clustered Gaussian fitted to seeded low-rank, positive 'real' rows."""
    rng = np.random.default_rng(seed)
    real = np.abs(rng.standard_normal((300, 24)) @ rng.standard_normal((24, d))).astype(np.float32)
    return sample_distractors(fit_distractor_model(l2_normalize(real), rank=24), n, seed=seed + 1)


@pytest.fixture(scope="module")
def data():
    db = structured(20_000, 64, seed=0)
    queries = l2_normalize(db[:40] + 0.05 * np.random.default_rng(9).standard_normal((40, 64)).astype(np.float32))
    return db, queries


@pytest.fixture(scope="module")
def ann(data):
    return build_ann(data[0], nprobe=64, rerank=128)  # a quarter of its 256 lists


def test_ann_recall_against_the_exact_oracle_and_exact_scores(data, ann):
    db, queries = data
    exact_scores, exact_rows = Searcher(db, backend="exact").search(queries, 10)
    scores, rows = Searcher(db, backend="ann", ann=ann).search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_rows)])
    assert recall >= RECALL_FLOOR
    # Re-ranked exactly: the scores are the true inner products, best first.
    np.testing.assert_allclose(scores, np.einsum("md,mkd->mk", queries, db[rows]), rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert ann.factory == "IVF256,SQ8"  # d = 64: no PCA stage


def test_blocked_exact_search_and_rerank_break_ties_by_row():
    features = np.zeros((50, 4), np.float16)
    features[:, 0] = 1
    features[[7, 3, 20], 1] = 1  # rows 3, 7 and 20 tie for first
    scores, rows = exact_search_blocks(features, np.array([[0.6, 0.8, 0, 0]], np.float32), 5, block=8)
    assert rows[0].tolist() == [3, 7, 20, 0, 1]
    _, rows = rerank_exact(features, np.array([[0.6, 0.8, 0, 0]], np.float32), np.array([[20, 9, 7, -1, 3]]), 4)
    assert rows[0].tolist() == [3, 7, 20, 9]


def test_dba_neighbours_through_the_ann_match_exact_ones(data, ann):
    db = data[0]
    found = ann_neighbours(ann, db, 3, nprobe=ann.nprobe)
    assert not (found == np.arange(len(db))[:, None]).any()
    sims = db[:500] @ db.T
    sims[np.arange(500), np.arange(500)] = -np.inf
    exact = np.argpartition(-sims, 3, axis=1)[:, :3]
    assert np.mean([len(set(a) & set(b)) / 3 for a, b in zip(found[:500], exact)]) >= RECALL_FLOOR


def test_ann_neighbours_with_sims_give_the_exact_similarities_of_the_rows_found(data, ann):
    db = data[0][:3000]
    small = build_ann(db, nprobe=64, rerank=128)
    rows, sims = ann_neighbours(small, db, 5, nprobe=64, rerank=20, with_sims=True)
    assert rows.dtype == np.int64 and sims.dtype == np.float32 and small.nprobe == 64
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", db, db[rows]), rtol=1e-5, atol=1e-6)
    assert (np.diff(sims, axis=1) <= 0).all()
    # row 0 is a neighbour like any other: the nearest of its own near-copies
    near = l2_normalize(db[:1] + 0.001 * np.random.default_rng(3).standard_normal((4, db.shape[1])).astype(np.float32))
    assert small.nprobe == 64  # the search's own setting is put back after the neighbour search
    copies = np.concatenate([db[:1], near, db[1:]])
    rows, _ = ann_neighbours(build_ann(copies, nprobe=64, rerank=128), copies, 4, nprobe=64, with_sims=True)
    assert [sorted(r) for r in rows[:5].tolist()] == [sorted({0, 1, 2, 3, 4} - {i}) for i in range(5)]


def test_a_large_database_gets_its_diffusion_graph_through_the_ann(data, monkeypatch):
    """From DEFAULT.ann_rows rows up the graph's neighbours come from the ANN; its edges are the exact graph's."""
    import dataclasses

    import retrieval.evaluation as evaluate
    import retrieval.defaults as defaults
    from retrieval.defaults import DEFAULT
    from retrieval.diffusion import DiffusionSettings

    db = data[0][:4000]
    settings = DiffusionSettings(k=10, seeds=5, alpha=0.9, gamma=3)
    exact = evaluate.diffusion_for(db, settings)
    monkeypatch.setattr(defaults, "DEFAULT", dataclasses.replace(DEFAULT, ann_rows=1000))  # read by approximate()
    approximate = evaluate.diffusion_for(db, settings)
    assert exact.graph.knn == "exact" and approximate.graph.knn == "ann"
    a, b = exact.graph.affinity(), approximate.graph.affinity()
    edges = lambda m: set(zip(*m.nonzero()))  # noqa: E731
    assert len(edges(a) & edges(b)) >= RECALL_FLOOR * len(edges(a))


@pytest.fixture(scope="module")
def vectors_index(tmp_path_factory):
    """An index of 3,000 Lite0-sized descriptors with an ANN structure, as build_index --vectors makes it."""
    out = tmp_path_factory.mktemp("vectors") / "index"
    rows = structured(3000, LITE0_DIM, seed=3) * 3.0  # not normalised: the build normalises
    ids = np.asarray([f"photo_{i:05d}" for i in range(len(rows))])
    build_from_vectors(rows, out, network="efficientnet-lite0", weights="imagenet", pipeline=Pipeline(max_side=384),
                       ids=ids, dba=2, qe=3, ann=True)
    return out, l2_normalize(rows), ids


def test_vectors_index_round_trip_with_its_ann(vectors_index, monkeypatch):
    out, rows, ids = vectors_index
    index = load_index(out, network="efficientnet-lite0")
    assert index.ann is not None and index.meta["ann"]["factory"] == index.ann.factory
    assert index.meta["files"][ANN_FILE]["bytes"] == (out / ANN_FILE).stat().st_size
    assert index.ids.tolist() == ids.tolist() and index.thumbnail("photo_00010") == b""
    assert index.meta["dba"]["k"] == 2 and index.meta["query_expansion"]["k"] == 3
    queries = index.features[:5]
    in_memory = Searcher(index.features, backend="ann", ann=index.ann).search(queries, 5)
    # A large index is memory-mapped: same rows, same answers from the exact blocks and the ANN.
    monkeypatch.setattr("retrieval.index.IN_MEMORY_ELEMENTS", 1000)
    mapped = load_index(out)
    assert isinstance(mapped.features, np.memmap) and mapped.features.dtype == np.float16
    exact = Searcher(mapped.features, backend="exact").search(queries, 5)
    np.testing.assert_array_equal(exact[1][:, 0], np.arange(5))
    np.testing.assert_array_equal(Searcher(mapped.features, backend="ann", ann=mapped.ann).search(queries, 5)[1],
                                  in_memory[1])


def test_tampered_ann_file_is_refused(vectors_index, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(vectors_index[0], copy)
    data = bytearray((copy / ANN_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / ANN_FILE).write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="ann.faiss does not match its sha256"):
        load_index(copy)
    (copy / ANN_FILE).unlink()
    with pytest.raises(IndexFormatError, match="ann.faiss is missing"):
        load_index(copy)


@pytest.mark.parametrize("case, message", [
    ("nan", "row 7 of the descriptors is not finite"),
    ("dim", "dimension 1000, but efficientnet-lite0"),
    ("duplicate", "ids must be unique"),
    ("count", "one id per row: 20 rows"),
])
def test_vectors_command_refuses_bad_input(case, message, tmp_path, capsys):
    from precompute.build_index import main

    rows = structured(20, 1000 if case == "dim" else LITE0_DIM, seed=5)
    ids = np.asarray([f"i{j}" for j in range(20)])
    if case == "nan":
        rows[7, 3] = np.nan
    if case == "duplicate":
        ids[4] = ids[2]
    if case == "count":
        ids = ids[:19]
    np.save(tmp_path / "x.npy", rows)
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "index"
    assert main(["--vectors", str(tmp_path / "x.npy"), "--ids", str(tmp_path / "ids.npy"),
                 "--network", "efficientnet-lite0", "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_distractors_of_another_network_or_pipeline_are_refused(vectors_index):
    from types import SimpleNamespace

    from retrieval.database import DistractorError, add_distractors

    db = structured(10, LITE0_DIM, seed=6)
    with pytest.raises(DistractorError, match="network 'efficientnet-lite0'.*'efficientnet-b7'"):
        add_distractors(db, vectors_index[0], network=SimpleNamespace(name="efficientnet-b7", weights="imagenet"),
                        pipeline=Pipeline(max_side=384))
    with pytest.raises(DistractorError, match="pipeline"):
        add_distractors(db, vectors_index[0], network=SimpleNamespace(name="efficientnet-lite0", weights="imagenet"),
                        pipeline=Pipeline(max_side=512))


def test_distractors_join_after_the_dataset_and_the_ann_ranking_covers_every_row(tmp_path):
    from types import SimpleNamespace

    from retrieval.evaluation import rank_queries
    from retrieval.database import add_distractors

    out = tmp_path / "distractors"
    build_from_vectors(structured(2000, LITE0_DIM, seed=7), out, network="efficientnet-lite0", weights="imagenet",
                       pipeline=Pipeline(max_side=384), ann=True)
    dataset = structured(50, LITE0_DIM, seed=8)
    db, added, ann = add_distractors(dataset, out, network=SimpleNamespace(name="efficientnet-lite0",
                                                                           weights="imagenet"),
                                     pipeline=Pipeline(max_side=384))
    assert added["count"] == 2000 and db.shape == (2050, LITE0_DIM) and ann is not None
    np.testing.assert_array_equal(db[:50], dataset)
    queries = dataset[:4]
    ranks, _ = rank_queries(db, queries, backend="ann", ann=ann, ann_k=30, qe=2)
    exact, _ = rank_queries(db, queries, backend="exact", qe=2)
    assert all(sorted(r) == list(range(2050)) for r in ranks)
    assert ranks[:, 0].tolist() == [0, 1, 2, 3] and ranks[:, :5].tolist() == exact[:, :5].tolist()
    # After the ANN's top 30, the rest runs from the last row back: distractors before the dataset.
    assert ranks[0, 30] == 2049 and ranks[0, -1] < 50


def test_app_serves_a_vectors_index_with_placeholders_and_ids(vectors_index, lite0, tmp_path):
    from PIL import Image

    import webapp.context
    import webapp.gate
    import webapp.handlers
    import webapp.thumbnails
    from retrieval.engine import SearchEngine

    engine = SearchEngine(load_index(vectors_index[0]), lite0)
    assert engine.searcher.backend == "ann"  # taken from the index, not trained here
    thumbnails = webapp.thumbnails.Thumbnails(engine.index, tmp_path)
    photo = Image.new("RGB", (300, 200), (90, 120, 160))
    ctx = webapp.context.AppContext(engine, thumbnails, webapp.gate.Gate(1, 1))
    gallery, records, _, _ = webapp.handlers.search(ctx, photo, 6)
    assert [r["id"] for r in records] == engine.search(photo, 6).ids
    assert all(r["id"].startswith("photo_") for r in records)
    with Image.open(gallery[0][0]) as shown:
        assert shown.size == (192, 144) and shown.convert("RGB").getpixel((5, 5)) == pytest.approx((200, 200, 200), abs=3)


def test_exact_search_blocks_takes_k_from_1_to_n_and_refuses_the_rest():
    rng = np.random.default_rng(4)
    features = rng.standard_normal((30, 8)).astype(np.float16)
    queries = rng.standard_normal((3, 8)).astype(np.float64)  # widened or narrowed to float32 here
    exact = queries.astype(np.float32) @ features.astype(np.float32).T
    for k, block in [(1, 7), (30, 7), (30, 64), (5, 1)]:
        scores, rows = exact_search_blocks(features, queries, k, block=block)
        expected = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        assert rows.dtype == np.int64 and scores.dtype == np.float32 and rows.shape == (3, k)
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_allclose(scores, np.take_along_axis(exact, expected, axis=1), rtol=1e-6)
    for k in (0, 31):
        with pytest.raises(ValueError, match=rf"^k must be between 1 and 30, got {k}$"):
            exact_search_blocks(features, queries, k)


def test_the_ann_description_copies_and_reloads_keep_every_setting(tmp_path):
    import faiss

    from retrieval.ann import copy_trained, load_ann, refill, save_ann

    rows = l2_normalize(np.random.default_rng(5).standard_normal((6, 4)).astype(np.float32))
    ann = build_ann(rows, factory="Flat", nprobe=3, rerank=7)
    ann.build_s = 1.23456
    meta = ann.to_meta()
    assert meta == {"factory": "Flat", "metric": "l2", "nprobe": 3, "rerank": 7, "count": 6, "dim": 4,
                    "faiss": faiss.__version__, "build_s": 1.235}
    assert type(meta["build_s"]) is float
    # a copy has the same settings and rows, and is independent of the original
    copy = copy_trained(ann)
    assert (copy.factory, copy.nprobe, copy.rerank, copy.build_s, len(copy)) == ("Flat", 3, 7, 1.23456, 6)
    np.testing.assert_array_equal(copy.candidates(rows, 6), ann.candidates(rows, 6))
    refill(copy, rows[:2])
    assert len(copy) == 2 and len(ann) == 6
    # saved and loaded with its description: the same settings and rows
    save_ann(ann, tmp_path / ANN_FILE)
    loaded = load_ann(tmp_path / ANN_FILE, meta)
    assert (loaded.factory, loaded.nprobe, loaded.rerank, loaded.build_s) == ("Flat", 3, 7, 1.235)
    assert loaded.to_meta() == meta


def test_exact_search_blocks_finds_the_best_row_of_a_wide_block():
    rng = np.random.default_rng(11)
    features = rng.standard_normal((600, 8)).astype(np.float16)
    queries = rng.standard_normal((6, 8)).astype(np.float32)
    exact = queries @ features.astype(np.float32).T
    for k, block in [(1, 600), (1, 350), (1, 16384), (3, 600)]:
        scores, rows = exact_search_blocks(features, queries, k, block=block)
        expected = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_allclose(scores, np.take_along_axis(exact, expected, axis=1), rtol=1e-6)


@pytest.mark.parametrize("n, d, factory", [
    (1_000_000, 2560, "PCA256,IVF2048,SQ8"),    # 2 sqrt(n) = 2000, rounded to a power of two
    (10_000_000, 2560, "PCA256,IVF4096,SQ8"),   # capped at 4096 lists
    (300_000, 512, "PCA256,IVF1024,SQ8"),
    (4096, 256, "IVF64,SQ8"),                   # 128 lists would leave 32 training rows each: halved to 64 x 64
    (10, 8, "IVF1,SQ8"),                        # halved down to a single list, never to none
    (1, 2560, "PCA256,IVF1,SQ8"),
])
def test_the_default_factory_sizes_the_lists_and_the_pca_by_hand(n, d, factory):
    assert default_factory(n, d) == factory


def test_an_empty_matrix_or_an_unknown_factory_is_refused_with_the_reason():
    import faiss

    with pytest.raises(ValueError, match=r"^cannot build an ANN index of 0 rows$"):
        build_ann(np.zeros((0, 8), np.float32))
    one = build_ann(l2_normalize(np.ones((1, 8), np.float32)), factory="Flat")  # one row is enough
    assert len(one) == 1
    with pytest.raises(RuntimeError) as faiss_error:
        faiss.index_factory(8, "IVF4,Nonsense", faiss.METRIC_L2)
    first_line = str(faiss_error.value).splitlines()[0]
    with pytest.raises(ValueError) as e:
        build_ann(l2_normalize(np.ones((4, 8), np.float32)), factory="IVF4,Nonsense")
    assert str(e.value) == f"FAISS cannot build 'IVF4,Nonsense': {first_line}"


def test_the_search_settings_default_to_those_the_million_row_benchmark_chose():
    ann = build_ann(structured(300, 16, seed=3), factory="Flat")
    assert (ann.nprobe, ann.rerank) == (128, 256)


def test_training_takes_a_seeded_sample_of_distinct_rows_sized_by_the_lists(monkeypatch):
    import faiss

    import retrieval.ann as ann_module

    rows = structured(20_000, 16, seed=4)
    taken, lines = [], []
    real = ann_module._rows
    monkeypatch.setattr(ann_module, "_rows", lambda f, r: taken.append(np.array(r)) or real(f, r))
    built = build_ann(rows, factory="IVF256,Flat", log=lines.append)
    # 64 training rows per list: 16384 of the 20000, each once, in row order.
    [sample] = taken
    assert len(sample) == 16_384 and len(np.unique(sample)) == 16_384 and np.all(np.diff(sample) > 0)
    assert lines == ["ann IVF256,Flat: training on 16384 of 20000 rows", "ann IVF256,Flat: adding 20000 rows"]
    assert len(built) == 20_000
    # Under MIN_TRAIN rows per list, at least 10000 rows; the sample is the seed's, 0 unless told.
    taken.clear()
    small = structured(12_000, 16, seed=5)
    default, zero, one = (build_ann(small, factory="IVF4,Flat", **kw) for kw in ({}, {"seed": 0}, {"seed": 1}))
    assert [len(t) for t in taken] == [10_000] * 3
    np.testing.assert_array_equal(taken[0], taken[1])
    assert not np.array_equal(taken[0], taken[2])
    assert faiss.serialize_index(default.index).tobytes() == faiss.serialize_index(zero.index).tobytes()
    # All the rows when there are fewer than the sample would take.
    taken.clear()
    build_ann(small[:5000], factory="IVF4,Flat")
    np.testing.assert_array_equal(taken[0], np.arange(5000))


def test_refilling_adds_its_time_to_the_build_time(data):
    import time

    from retrieval.ann import copy_trained, refill

    t0 = time.perf_counter()
    built = build_ann(data[0][:2000], factory="IVF16,Flat")
    assert 0.0 < built.build_s <= time.perf_counter() - t0  # training and adding, timed
    ann = copy_trained(built)
    ann.build_s = 100.0
    t0 = time.perf_counter()
    refilled = refill(ann, data[0][:3000])
    spent = time.perf_counter() - t0
    assert refilled is ann and len(ann) == 3000
    assert 100.0 < ann.build_s <= 100.0 + spent


def test_training_rows_are_gathered_in_blocks_all_of_them(monkeypatch):
    import retrieval.ann as ann_module

    monkeypatch.setattr(ann_module, "BLOCK", 4)  # 20 rows: five blocks
    features = np.arange(60 * 3, dtype=np.float16).reshape(60, 3)
    rows = np.arange(1, 60, 3)
    out = ann_module._rows(features, rows)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, features[rows].astype(np.float32))


@pytest.mark.parametrize("search_nprobe, nprobe, visited", [
    (128, None, 8),     # a sixteenth of the search setting is 8
    (64, None, 8),      # at least 8
    (408, None, 25),    # 408 // 16
    (128, 3, 3),        # as asked
])
def test_the_neighbour_search_visits_a_sixteenth_of_the_lists_and_restores_the_setting(
        data, search_nprobe, nprobe, visited, monkeypatch):
    from retrieval.ann import AnnIndex, copy_trained

    ann = copy_trained(build_ann(data[0][:3000], factory="IVF16,Flat"))
    ann.nprobe = search_nprobe
    seen, real = [], AnnIndex.candidates
    monkeypatch.setattr(AnnIndex, "candidates", lambda self, q, n: seen.append(self.nprobe) or real(self, q, n))
    ann_neighbours(ann, data[0][:3000], 5, nprobe=nprobe, block=1000)
    assert seen == [visited] * 3 and all(type(v) is int for v in seen)
    assert ann.nprobe == search_nprobe


def test_neighbours_deeper_than_the_rerank_depth_are_the_exact_ones(data):
    from retrieval.ann import copy_trained

    rows = data[0][:3000]
    ann = copy_trained(build_ann(rows, factory="IVF16,Flat"))
    got = ann_neighbours(ann, rows, 5, rerank=2, nprobe=16)  # every list visited: exact
    sims = rows @ rows.T
    np.fill_diagonal(sims, -np.inf)
    want = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert (got >= 0).all()
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))


def test_rerank_pads_a_short_candidate_list_and_scores_in_float32():
    features = l2_normalize(np.random.default_rng(2).standard_normal((10, 4)).astype(np.float32))
    scores, rows = rerank_exact(features, features[:2], np.array([[3, -1, -1], [-1, -1, -1]]), 3)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, [[3, -1, -1], [-1, -1, -1]])
    assert scores[0, 0] == np.float32(features[3] @ features[0])
    assert np.isneginf(scores[0, 1:]).all() and np.isneginf(scores[1]).all()


def test_rerank_scores_float64_queries_and_rows_as_float32_ties_going_to_the_lower_row():
    # In float32 both candidates score 1.0 (a tie: the lower row first); in float64 row 1 would win.
    q64 = np.array([[1.0, 1.0 + 1e-12]])
    features = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    assert rerank_exact(features, q64, np.array([[1, 0]]), 2)[1].tolist() == [[0, 1]]
    features64 = np.array([[0.5, 0.5], [0.5, 0.5 + 1e-12]])
    assert rerank_exact(features64, np.ones((1, 2), np.float32), np.array([[1, 0]]), 2)[1].tolist() == [[0, 1]]


@pytest.mark.parametrize("factory", ["HNSW16", "PCA8,HNSW16"])
@pytest.mark.parametrize("nprobe, ef", [(40, 40), (4, 16)])
def test_an_hnsw_index_searches_as_deep_as_nprobe_at_least_16(factory, nprobe, ef):
    import faiss

    rows = structured(500, 16, seed=6)
    ann = build_ann(rows, factory=factory, nprobe=nprobe)
    ann.candidates(rows[:3], 5)
    inner = faiss.downcast_index(ann.index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    assert inner.hnsw.efSearch == ef


def test_loading_an_ann_refuses_an_unreadable_file_and_defaults_its_build_time(tmp_path):
    import faiss

    from retrieval.ann import load_ann, save_ann

    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not a faiss index")
    with pytest.raises(RuntimeError) as faiss_error:
        faiss.read_index(str(bad))
    with pytest.raises(ValueError) as e:
        load_ann(bad, {"factory": "Flat", "nprobe": 1, "rerank": 1})
    assert str(e.value) == f"FAISS cannot read {bad}: {str(faiss_error.value).splitlines()[0]}"
    good = tmp_path / "good.faiss"
    save_ann(build_ann(structured(50, 8, seed=7), factory="Flat"), good)
    loaded = load_ann(good, {"factory": "Flat", "nprobe": 3, "rerank": 9})  # written before build_s was kept
    assert (loaded.factory, loaded.nprobe, loaded.rerank, loaded.build_s, len(loaded)) == ("Flat", 3, 9, 0.0, 50)
