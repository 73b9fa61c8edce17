import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks.gpu import StandInNetwork, format_markdown, install_network_stand_in, keras_forward, measure
from retrieval.features import Pipeline, extract_features, iter_features

PIPE = Pipeline(max_side=64)


def test_keras_forward_equals_the_library_forward(tiny):
    from retrieval.networks import forward

    batch = np.random.default_rng(0).uniform(0, 255, (2, 40, 72, 3)).astype(np.float32)
    np.testing.assert_allclose(keras_forward(tiny, batch), forward(tiny, batch), rtol=1e-5, atol=1e-5)


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(96, 64), (96, 64), (64, 96), (80, 80)]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    return folder


def test_stand_in_gives_iter_features_the_same_descriptors(tiny, photos, monkeypatch):
    files = sorted(photos.iterdir())
    want = extract_features(tiny, files, PIPE, batch_size=2)
    monkeypatch.setitem(sys.modules, "retrieval.networks", sys.modules["retrieval.networks"])  # restored after
    install_network_stand_in(keras_forward)
    assert sys.modules["retrieval.networks"].forward is keras_forward
    got = {item.position: item.vector for item in iter_features(tiny, files, PIPE, batch_size=2)}
    np.testing.assert_allclose(np.stack([got[i] for i in range(len(files))]), want, atol=1e-5)


def test_measure_reports_consistent_throughputs(tiny, photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "retrieval.networks", sys.modules["retrieval.networks"])
    network = StandInNetwork(tiny.name, tiny.weights, tiny.model, tiny.channels)
    r = measure(photos, repeat=2, batch_size=2, workers=[1, 2], max_side=64, forward_batches=[1],
                forward_budget_s=0.5, network=network)
    assert r["common_shape"] == [43, 64, 3] and r["common_shape_photos"] == 2 and r["distinct_shapes"] == 3
    assert set(r["forward"]) == {"1", "2"}
    for build in r["builds"]:
        assert build["images"] == 8 and 1 <= build["mean_batch"] <= 2
        assert build["ratio"] == pytest.approx(build["build_images_per_s"] / r["forward"]["2"]["images_per_s"])
        assert build["decode_images_per_s"] > 0
    text = format_markdown(r)
    assert "build_index, batch 2, 2 decode workers" in text and ("PASS" in text or "MISS" in text)
