"""The CPU runtimes behind build_network: same descriptors as Keras, clear errors, a cache that follows the weights."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from retrieval import runtimes
from retrieval.features import Pipeline, extract_features
from retrieval.networks import NetworkError, build_network, forward, tiny_network, with_runtime

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def lite0_openvino(lite0, tmp_path_factory):
    return with_runtime(lite0, "openvino", cache_dir=tmp_path_factory.mktemp("runtime-cache"))


@pytest.fixture
def conversions(monkeypatch):
    """Counts OpenVINO conversions (cache misses)."""
    calls = []
    convert = runtimes._convert

    def counting(ov, graph):
        calls.append(graph)
        return convert(ov, graph)

    monkeypatch.setattr(runtimes, "_convert", counting)
    return calls


def test_openvino_descriptors_match_keras_on_real_photos(lite0, lite0_openvino, rparis_dir):
    photos = sorted((rparis_dir / "jpg").glob("*.jpg"))[::100][:4]
    pipeline = Pipeline(max_side=384)
    ours = extract_features(lite0_openvino, photos, pipeline, batch_size=2)
    keras = extract_features(lite0, photos, pipeline, batch_size=2)
    assert lite0_openvino.runtime == "openvino" and lite0.runtime == "keras"
    assert ours.shape == keras.shape == (4, 1280)
    assert np.all(np.sum(ours * keras, axis=1) >= 0.999)


def test_openvino_takes_every_input_size_and_batch(lite0, lite0_openvino):
    for shape in [(1, 288, 384, 3), (3, 384, 256, 3), (1, 37, 500, 3)]:
        batch = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        ours, keras = forward(lite0_openvino, batch), forward(lite0, batch)
        assert ours.shape == keras.shape
        np.testing.assert_allclose(ours, keras, atol=1e-3)


def test_an_unknown_runtime_or_precision_is_refused_by_name(tiny):
    with pytest.raises(NetworkError, match="unknown runtime 'tensorrt'; known runtimes: auto, openvino, keras"):
        build_network("efficientnet-lite0", runtime="tensorrt")
    with pytest.raises(NetworkError, match="unknown precision 'int4'"):
        with_runtime(tiny, "openvino", precision="int4")
    with pytest.raises(NetworkError, match="precision bfloat16 needs runtime openvino"):
        with_runtime(tiny, "keras", precision="bfloat16")


def test_a_runtime_that_cannot_load_falls_back_to_keras_only_for_auto(tiny, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(NetworkError, match="runtime openvino cannot load tiny-8-seed0: the openvino package"):
        with_runtime(tiny, "openvino", cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match=r"runtime auto: openvino cannot load .*; falling back to keras"):
        network = with_runtime(tiny, "auto", cache_dir=tmp_path)
    assert network.runtime == "keras"
    batch = np.full((1, 64, 64, 3), 100.0, np.float32)
    np.testing.assert_array_equal(forward(network, batch), forward(tiny, batch))


def test_auto_takes_openvino_when_it_loads(tiny, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        network = with_runtime(tiny, "auto", cache_dir=tmp_path)
    assert network.runtime == "openvino" and "runtime openvino" in network.describe()


def test_the_conversion_cache_is_reused_and_rebuilt_when_the_weights_change(conversions, tmp_path):
    keras = tiny_network(seed=3)
    batch = np.random.default_rng(1).uniform(0, 255, (2, 96, 64, 3)).astype(np.float32)
    first = with_runtime(keras, "openvino", cache_dir=tmp_path)
    again = with_runtime(tiny_network(seed=3), "openvino", cache_dir=tmp_path)  # same weights, new Keras build
    assert len(conversions) == 1 and len(list(tmp_path.iterdir())) == 1
    np.testing.assert_allclose(forward(again, batch), forward(keras, batch), atol=1e-5)

    kernel = keras.model.get_layer("conv4").kernel
    kernel.assign(-np.asarray(kernel))  # the same network with other weights
    changed = with_runtime(keras, "openvino", cache_dir=tmp_path)
    assert len(conversions) == 2 and len(list(tmp_path.iterdir())) == 2
    np.testing.assert_allclose(forward(changed, batch), forward(keras, batch), atol=1e-5)
    assert not np.allclose(forward(changed, batch), forward(first, batch), atol=1e-3)


def test_a_damaged_cache_entry_is_converted_again(conversions, tmp_path):
    keras = tiny_network(seed=4)
    with_runtime(keras, "openvino", cache_dir=tmp_path)
    (folder,) = tmp_path.iterdir()
    (folder / "model.xml").write_text("<truncated")
    network = with_runtime(keras, "openvino", cache_dir=tmp_path)
    assert len(conversions) == 2
    batch = np.full((1, 64, 64, 3), 50.0, np.float32)
    np.testing.assert_allclose(forward(network, batch), forward(keras, batch), atol=1e-5)


def test_converting_sends_no_telemetry(tiny, tmp_path):
    with_runtime(tiny, "openvino", cache_dir=tmp_path)
    from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils

    assert convert_impl.tm is telemetry_stub and telemetry_utils.tm is telemetry_stub


def test_auto_keeps_keras_for_b7_where_it_measured_faster():
    network = build_network("efficientnet-b7", weights="none", runtime="auto")
    assert network.runtime == "keras"
