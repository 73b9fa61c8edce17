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
    result = engine.search(root / "p05.png", 4)
    q = embed_image(tiny, root / "p05.png", PIPE)
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
def diffusion_index(tiny, index, tmp_path_factory):
    from retrieval.diffusion import DiffusionSettings

    _, root = index
    out = tmp_path_factory.mktemp("idx") / "diffusion"
    settings = DiffusionSettings(k=3, seeds=2, alpha=0.9, candidates=8)
    build_index(root, out, tiny, PIPE, dtype="float16", qe=2, dba=1, diffusion=settings)
    return load_index(out), root, settings


@pytest.mark.parametrize("backend", ["kdtree", "exact"])
def test_engine_diffusion_ranks_as_the_evaluation_does(tiny, diffusion_index, backend):
    from precompute.evaluate import rank_queries

    idx, root, settings = diffusion_index
    assert idx.graph is not None and idx.meta["diffusion"] == settings.to_meta()
    engine = SearchEngine(idx, tiny, backend=backend)
    queries = np.stack([engine.embed(root / f"p{i:02d}.png") for i in range(12)])
    # The index holds DBA'd rows already; the evaluation rebuilds the graph from them.
    ranks, _ = rank_queries(idx.features, queries, backend=backend, qe=2, dba=0, diffusion=settings)
    for q, want in zip(queries, ranks):
        result = engine._search_vector(q, 12, embed_ms=0.0)
        assert result.ids == [idx.ids[r] for r in want]
        assert result.scores[0] == 1.0 and result.scores == sorted(result.scores, reverse=True)
    without = SearchEngine(idx, tiny, backend=backend, diffusion=False)._search_vector(queries[0], 12, embed_ms=0.0)
    plain, _ = rank_queries(idx.features, queries[:1], backend=backend, qe=2, dba=0)
    assert without.ids == [idx.ids[r] for r in plain[0]]
