"""The CPU runtimes behind build_network: same descriptors as Keras, clear errors, a cache that follows the weights."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings

import keras
import numpy as np
import pytest

from retrieval import onnx_export, runtimes
from retrieval.features import Pipeline, extract_features
from retrieval.networks import Network, NetworkError, build_network, forward, tiny_network, with_runtime

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

FAST = ("onnxruntime", "openvino")


@pytest.fixture(scope="module", params=FAST)
def lite0_fast(request, lite0, tmp_path_factory):
    return with_runtime(lite0, request.param, cache_dir=tmp_path_factory.mktemp("runtime-cache"))


@pytest.fixture
def conversions(monkeypatch):
    """Counts conversions (cache misses) of both runtimes."""
    calls = []
    convert, write = runtimes._convert, onnx_export.keras_to_onnx

    def counting(ov, graph):
        calls.append(graph)
        return convert(ov, graph)

    def counting_onnx(model, **kwargs):
        calls.append(model)
        return write(model, **kwargs)

    monkeypatch.setattr(runtimes, "_convert", counting)
    monkeypatch.setattr(onnx_export, "keras_to_onnx", counting_onnx)
    return calls


def test_fast_runtime_descriptors_match_keras_on_real_photos(lite0, lite0_fast, rparis_dir):
    photos = sorted((rparis_dir / "jpg").glob("*.jpg"))[::100][:4]
    pipeline = Pipeline(max_side=384)
    ours = extract_features(lite0_fast, photos, pipeline, batch_size=2)
    keras_ = extract_features(lite0, photos, pipeline, batch_size=2)
    assert lite0_fast.runtime in FAST and lite0.runtime == "keras"
    assert ours.shape == keras_.shape == (4, 1280)
    assert np.all(np.sum(ours * keras_, axis=1) >= 0.999)


def test_fast_runtimes_take_every_input_size_and_batch(lite0, lite0_fast):
    for shape in [(1, 288, 384, 3), (3, 384, 256, 3), (1, 37, 500, 3)]:
        batch = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        ours, keras_ = forward(lite0_fast, batch), forward(lite0, batch)
        assert ours.shape == keras_.shape
        np.testing.assert_allclose(ours, keras_, atol=1e-3)


def test_b7_through_onnxruntime_matches_keras():
    b7 = build_network("efficientnet-b7", weights="none", runtime="keras")
    fast = with_runtime(b7, "onnxruntime")
    batch = np.random.default_rng(2).uniform(0, 255, (1, 96, 64, 3)).astype(np.float32)
    ours, expected = forward(fast, batch), forward(b7, batch)
    assert fast.runtime == "onnxruntime" and ours.shape == expected.shape == (1, 3, 2, 2560)
    cosine = np.sum(ours * expected) / np.linalg.norm(ours) / np.linalg.norm(expected)
    assert cosine >= 0.9999


def test_a_layer_the_converter_does_not_know_is_refused_by_name(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.MaxPooling2D(name="odd_pool")(keras.layers.Conv2D(4, 3)(inputs)))
    with pytest.raises(onnx_export.UnsupportedLayer, match="layer odd_pool of type MaxPooling2D"):
        onnx_export.keras_to_onnx(model)
    network = tiny_network()
    network = type(network)(name="odd", weights="none", model=model, channels=4)
    with pytest.raises(NetworkError, match="runtime onnxruntime cannot load odd: odd cannot be written as ONNX"):
        with_runtime(network, "onnxruntime", cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="runtime auto: onnxruntime cannot load"):
        assert with_runtime(network, "auto", cache_dir=tmp_path).runtime == "keras"


def test_an_unknown_runtime_or_precision_is_refused_by_name(tiny):
    with pytest.raises(NetworkError, match="unknown runtime 'tensorrt'; known runtimes: auto, onnxruntime, openvino, "
                                           "keras"):
        build_network("efficientnet-lite0", runtime="tensorrt")
    with pytest.raises(NetworkError, match="unknown precision 'int4'"):
        with_runtime(tiny, "openvino", precision="int4")
    with pytest.raises(NetworkError, match=r"precision bfloat16 needs runtime openvino \(or auto\), not keras"):
        with_runtime(tiny, "keras", precision="bfloat16")
    with pytest.raises(NetworkError, match="precision bfloat16 needs runtime openvino .*not onnxruntime"):
        with_runtime(tiny, "onnxruntime", precision="bfloat16")


@pytest.mark.parametrize("runtime, module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_a_runtime_that_cannot_load_falls_back_to_keras_only_for_auto(tiny, monkeypatch, tmp_path, runtime, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    with pytest.raises(NetworkError, match=f"runtime {runtime} cannot load tiny-8-seed0: the {module} (and onnx )?"
                                           "packages? cannot be imported"):
        with_runtime(tiny, runtime, cache_dir=tmp_path)
    precision = "float32" if runtime == "onnxruntime" else "bfloat16"  # what auto runs with each
    with pytest.warns(RuntimeWarning, match=rf"runtime auto: {runtime} cannot load .*; falling back to keras"):
        network = with_runtime(tiny, "auto", precision=precision, cache_dir=tmp_path)
    assert network.runtime == "keras" and network.precision == "float32"
    batch = np.full((1, 64, 64, 3), 100.0, np.float32)
    np.testing.assert_array_equal(forward(network, batch), forward(tiny, batch))


def test_auto_takes_onnxruntime_when_it_loads_and_openvino_for_bfloat16(tiny, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        network = with_runtime(tiny, "auto", cache_dir=tmp_path)
        reduced = with_runtime(tiny, "auto", precision="bfloat16", cache_dir=tmp_path)
    assert network.runtime == "onnxruntime" and "runtime onnxruntime" in network.describe()
    assert reduced.runtime == "openvino" and reduced.describe().endswith("runtime openvino bfloat16")


@pytest.mark.parametrize("runtime", FAST)
def test_the_conversion_cache_is_reused_and_rebuilt_when_the_weights_change(conversions, tmp_path, runtime):
    net = tiny_network(seed=3)
    batch = np.random.default_rng(1).uniform(0, 255, (2, 96, 64, 3)).astype(np.float32)
    first = with_runtime(net, runtime, cache_dir=tmp_path)
    again = with_runtime(tiny_network(seed=3), runtime, cache_dir=tmp_path)  # same weights, new Keras build
    assert len(conversions) == 1 and len(list(tmp_path.iterdir())) == 1
    np.testing.assert_allclose(forward(again, batch), forward(net, batch), atol=1e-5)

    kernel = net.model.get_layer("conv4").kernel
    kernel.assign(-np.asarray(kernel))  # the same network with other weights
    changed = with_runtime(net, runtime, cache_dir=tmp_path)
    assert len(conversions) == 2 and len(list(tmp_path.iterdir())) == 2
    np.testing.assert_allclose(forward(changed, batch), forward(net, batch), atol=1e-5)
    assert not np.allclose(forward(changed, batch), forward(first, batch), atol=1e-3)


def test_a_new_onnx_converter_converts_again(conversions, tmp_path, monkeypatch):
    net = tiny_network(seed=6)
    with_runtime(net, "onnxruntime", cache_dir=tmp_path)
    with_runtime(net, "onnxruntime", cache_dir=tmp_path)
    assert len(conversions) == 1
    monkeypatch.setattr(onnx_export, "VERSION", onnx_export.VERSION + 1)
    with_runtime(net, "onnxruntime", cache_dir=tmp_path)
    assert len(conversions) == 2 and len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("runtime, file", [("onnxruntime", "model.onnx"), ("openvino", "model.xml")])
def test_a_damaged_cache_entry_is_converted_again(conversions, tmp_path, runtime, file):
    net = tiny_network(seed=4)
    with_runtime(net, runtime, cache_dir=tmp_path)
    (folder,) = tmp_path.iterdir()
    (folder / file).write_text("<truncated")
    network = with_runtime(net, runtime, cache_dir=tmp_path)
    assert len(conversions) == 2
    batch = np.full((1, 64, 64, 3), 50.0, np.float32)
    np.testing.assert_allclose(forward(network, batch), forward(net, batch), atol=1e-5)


def test_converting_sends_no_telemetry(tiny, tmp_path):
    with_runtime(tiny, "openvino", cache_dir=tmp_path)
    from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils

    assert convert_impl.tm is telemetry_stub and telemetry_utils.tm is telemetry_stub


@pytest.mark.parametrize("runtime", FAST)
def test_a_runtime_reports_what_it_did_to_load(tiny, tmp_path, runtime):
    def load(**kwargs):
        if runtime == "openvino":
            return runtimes.openvino_infer(tiny.name, tiny.model, tiny._graph, **kwargs)
        return runtimes.onnxruntime_infer(tiny.name, tiny.model, **kwargs)

    package = __import__(runtime)
    cache = tmp_path / "not" / "yet"  # made with its parents
    infer, first = load(cache_dir=cache, threads=1)
    _, again = load(cache_dir=cache)
    _, memory = load()
    (folder,) = cache.iterdir()  # nothing else: no temporary folder left beside it
    assert folder.name.startswith(f"{tiny.name}-{runtime}-")
    assert (first["cached"], again["cached"], memory["cached"]) == (False, True, False)
    assert (first["folder"], again["folder"], memory["folder"]) == (str(folder), str(folder), None)
    assert (first["threads"], again["threads"]) == (1, len(os.sched_getaffinity(0)))
    assert first["version"] == again["version"] == package.__version__
    for info in (first, again, memory):
        assert 0 < info["convert_s"] < 60 and 0 < info["compile_s"] < 60
    batch = np.random.default_rng(5).uniform(0, 255, (5, 64, 32, 3)).astype(np.float32)  # onnxruntime: 2 + 2 + 1
    out = infer(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, forward(tiny, batch), atol=1e-5)
    assert not np.shares_memory(infer(batch), out)  # a new array each call, not the runtime's own buffer

    # The folder: the converted model and the key it was converted for, named by that key.
    files = {"onnxruntime": ["key.json", "model.onnx"], "openvino": ["key.json", "model.bin", "model.xml"]}
    assert sorted(p.name for p in folder.iterdir()) == files[runtime]
    text = (folder / "key.json").read_text()
    key = json.loads(text)
    version = package.__version__ + (f"+export{onnx_export.VERSION}" if runtime == "onnxruntime" else "")
    assert {k: v for k, v in key.items() if not k.endswith("_sha256")} == {
        "network": tiny.name, "runtime": runtime, "runtime_version": version}
    assert sorted(key) == ["architecture_sha256", "network", "runtime", "runtime_version", "weights_sha256"]
    assert all(len(key[k]) == 64 and int(key[k], 16) >= 0 for k in ("architecture_sha256", "weights_sha256"))
    assert text == json.dumps(key, indent=1, sort_keys=True) + "\n"  # readable: one entry a line, sorted
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    assert folder.name == f"{tiny.name}-{runtime}-{digest}"
    if runtime == "onnxruntime":
        import onnx

        assert onnx.load(folder / "model.onnx").graph.name == tiny.name


def _padded(padding: str) -> Network:
    """A two-layer unnamed model with fixed weights; ``padding`` changes its architecture, not its weights."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding=padding, activation="relu", name="conv")(x)
    model = keras.Model(inputs, x)
    model.set_weights([np.linspace(-1, 1, w.size, dtype=np.float32).reshape(w.shape) for w in model.get_weights()])
    return Network(name="padded", weights="none", model=model, channels=4)


