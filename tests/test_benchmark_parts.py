import numpy as np
import pytest
from PIL import Image

from benchmarks.parts import (
    ForwardCounter,
    common_input_shape,
    exact_search_blocked,
    linked_folder,
    summarize,
    unit_rows,
)
from retrieval.features import Pipeline
from retrieval.search import Searcher


def test_blocked_float16_search_matches_the_exact_searcher():
    rows = unit_rows(1000, 48, seed=3, dtype=np.float16)
    rows[500] = rows[7]  # a tie: the lower row must come first, as in Searcher
    query = rows[7].astype(np.float32)
    want_scores, want_rows = Searcher(rows.astype(np.float32), backend="exact").search(query, 10)
    scores, found = exact_search_blocked(rows, query, 10, block=64)
    assert found.tolist() == want_rows[0].tolist() and found[:2].tolist() == [7, 500]
    np.testing.assert_allclose(scores, want_scores[0], rtol=1e-6)
    assert exact_search_blocked(rows, query, 1000, block=300)[1].tolist() == Searcher(
        rows.astype(np.float32), backend="exact").rank_all(query)[0].tolist()
    with pytest.raises(ValueError, match="k must be between 1 and 1000"):
        exact_search_blocked(rows, query, 0)


def test_summarize_is_hand_computed():
    s = summarize([t / 1000 for t in range(1, 101)])  # 1..100 ms
    assert s["n"] == 100
    assert s["median_ms"] == pytest.approx(50.5) and s["mean_ms"] == pytest.approx(50.5)
    assert s["p95_ms"] == pytest.approx(95.05)  # linear interpolation between 95 and 96
    with pytest.raises(ValueError):
        summarize([])


def test_unit_rows_are_seeded_unit_vectors_across_blocks():
    a = unit_rows(10, 5, seed=1, dtype=np.float16, block=4)
    assert a.shape == (10, 5) and a.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(a.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert np.array_equal(a, unit_rows(10, 5, seed=1, dtype=np.float16, block=4))
    assert not np.array_equal(a, unit_rows(10, 5, seed=2, dtype=np.float16, block=4))


def test_common_input_shape_counts_network_inputs(tmp_path):
    sizes = [(400, 300), (800, 600), (300, 400), (100, 100)]
    files = []
    for i, size in enumerate(sizes):
        files.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", size).save(files[-1])
    # max side 64: 400x300 and 800x600 both become 64x48, so (48, 64, 3) twice.
    assert common_input_shape(files, Pipeline(max_side=64)) == ((48, 64, 3), 2)


def test_forward_counter_counts_calls_images_and_passes_results_through():
    counter = ForwardCounter(lambda network, batch: batch * 2)
    assert counter(None, np.ones((3, 1))).sum() == 6
    counter(None, np.ones((1, 1)))
    stats = counter.stats()
    assert stats["forward_calls"] == 2 and stats["mean_batch"] == 2.0 and stats["forward_seconds"] >= 0


def test_linked_folder_repeats_files_under_new_names(tmp_path):
    src = tmp_path / "a.JPG"
    src.write_bytes(b"x")
    folder = linked_folder([src], tmp_path / "links", repeat=3)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["r00_00000.jpg", "r01_00000.jpg", "r02_00000.jpg"]
    assert all((folder / n).read_bytes() == b"x" for n in names)
