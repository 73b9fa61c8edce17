"""retrieval.onnx_export: Keras layers written as ONNX give Keras' feature maps, and unknown layers are refused."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from retrieval import onnx_export
from retrieval.networks import tiny_network

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _converters_made_in_the_test(monkeypatch):
    """Makes the Add and Multiply converters again, as the module made them on import: so that
    mutation testing, which imports the module once and then switches mutants, reaches their
    factory too."""
    for kind, op in [("Add", "Add"), ("Multiply", "Mul")]:
        monkeypatch.setitem(onnx_export._CONVERTERS, kind, onnx_export._elementwise(op))


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
    model = tiny_network().model
    proto = onnx_export.keras_to_onnx(model, name="tiny")
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name, proto.graph.name) == ("images", "features", "tiny")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    out_dims = out.type.tensor_type.shape.dim
    assert [d.WhichOneof("value") and (d.dim_param or d.dim_value) for d in out_dims] == [
        "batch", "rows", "columns", None]  # the channel count is left open
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", onnx_export.OPSET)]
    assert proto.producer_name == "landmark-search"
    assert onnx_export.keras_to_onnx(model).graph.name == "network"


def _pooled_sum(x):
    layers = keras.layers
    return layers.Add(name="add_pooled")([layers.GlobalAveragePooling2D()(x), layers.GlobalAveragePooling2D()(x)])


def _channels_first_padding_before_valid_conv(x):
    padded = keras.layers.ZeroPadding2D(1, data_format="channels_first", name="zp_cf")(x)
    return keras.layers.Conv2D(2, 3, padding="valid")(padded)


_NOT_SUPPORTED = "is not supported (supported: "
_LAST_AXIS = "(-1, 3, (3,), (-1,)))"


_REFUSED = [  # (layer, the start of the message, or all of it)
    (lambda: keras.layers.MaxPooling2D(name="odd_pool"), "layer odd_pool of type MaxPooling2D is not known"),
    (lambda: keras.layers.Activation("tanh", name="act"), "layer act: activation 'tanh' is not supported"),
    (lambda: keras.layers.Conv2D(4, 3, activation="elu", name="elu"), "layer elu: activation 'elu'"),
    (lambda: keras.layers.ReLU(negative_slope=0.1, name="leaky"), "layer leaky: a leaky or thresholded ReLU"),
    (lambda: keras.layers.ReLU(threshold=0.5, name="thr"), "layer thr: a leaky or thresholded ReLU"),
    (lambda: keras.layers.DepthwiseConv2D(3, activation="tanh", name="dw_tanh"),
     "layer dw_tanh: activation 'tanh' is not supported"),
    (lambda: keras.layers.BatchNormalization(axis=1, name="bn_rows"),
     f"layer bn_rows: axis=1 {_NOT_SUPPORTED}{_LAST_AXIS}"),
    (lambda: keras.layers.Normalization(axis=1, mean=np.zeros(8), variance=np.ones(8), name="norm_rows"),
     f"layer norm_rows: axis=(1,) {_NOT_SUPPORTED}{_LAST_AXIS}"),
    (lambda: keras.layers.Normalization(mean=np.zeros(4), variance=np.ones(4), invert=True, name="denorm"),
     f"layer denorm: invert=True {_NOT_SUPPORTED}(False, None))"),
    (lambda: keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv_cf"),
     f"layer conv_cf: data_format='channels_first' {_NOT_SUPPORTED}('channels_last',))"),
    (lambda: keras.layers.DepthwiseConv2D(3, data_format="channels_first", name="dw_cf"),
     "layer dw_cf: data_format='channels_first' is not supported"),
    (lambda: keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="gap_cf"),
     "layer gap_cf: data_format='channels_first' is not supported"),
    (lambda: _channels_first_padding_before_valid_conv,  # not folded: refused, not padded the wrong way
     "layer zp_cf: data_format='channels_first' is not supported"),
    (lambda: keras.layers.Reshape((1, 1, 256), name="squeeze"),  # (1, 1, c), but not of a pooled vector
     "layer squeeze: only a pooled vector reshaped to (1, 1, c) is supported"),
    (lambda: _pooled_sum, "layer add_pooled: Add of a pooled vector is not supported"),
]


@pytest.mark.parametrize("make_layer, message", _REFUSED, ids=[message.split()[1].rstrip(":") for _, message in _REFUSED])
def test_a_layer_or_setting_the_converter_does_not_know_is_refused_by_name(make_layer, message):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, make_layer()(keras.layers.Conv2D(4, 1)(inputs)))
    with pytest.raises(onnx_export.UnsupportedLayer, match="^" + re.escape(message)):
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
    with pytest.raises(onnx_export.UnsupportedLayer, match="^the network ends in a pooled vector, not a feature map$"):
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


def test_a_network_of_two_outputs_or_a_layer_of_two_outputs_is_refused():
    inputs = keras.Input((None, None, 3))
    two = keras.Model(inputs, [keras.layers.Conv2D(2, 1)(inputs), keras.layers.Conv2D(2, 1)(inputs)])
    with pytest.raises(onnx_export.UnsupportedLayer, match="^expected one input and one output, got 1 and 2$"):
        onnx_export.keras_to_onnx(two)

    class Dropout(keras.layers.Layer):  # a known name, but a layer of its own that returns a pair
        def call(self, x):
            return x, x

    split = keras.Model(inputs, Dropout(name="pair")(keras.layers.Conv2D(2, 1)(inputs))[0])
    with pytest.raises(onnx_export.UnsupportedLayer, match="^layer pair has 2 outputs; expected one$"):
        onnx_export.keras_to_onnx(split)


def _small_model(build, channels=3, seed=11) -> keras.Model:
    inputs = keras.Input((None, None, channels))
    return randomise(keras.Model(inputs, build(inputs)), seed=seed)


def _batch_norms_without_beta_or_gamma_in_a_name_scope(x):
    layers = keras.layers
    x = layers.Conv2D(4, 1)(x)
    with keras.name_scope("encoder"):  # weight paths "encoder/<layer>/<weight>"
        x = layers.BatchNormalization(center=False)(x)
        x = layers.BatchNormalization(scale=False, epsilon=0.5)(x)
        return layers.BatchNormalization(axis=3, center=False, scale=False)(x)


def _valid_convolutions_and_a_padded_depthwise_last(x):
    layers = keras.layers
    x = layers.Conv2D(4, 3, padding="valid", dilation_rate=2)(x)  # "valid" with no padding to fold
    x = layers.ZeroPadding2D(((1, 0), (0, 2)))(x)  # folded into the depthwise convolution
    return layers.DepthwiseConv2D(3, strides=2, padding="valid", depth_multiplier=2, activation="relu")(x)


def _elementwise_of_several_inputs(x):
    layers = keras.layers
    a, b, c = (layers.Conv2D(3, 1)(x) for _ in range(3))
    return layers.Multiply()([layers.Add()([a, b, c]), b])


def _squeeze_excite_vector_last(x):
    se = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1)(x))
    return keras.layers.Reshape((1, 1, 4))(se)


@pytest.mark.parametrize("build, pads", [
    (_batch_norms_without_beta_or_gamma_in_a_name_scope, 0),
    (_valid_convolutions_and_a_padded_depthwise_last, 0),
    (_elementwise_of_several_inputs, 0),
    (lambda x: keras.layers.ZeroPadding2D(((1, 2), (0, 1)))(keras.layers.Conv2D(2, 1)(x)), 1),  # padding last
    (lambda x: keras.layers.Normalization(axis=3, mean=[1.0, -2.0, 3.0], variance=[4.0, 0.5, 2.0])(x), 0),
    (lambda x: keras.layers.GlobalAveragePooling2D(keepdims=True)(keras.layers.Conv2D(4, 1)(x)), 0),
    (_squeeze_excite_vector_last, 0),
], ids=["batch-norm", "valid-depthwise", "elementwise", "padding-last", "normalization", "keepdims", "se-vector"])
def test_small_layer_variants_give_keras_feature_map(build, pads):
    model = _small_model(build)
    ops = [node.op_type for node in onnx_export.keras_to_onnx(model).graph.node]
    assert ops.count("Pad") == pads
    assert_matches_keras(model, images((2, 11, 9, 3)))