def test_a_changed_architecture_converts_again_and_an_unnamed_model_built_again_does_not(conversions, tmp_path):
    batch = np.random.default_rng(3).uniform(0, 255, (1, 33, 47, 3)).astype(np.float32)
    with_runtime(_padded("same"), "onnxruntime", cache_dir=tmp_path)
    valid = _padded("valid")
    fast = with_runtime(valid, "onnxruntime", cache_dir=tmp_path)
    assert len(conversions) == 2 and len(list(tmp_path.iterdir())) == 2
    assert forward(fast, batch).shape == (1, 16, 23, 4)
    np.testing.assert_allclose(forward(fast, batch), forward(valid, batch), atol=1e-5)
    with_runtime(_padded("same"), "onnxruntime", cache_dir=tmp_path)  # "functional_2" now, the same key
    assert len(conversions) == 2


def test_a_half_written_key_is_not_trusted_and_a_crash_while_converting_leaves_nothing(conversions, tmp_path,
                                                                                     monkeypatch):
    net = tiny_network(seed=5)
    with_runtime(net, "onnxruntime", cache_dir=tmp_path)
    (folder,) = tmp_path.iterdir()
    key = (folder / "key.json").read_text()
    (folder / "key.json").write_text(key[:len(key) // 2])  # its model is whole, its key is not

    seen = []
    counting = onnx_export.keras_to_onnx

    class Crash:
        def SerializeToString(self):  # called while the new entry is written
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            raise OSError("disk full")

    def crashing(model, **kwargs):
        counting(model, **kwargs)
        return Crash()

    monkeypatch.setattr(onnx_export, "keras_to_onnx", crashing)
    with pytest.raises(NetworkError, match=f"ONNX Runtime cannot load {net.name}: OSError: disk full$"):
        with_runtime(net, "onnxruntime", cache_dir=tmp_path)
    assert len(conversions) == 2  # the half-written key was not trusted
    (writing,) = [name for name in seen[0] if name != folder.name]  # a hidden folder beside it while writing
    assert writing.startswith(f".{folder.name}-") and len(seen[0]) == 2
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # which the crash removed

    monkeypatch.setattr(onnx_export, "keras_to_onnx", counting)
    network = with_runtime(net, "onnxruntime", cache_dir=tmp_path)
    assert len(conversions) == 3 and (folder / "key.json").read_text() == key
    batch = np.full((1, 64, 64, 3), 50.0, np.float32)
    np.testing.assert_allclose(forward(network, batch), forward(net, batch), atol=1e-5)


@pytest.mark.parametrize("runtime", FAST)
def test_a_runtime_runs_on_the_cpu_with_the_threads_asked(tiny, monkeypatch, runtime):
    made = []
    if runtime == "onnxruntime":
        import onnxruntime as ort

        class Session(ort.InferenceSession):
            def __init__(self, source, sess_options=None, **kwargs):
                super().__init__(source, sess_options, **kwargs)
                made.append((self, kwargs))

        monkeypatch.setattr(ort, "InferenceSession", Session)
        runtimes.onnxruntime_infer(tiny.name, tiny.model, threads=1)
        ((session, kwargs),) = made
        # Asked for by name: a build with more providers may otherwise pick another.
        assert kwargs == {"providers": ["CPUExecutionProvider"]} and session.get_providers() == kwargs["providers"]
        options = session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (1, 1, 3)
        # Threads spin while a pass runs and stop when it returns (measured: see runtimes.py).
        assert [options.get_session_config_entry(f"session.{entry}")
                for entry in ("intra_op.allow_spinning", "force_spinning_stop")] == ["1", "1"]
        assert session.get_modelmeta().graph_name == tiny.name
    else:
        import openvino as ov

        class Core(ov.Core):
            def compile_model(self, model, device_name=None, config=None, **kwargs):
                compiled = super().compile_model(model, device_name, config, **kwargs)
                made.append((device_name, compiled))
                return compiled

        monkeypatch.setattr(ov, "Core", Core)
        runtimes.openvino_infer(tiny.name, tiny.model, tiny._graph, threads=1)
        ((device, compiled),) = made
        assert device == "CPU" and compiled.get_property("EXECUTION_DEVICES") == ["CPU"]  # not AUTO's choice
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_a_graph_a_runtime_refuses_is_reported_with_the_runtimes_own_error(tiny, monkeypatch):
    with pytest.raises(runtimes.RuntimeUnavailable) as refused:  # not a tf.function: nothing to convert
        runtimes.openvino_infer(tiny.name, tiny.model, object())
    assert str(refused.value) == (f"OpenVINO cannot convert or compile {tiny.name}: AttributeError: "
                                  "'object' object has no attribute 'get_concrete_function'")

    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "odd", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    monkeypatch.setattr(onnx_export, "keras_to_onnx", lambda model, **kwargs: helper.make_model(graph))
    with pytest.raises(runtimes.RuntimeUnavailable) as refused:
        runtimes.onnxruntime_infer(tiny.name, tiny.model)
    error = refused.value.__cause__  # onnxruntime's own exception, named in the message
    assert "NoSuchOp" in str(error)
    assert str(refused.value) == f"ONNX Runtime cannot load {tiny.name}: {type(error).__name__}: {error}"
    assert type(error).__module__.startswith("onnxruntime")


def test_openvino_refuses_an_unknown_precision_by_name(tiny):
    with pytest.raises(ValueError, match=r"^unknown precision 'int8'; known: float32, bfloat16$"):
        runtimes.openvino_infer(tiny.name, tiny.model, tiny._graph, precision="int8")
