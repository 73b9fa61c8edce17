"""retrieval.onnx_export: Keras layers written as ONNX give Keras' feature maps, and unknown layers are refused."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from retrieval import onnx_export
from retrieval.networks import tiny_network

onnxruntime = pytest.importorskip("onnxruntime")


def run_onnx(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    proto = onnx_export.keras_to_onnx(model)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": batch})
    return out


def images(shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def assert_matches_keras(model: keras.Model, batch: np.ndarray) -> None:
    expected = np.asarray(model(batch, training=False))
    ours = run_onnx(model, batch)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * max(np.abs(expected).max(), 1e-6))


def randomise(model: keras.Model, seed: int = 5) -> keras.Model:
    """Every weight drawn at random (batch statistics too: none at its neutral starting value)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = rng.normal(0.0, 0.3, weight.shape).astype(np.float32)
        weight.assign(np.abs(value) + 0.5 if "variance" in weight.path else value)
    return model


def _b7_like_model() -> keras.Model:
    """A few layers of every kind B7 has and Lite0 lacks: normalisation, padding, silu, squeeze-excite."""
    layers = keras.layers
    inputs = keras.Input((None, None, 3))
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    norm = layers.Normalization(axis=-1, mean=[0.485, 0.456, 0.406], variance=[0.229, 0.224, 0.225])
    x = layers.Rescaling([2.0, 1.0, 0.5])(norm(x))
    x = layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = layers.Conv2D(16, 3, strides=2, padding="valid", use_bias=False)(x)
    x = layers.Activation("silu")(layers.BatchNormalization()(x))
    y = layers.DepthwiseConv2D(5, strides=1, padding="same", depth_multiplier=2, use_bias=False)(x)
    y = layers.Activation("silu")(layers.BatchNormalization()(y))
    se = layers.GlobalAveragePooling2D()(y)
    se = layers.Reshape((1, 1, 32))(se)
    se = layers.Conv2D(4, 1, padding="same", activation="silu")(se)
    se = layers.Conv2D(32, 1, padding="same", activation="sigmoid")(se)
    y = layers.Multiply()([y, se])
    y = layers.Conv2D(16, 1, padding="same", use_bias=False)(y)
    y = layers.Dropout(0.2)(layers.BatchNormalization()(y))
    x = layers.Add()([y, x])
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    return randomise(keras.Model(inputs, x))


def test_every_layer_kind_b7_uses_gives_keras_feature_map():
    model = _b7_like_model()
    for shape in [(2, 64, 96, 3), (1, 33, 47, 3)]:  # odd sizes: "same" padding is uneven there
        assert_matches_keras(model, images(shape))




def test_lite0_layers_relu6_and_strided_same_convolutions_give_keras_feature_map():
    layers = keras.layers
    inputs = keras.Input((None, None, 3))
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.ReLU(max_value=6.0)(layers.BatchNormalization(epsilon=1e-3)(x))
    y = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=True)(x)
    y = layers.ReLU()(layers.BatchNormalization(epsilon=1e-2)(y))
    x = layers.Conv2D(8, 1, padding="same", use_bias=True, activation="relu")(y)
    model = randomise(keras.Model(inputs, x), seed=7)
    for weight in model.weights:  # large weights: relu6's ceiling of 6 is reached
        if weight.path.endswith("gamma"):
            weight.assign(np.asarray(weight) * 20)
    batch = images((3, 61, 50, 3))
    expected = np.asarray(model(batch, training=False))
    assert (expected > 0).any() and (expected == 0).any()
    assert_matches_keras(model, batch)


def test_a_zero_padding_is_folded_into_a_valid_convolution_and_kept_before_anything_else():
    layers = keras.layers
    inputs = keras.Input((None, None, 3))
    x = layers.Conv2D(6, 1)(inputs)
    folded = layers.Conv2D(6, 3, strides=2, padding="valid")(layers.ZeroPadding2D(((1, 2), (2, 1)))(x))
    kept = layers.ZeroPadding2D(((2, 0), (1, 1)))(x)  # read by a "same" convolution and by an addition
    kept = layers.Add()([layers.Conv2D(6, 3, padding="same")(kept), kept])
    x = layers.Add()([layers.Conv2D(6, 3, strides=2, padding="same")(kept), folded])
    model = randomise(keras.Model(inputs, x), seed=3)
    ops = [node.op_type for node in onnx_export.keras_to_onnx(model).graph.node]
    assert ops.count("Pad") == 1
    for shape in [(1, 40, 30, 3), (2, 36, 22, 3)]:
        assert_matches_keras(model, images(shape))


def test_the_tiny_network_gives_keras_feature_map():
    net = tiny_network(seed=2)
    assert_matches_keras(net.model, images((2, 70, 45, 3)))


def test_the_graph_takes_and_returns_channels_last_with_dynamic_sizes():
    proto = onnx_export.keras_to_onnx(tiny_network().model, name="tiny")
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name, proto.graph.name) == ("images", "features", "tiny")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    assert proto.opset_import[0].version == onnx_export.OPSET


@pytest.mark.parametrize("make_layer, message", [
    (lambda: keras.layers.MaxPooling2D(name="odd_pool"), "layer odd_pool of type MaxPooling2D is not known"),
    (lambda: keras.layers.Activation("tanh", name="act"), "layer act: activation 'tanh' is not supported"),
    (lambda: keras.layers.Conv2D(4, 3, activation="elu", name="elu"), "layer elu: activation 'elu'"),
    (lambda: keras.layers.ReLU(negative_slope=0.1, name="leaky"), "layer leaky: a leaky or thresholded ReLU"),
    (lambda: keras.layers.ReLU(threshold=0.5, name="thr"), "layer thr: a leaky or thresholded ReLU"),
])
def test_a_layer_or_setting_the_converter_does_not_know_is_refused_by_name(make_layer, message):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, make_layer()(keras.layers.Conv2D(4, 1)(inputs)))
    with pytest.raises(onnx_export.UnsupportedLayer, match=message):
        onnx_export.keras_to_onnx(model)


def test_a_grouped_convolution_and_a_reshape_that_is_not_squeeze_excite_are_refused():
    inputs = keras.Input((None, None, 4))
    grouped = keras.Model(inputs, keras.layers.Conv2D(4, 3, groups=2, name="grouped")(inputs))
    with pytest.raises(onnx_export.UnsupportedLayer, match="layer grouped: groups=2 is not supported"):
        onnx_export.keras_to_onnx(grouped)
    fixed = keras.Input((8, 8, 4))
    reshaped = keras.Model(fixed, keras.layers.Reshape((4, 16, 4), name="flatten")(fixed))
    with pytest.raises(onnx_export.UnsupportedLayer, match="layer flatten: only a pooled vector reshaped"):
        onnx_export.keras_to_onnx(reshaped)
    pooled = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(onnx_export.UnsupportedLayer, match="ends in a pooled vector"):
        onnx_export.keras_to_onnx(pooled)


def test_an_operation_that_is_not_a_layer_is_refused_by_name():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs)[:, 1:])
    with pytest.raises(onnx_export.UnsupportedLayer, match="of type GetItem is not known"):
        onnx_export.keras_to_onnx(model)


def test_a_layer_called_twice_is_refused():
    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1, name="shared")
    model = keras.Model(inputs, conv(conv(inputs)))
    with pytest.raises(onnx_export.UnsupportedLayer, match="layer shared is called 2 times"):
        onnx_export.keras_to_onnx(model)
