import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.build import build_index
from retrieval.engine import SearchEngine
from retrieval.features import ImageError, Pipeline, embed_image
from retrieval.index import IndexFormatError, load_index
from retrieval.networks import tiny_network
from retrieval.rerank import alpha_query_expansion

PIPE = Pipeline(max_side=64)


@pytest.fixture(scope="module")
def index(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / f"p{i:02d}.png")
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(root, out, tiny, PIPE, dtype="float32", qe=3)
    return load_index(out), root


def test_search_is_embedding_then_expanded_exact_search(tiny, index):
    idx, root = index
    engine = SearchEngine(idx, tiny, backend="exact")
    # A crop: not an indexed photo, so nothing is put first (see test_an_indexed_photo_...).
    crop = Image.open(root / "p05.png").crop((5, 5, 70, 55))
    result = engine.search(crop, 4)
    q = embed_image(tiny, crop, PIPE)
    first = np.argsort(-(idx.features @ q), kind="stable")[:3]
    expanded = alpha_query_expansion(q[None], idx.features, first[None], k=3)[0]
    want = np.argsort(-(idx.features @ expanded), kind="stable")[:4]
    assert result.ids == [idx.ids[r] for r in want]
    np.testing.assert_allclose(result.scores, (idx.features @ expanded)[want], atol=1e-5)
    assert result.embed_ms > 0 and result.search_ms > 0
    assert [r["rank"] for r in result.to_records()] == [1, 2, 3, 4]


def test_query_expansion_can_be_turned_off(tiny, index):
    idx, root = index
    plain = SearchEngine(idx, tiny, backend="kdtree", query_expansion=0).search(root / "p07.png", 5)
    q = embed_image(tiny, root / "p07.png", PIPE)
    assert plain.ids == [idx.ids[r] for r in np.argsort(-(idx.features @ q), kind="stable")[:5]]
    assert plain.ids[0] == "p07"


def test_search_by_id_and_box(tiny, index):
    idx, root = index
    engine = SearchEngine(idx, tiny)
    assert engine.search_id("p03", 1).ids == ["p03"]
    with pytest.raises(KeyError, match="not in this index"):
        engine.search_id("../../etc/passwd", 1)
    boxed = engine.search(root / "p03.png", 3, box=(0, 0, 32, 24))
    assert len(boxed.ids) == 3


def test_bad_queries_refused(tiny, index):
    idx, _ = index
    engine = SearchEngine(idx, tiny)
    for k in (0, 13, 1.5):
        with pytest.raises(ValueError, match="k must be"):
            engine.search(b"not even decoded", k)
    with pytest.raises(ImageError, match="not a readable image"):
        engine.search(b"not an image", 3)
    with pytest.raises(ImageError, match="empty"):
        engine.search(Image.new("RGB", (10, 10)), 3, box=(5, 5, 5, 9))


def test_network_must_match_the_index(index):
    idx, _ = index
    with pytest.raises(IndexFormatError, match="built with 'tiny-8-seed0'"):
        SearchEngine(idx, tiny_network(seed=0, channels=4))


@pytest.fixture(scope="module")
def whitened(index):
    """The 12 photos' index, whitened by a rotation about their mean: the whitened rows keep
    the raw dimension, so a query left unprojected would be searched, wrongly, without error."""
    from retrieval.index import Index
    from retrieval.whitening import Whitening, apply_whitening

    idx, root = index
    rotation, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((idx.dim, idx.dim)))
    w = Whitening(idx.features.mean(axis=0), rotation.astype(np.float32), 0.0)
    meta = {**idx.meta, "whitening": w.to_meta()}
    return Index(idx.path, apply_whitening(idx.features, w), idx.ids, meta, w), root


def test_a_whitened_index_projects_the_query(tiny, whitened):
    from retrieval.whitening import apply_whitening

    idx, root = whitened
    engine = SearchEngine(idx, tiny, backend="exact", query_expansion=0)
    result = engine.search(root / "p05.png", 12)
    q = apply_whitening(embed_image(tiny, root / "p05.png", PIPE), idx.whitening)[0]
    np.testing.assert_allclose(engine.embed(root / "p05.png"), q, atol=1e-6)
    assert result.ids[0] == "p05" and result.scores[0] == pytest.approx(1.0, abs=1e-5)
    sims = idx.features @ q
    assert result.ids == [idx.ids[r] for r in np.argsort(-sims, kind="stable")]
    np.testing.assert_allclose(result.scores, np.sort(sims)[::-1], atol=1e-5)


def test_query_expansion_settings_come_from_the_index_unless_given(tiny, index):
    idx, root = index
    assert idx.meta["query_expansion"] == {"k": 3, "alpha": 3.0}
    engine = SearchEngine(idx, tiny, backend="exact")
    assert (engine.qe_k, engine.qe_alpha) == (3, 3.0)
    assert SearchEngine(idx, tiny, query_expansion=50).qe_k == 12  # never more than the index holds
    assert SearchEngine(idx, tiny, query_expansion=0).qe_k == 0
    # search_id expands the stored descriptor as search expands an embedded one.
    stored = idx.features[idx.row_of("p04")]
    first = np.argsort(-(idx.features @ stored), kind="stable")[:3]
    expanded = alpha_query_expansion(stored[None], idx.features, first[None], k=3)[0]
    want = np.argsort(-(idx.features @ expanded), kind="stable")[:5]
    result = engine.search_id("p04", 5)
    assert result.ids == [idx.ids[r] for r in want] and result.embed_ms == 0.0
    np.testing.assert_allclose(result.scores, (idx.features @ expanded)[want], atol=1e-5)
    for k in (0, 13, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            engine.search_id("p04", k)


def test_query_expansion_uses_the_alpha_the_index_records(tiny, index):
    idx, root = index
    meta = {**idx.meta, "query_expansion": {"k": 3, "alpha": 1.0}}
    engine = SearchEngine(type(idx)(idx.path, idx.features, idx.ids, meta), tiny, backend="exact")
    assert engine.qe_alpha == 1.0
    q = embed_image(tiny, root / "p02.png", PIPE)
    first = np.argsort(-(idx.features @ q), kind="stable")[:3]
    expanded = alpha_query_expansion(q[None], idx.features, first[None], k=3, alpha=1.0)[0]
    np.testing.assert_allclose(engine.search(root / "p02.png", 4).scores,
                               np.sort(idx.features @ expanded)[::-1][:4], atol=1e-5)
    no_qe = SearchEngine(type(idx)(idx.path, idx.features, idx.ids, {**idx.meta, "query_expansion": None}), tiny)
    assert no_qe.qe_k == 0 and no_qe.qe_alpha == 3.0


def test_records_and_warm_up(tiny, index):
    idx, _ = index
    engine = SearchEngine(idx, tiny)
    assert len(engine) == 12 and engine.pipeline == PIPE
    engine.warm_up()
    from retrieval.engine import SearchResult

    from retrieval.confidence import judge

    result = SearchResult(["a", "b"], [0.123456789, 0.5], [0.7000004, -0.25000004], 1.0, 2.0, judge(0.7, None))
    assert result.to_records() == [{"rank": 1, "id": "a", "score": 0.123457, "similarity": 0.7},
                                   {"rank": 2, "id": "b", "score": 0.5, "similarity": -0.25}]
    assert result.confident is None
    found = engine.search_id("p01", 3)
    assert all(type(s) is float for s in found.scores) and all(type(i) is str for i in found.ids)


def test_timings_are_milliseconds_of_each_part(tiny, index, monkeypatch):
    import retrieval.engine as engine_module

    class Clock:
        """perf_counter advancing one second per reading."""

        now = 1000.0

        @classmethod
        def perf_counter(cls):
            cls.now += 1.0
            return cls.now

    idx, root = index
    engine = SearchEngine(idx, tiny, backend="exact")
    monkeypatch.setattr(engine_module, "time", Clock)
    result = engine.search(root / "p01.png", 2)
    assert (result.embed_ms, result.search_ms) == (1000.0, 1000.0)
    assert engine.search_id("p01", 2).search_ms == 1000.0


def test_the_backend_asked_for_is_used_and_one_neighbour_expands(tiny, index):
    idx, root = index
    assert SearchEngine(idx, tiny, backend="exact").searcher.backend == "exact"
    assert SearchEngine(idx, tiny).searcher.backend == "kdtree"
    engine = SearchEngine(idx, tiny, backend="exact", query_expansion=1)
    # Not an indexed photo: expanding a photo by itself would change nothing.
    new = Image.fromarray(np.random.default_rng(99).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    q = embed_image(tiny, new, PIPE)
    first = np.argsort(-(idx.features @ q), kind="stable")[:1]
    expanded = alpha_query_expansion(q[None], idx.features, first[None], k=1)[0]
    assert not np.allclose(np.sort(idx.features @ expanded), np.sort(idx.features @ q), atol=1e-4)
    np.testing.assert_allclose(engine.search(new, 3).scores, np.sort(idx.features @ expanded)[::-1][:3], atol=1e-6)


@pytest.fixture(scope="module")
def diffusion_index(tiny, index, tmp_path_factory):
    from retrieval.diffusion import DiffusionSettings

    _, root = index
    out = tmp_path_factory.mktemp("idx") / "diffusion"
    settings = DiffusionSettings(k=3, seeds=2, alpha=0.9, candidates=8)
    build_index(root, out, tiny, PIPE, dtype="float16", qe=2, dba=1, diffusion=settings)
    return load_index(out), root, settings


@pytest.mark.parametrize("backend", ["kdtree", "exact"])
def test_engine_diffusion_ranks_as_the_evaluation_does(tiny, diffusion_index, backend):
    from retrieval.evaluation import rank_queries

    idx, root, settings = diffusion_index
    assert idx.graph is not None and idx.meta["diffusion"] == settings.to_meta()
    engine = SearchEngine(idx, tiny, backend=backend)
    queries = np.stack([engine.embed(root / f"p{i:02d}.png") for i in range(12)])
    # The index holds DBA'd rows already; the evaluation rebuilds the graph from them.
    ranks, _ = rank_queries(idx.features, queries, backend=backend, qe=2, dba=0, diffusion=settings)
    for i, (q, want) in enumerate(zip(queries, ranks)):
        # Each query is an indexed photo: the engine puts it first, the rest as the evaluation ranks them.
        result = engine._search_vector(q, 12, embed_ms=0.0)
        assert result.ids == [f"p{i:02d}"] + [idx.ids[r] for r in want if r != idx.row_of(f"p{i:02d}")]
        assert result.scores[0] == 1.0 and result.scores == sorted(result.scores, reverse=True)
    without = SearchEngine(idx, tiny, backend=backend, diffusion=False)._search_vector(queries[0], 12, embed_ms=0.0)
    plain, _ = rank_queries(idx.features, queries[:1], backend=backend, qe=2, dba=0)
    assert without.ids == [idx.ids[r] for r in plain[0]]


@pytest.fixture(scope="module")
def ann_index(tiny, index, tmp_path_factory):
    _, root = index
    out = tmp_path_factory.mktemp("idx") / "ann"
    build_index(root, out, tiny, PIPE, dtype="float32", qe=2, ann=True)
    return load_index(out), root


def test_an_index_with_an_ann_structure_is_searched_through_it(tiny, ann_index, index):
    idx, root = ann_index
    assert idx.ann is not None
    engine = SearchEngine(idx, tiny)
    # The stored structure itself, not one built again at start-up.
    assert engine.searcher.backend == "ann" and engine.searcher.ann is idx.ann
    exact = SearchEngine(idx, tiny, backend="exact")
    assert engine.search(root / "p04.png", 5).ids == exact.search(root / "p04.png", 5).ids
    # Another backend may still be asked for on an index that has one.
    assert SearchEngine(idx, tiny, backend="kdtree").searcher.backend == "kdtree"
    plain, _ = index
    with pytest.raises(IndexFormatError, match=r"has no ANN structure: build it with precompute.build_index --ann"):
        SearchEngine(plain, tiny, backend="ann")


@pytest.mark.parametrize("raw, want", [
    # Diffusion may rank a neighbour above the image itself: the image is moved to the front.
    (([1, 3, 2], [1.0, 0.9, 0.5]), ([3, 1, 2], [1.0, 1.0, 0.5])),
    # The image is not among the k at all: it comes first and the last result drops out.
    (([1, 2, 4], [1.0, 0.8, 0.7]), ([3, 1, 2], [1.0, 1.0, 0.8])),
    # Already first: unchanged.
    (([3, 1, 2], [1.0, 0.6, 0.2]), ([3, 1, 2], [1.0, 0.6, 0.2])),
])
def test_put_first_moves_the_image_itself_to_rank_1(raw, want):
    from retrieval.query import put_first

    assert put_first(*raw, 3) == want
    assert put_first(*raw, None) == raw


def test_search_by_id_searches_its_stored_row_and_puts_it_first(tiny, diffusion_index):
    idx, _, _ = diffusion_index
    engine = SearchEngine(idx, tiny)
    for image_id in idx.ids[:6]:
        result = engine.search_id(str(image_id), 4)
        assert result.ids[0] == image_id and result.embed_ms == 0.0
        plain = engine._search_vector(idx.features[idx.row_of(str(image_id))], 4, embed_ms=0.0, same=None)
        assert set(result.ids[1:]) <= set(plain.ids)


# An indexed photo sent as a query ------------------------------------------------------------------

def test_self_similarity_is_each_photos_own_cosine_with_its_stored_row(tiny, diffusion_index):
    idx, root, _ = diffusion_index
    engine = SearchEngine(idx, tiny)
    assert idx.self_similarity.shape == (12,) and idx.self_similarity.dtype == np.float32
    for i in range(12):
        q = engine.embed(root / f"p{i:02d}.png")  # the file as a query: the build's own decoding
        row = idx.row_of(f"p{i:02d}")
        assert float(idx.features[row] @ q) == pytest.approx(float(idx.self_similarity[row]), abs=1e-6)
    assert (idx.self_similarity < 0.9999).any()  # DBA mixed neighbours into the rows


def test_an_indexed_photo_sent_as_a_file_comes_first_with_dba_qe_and_diffusion(tiny, diffusion_index, monkeypatch):
    import retrieval.query as query_module

    idx, root, _ = diffusion_index
    engine = SearchEngine(idx, tiny)
    firsts = [engine.search(root / f"p{i:02d}.png", 5).ids[0] for i in range(12)]
    assert firsts == [f"p{i:02d}" for i in range(12)]
    data = (root / "p07.png").read_bytes()
    assert engine.search(data, 5).ids[0] == "p07"  # encoded bytes, as POST /api/search sends them
    # Without the rule, re-ranking puts another photo first for at least one of them: the rule is what holds.
    monkeypatch.setattr(query_module, "DUPLICATE_TOLERANCE", -1.0)
    assert [engine.search(root / f"p{i:02d}.png", 5).ids[0] for i in range(12)] != firsts


def test_a_query_that_is_not_an_indexed_photo_is_not_put_first(tiny, diffusion_index):
    idx, root, _ = diffusion_index
    engine = SearchEngine(idx, tiny)
    for i in range(12):
        crop = Image.open(root / f"p{i:02d}.png").crop((4, 4, 60, 44))
        q = engine.embed(crop)
        scores, rows = engine.searcher.search(q, 8)
        assert engine.duplicate_row(scores[0], rows[0]) is None


def test_duplicate_row_picks_the_row_closest_to_its_own_cosine(tiny, diffusion_index):
    idx, _, _ = diffusion_index
    engine = SearchEngine(idx, tiny)
    own = idx.self_similarity
    rows = np.array([0, 1, 2])
    # Row 0 is above its own cosine by 5e-5, row 1 exactly at it: row 1 is the photo.
    scores = np.array([own[0] + 5e-5, own[1], own[2] - 0.3])
    assert engine.duplicate_row(scores, rows) == 1
    assert engine.duplicate_row(np.array([own[0] + 2e-4, own[1] - 2e-4, own[2]]), rows) == 2
    assert engine.duplicate_row(np.array([own[0] + 2e-4, own[1] - 2e-4, own[2] + 0.01]), rows) is None
    assert engine.duplicate_row(np.array([own[0], own[1]]), np.array([-1, 1])) == 1  # -1: ANN padding


def test_without_self_similarities_an_index_without_dba_uses_cosine_1_and_one_with_dba_none(tiny, index,
                                                                                             diffusion_index):
    plain, root = index
    engine = SearchEngine(plain, tiny)
    plain.self_similarity = None  # as an index saved before self-similarities were
    assert engine.duplicate_row(np.array([0.99995, 0.98]), np.array([3, 4])) == 3
    assert engine.duplicate_row(np.array([0.9998, 0.98]), np.array([3, 4])) is None
    augmented, _, _ = diffusion_index
    old = SearchEngine(augmented, tiny)
    kept, augmented.self_similarity = augmented.self_similarity, None
    try:
        assert old.duplicate_row(np.array([1.0, 0.98]), np.array([3, 4])) is None
    finally:
        augmented.self_similarity = kept


# The recipe in index.json, and indexes written before the shared query path ------------------------

OLD = Path(__file__).parent / "data" / "index-3e381b5"


def test_a_recipe_round_trips_through_index_json(tiny, diffusion_index):
    from retrieval.defaults import DEFAULT, REPORT, Recipe
    from retrieval.diffusion import DiffusionSettings

    for recipe in (DEFAULT, REPORT, Recipe(descriptor=PIPE, dba=0, qe=4, alpha=2.5),
                   Recipe(descriptor=PIPE, dba=2, qe=0, alpha=1.5, diffusion=DiffusionSettings(k=5))):
        meta = json.loads(json.dumps(recipe.to_meta()))
        assert Recipe.from_meta(meta) == recipe
    idx, _, settings = diffusion_index  # built with PIPE, qe=2, dba=1 and these diffusion settings
    assert idx.recipe == Recipe(descriptor=PIPE, dba=1, qe=2, alpha=3.0, diffusion=settings)


def test_an_index_written_before_the_shared_query_path_loads_and_ranks_as_it_did(tiny):
    from retrieval.defaults import Recipe

    expected = json.loads((OLD / "rankings.json").read_text())
    idx = load_index(OLD / "index")
    assert idx.self_similarity is None and idx.recipe == Recipe(
        descriptor=Pipeline(max_side=64), dba=1, qe=2, alpha=3.0, diffusion=idx.recipe.diffusion)
    engine = SearchEngine(idx, tiny, backend="exact")
    for name, query in expected["queries"].items():
        vector = np.asarray(query["vector"], dtype=np.float32)
        assert engine._search_vector(vector, expected["k"], embed_ms=0.0).ids == query["ids"], name


def test_approximate_is_the_one_rule_for_exact_or_ann():
    from retrieval.defaults import DEFAULT, approximate

    assert not approximate(DEFAULT.ann_rows - 1) and approximate(DEFAULT.ann_rows)
    assert approximate(10, True) and not approximate(10**7, False)


def test_the_evaluation_and_the_app_engine_rank_the_19_paris_crops_alike(lite0_index, lite0, rparis_dir):
    """One query path: the evaluation's rankings over an index's rows are the engine's, query by query."""
    from retrieval.evaluation import rank_queries
    from retrieval.datasets import load_dataset

    idx = load_index(lite0_index)
    engine = SearchEngine(idx, lite0, backend="exact")
    dataset = load_dataset("rparis6k", rparis_dir.parent)
    queries = np.stack([engine.embed(dataset.query_image(i)) for i in range(len(dataset.query_ids))])
    recipe = idx.recipe
    # The index's rows are augmented already, and its graph is the one built from them.
    ranks, _ = rank_queries(idx.features, queries, backend="exact", qe=recipe.qe, alpha=recipe.alpha, dba=0,
                            diffusion=recipe.diffusion)
    for q, want in zip(queries, ranks):
        assert engine._search_vector(q, 20, embed_ms=0.0).ids == [str(idx.ids[r]) for r in want[:20]]


def stored_cosines(idx, query: np.ndarray, ids: list[str]) -> list[float]:
    """The cosine of the query descriptor and each image's row as the index stores it, computed here."""
    rows = np.asarray(idx.features, dtype=np.float32)[[idx.row_of(i) for i in ids]]
    return [float(np.dot(row.astype(np.float64), query.astype(np.float64))) for row in rows]


@pytest.mark.parametrize("diffusion", [False, True])
def test_every_record_carries_the_cosine_of_the_query_and_the_stored_row(tiny, diffusion_index, diffusion):
    idx, root, _ = diffusion_index  # float16 rows, DBA, αQE and diffusion
    engine = SearchEngine(idx, tiny, backend="exact", diffusion=diffusion)
    crop = Image.open(root / "p05.png").crop((5, 5, 70, 55))
    result = engine.search(crop, 12)
    records = result.to_records()
    want = stored_cosines(idx, engine.embed(crop), result.ids)
    assert [r["similarity"] for r in records] == pytest.approx(want, abs=2e-6)
    assert [r["id"] for r in records] == result.ids and len(records) == 12
    # The ranking score is another number: the expanded query's cosine, or the diffusion's score.
    assert [r["score"] for r in records] != pytest.approx(want, abs=1e-3)
    # The verdict reads the best similarity in the collection, here the highest of all 12.
    assert result.confidence.similarity == pytest.approx(max(want), abs=2e-6)
    # The tiny network has no measured threshold: no verdict, and the evidence says why.
    assert result.confident is None and result.confidence.to_dict()["evidence"]["threshold"] is None


def test_a_search_by_id_reports_each_images_cosine_with_the_stored_row(tiny, diffusion_index):
    idx, _, _ = diffusion_index
    engine = SearchEngine(idx, tiny, backend="exact")
    result = engine.search_id("p04", 5)
    stored = np.asarray(idx.features[idx.row_of("p04")], dtype=np.float32)
    assert result.ids[0] == "p04"
    assert result.similarities == pytest.approx(stored_cosines(idx, stored, result.ids), abs=2e-6)


def test_the_engine_judges_with_the_threshold_measured_for_its_index(tiny, index, monkeypatch):
    import retrieval.confidence

    idx, root = index
    assert SearchEngine(idx, tiny).threshold is None  # nothing measured for the tiny network
    measured = (idx.meta["network"], PIPE, 0, 0.5)
    monkeypatch.setattr(retrieval.confidence, "THRESHOLDS", (measured,))
    engine = SearchEngine(idx, tiny)
    assert engine.threshold == 0.5
    result = engine.search(root / "p03.png", 3)
    assert result.confidence.threshold == 0.5
    assert result.confident is (result.confidence.similarity >= 0.5)
    assert result.confidence.similarity == pytest.approx(1.0, abs=1e-5)  # the photo itself is indexed


def test_decode_gives_the_search_a_file_decoded_as_the_build_did(tiny, index, tmp_path):
    from retrieval.features import Decoded, decode_file

    idx, root = index
    engine = SearchEngine(idx, tiny)
    photo = tmp_path / "large.jpg"  # a JPEG large enough to be drafted: the preview size sets how far
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((1600, 1200)).save(photo, quality=90)
    decoded = engine.decode(photo)
    assert isinstance(decoded, Decoded) and decoded.size == (1600, 1200)
    want = decode_file(photo, PIPE, idx.meta.get("preview_side"))
    assert decoded.image.size == want.image.size
    assert np.array_equal(np.asarray(decoded.image), np.asarray(want.image))
    # embed decodes a whole file the same way: the preview size recorded in index.json sets the draft
    from retrieval.features import embed_image

    preview_side = idx.meta["preview_side"]
    assert np.array_equal(engine.embed(photo), embed_image(tiny, photo, PIPE, preview_side=preview_side))
    assert not np.allclose(engine.embed(photo), embed_image(tiny, photo, PIPE), atol=1e-6)
    by_file, by_decoded = engine.search(photo, 4), engine.search(decoded, 4)
    assert by_decoded.ids == by_file.ids and by_decoded.scores == pytest.approx(by_file.scores, abs=1e-6)
