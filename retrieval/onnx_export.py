"""Writes a Keras convolutional network as an ONNX graph, layer by layer, in a second or two.

Only the layers our networks are made of are known (EfficientNetB7 from ``keras.applications``,
our EfficientNet-Lite0, the tiny test network): convolutions, depthwise convolutions, batch
normalisation, zero padding, the input rescaling and normalisation, squeeze-and-excitation
(global average pooling, reshape, multiply), additions, dropout (nothing at inference) and the
activations relu, relu6, sigmoid and silu. Any other layer or setting raises
``UnsupportedLayer`` with its name, so a network we do not know is refused, not converted wrong.

Why not tf2onnx: it converted B7 in 83 s (73 s of it in its own graph optimiser, deep-copying
the graph for every pass), and turned Keras' Normalization constants into graph inputs that
had to be fed by hand; here a conversion copies the weights once. The graph works in NCHW,
ONNX's layout, with one transpose at each end, so it takes and returns NHWC like the Keras model.
Batch, height and width stay dynamic.

The layers are read without importing Keras, by class name and ``get_config()``, in the
functional model's order, each with its one call (its inbound node).
"""

from __future__ import annotations

import numpy as np

__all__ = ["OPSET", "VERSION", "UnsupportedLayer", "keras_to_onnx"]

OPSET = 17
# Part of a cached conversion's key (retrieval.runtimes): raise it whenever the graph written changes.
VERSION = 2
_INPUT, _OUTPUT = "images", "features"


class UnsupportedLayer(ValueError):
    """The network has a layer, or a layer setting, that this converter does not know."""


def keras_to_onnx(model, *, name: str = "network"):
    """Returns the ONNX ModelProto of a Keras functional model of the known layers.

    Args:
        model: a Keras functional model, one input (b, h, w, 3) float32 and one output
            (b, h', w', c), each layer called once.
        name: the graph's name.

    Returns:
        An ``onnx.ModelProto`` with input "images" (b, h, w, 3) and output "features"
        (b, h', w', c), float32, batch, height and width dynamic.

    Raises:
        UnsupportedLayer: a layer or a setting not listed in the module's docstring.
    """
    from onnx import TensorProto, helper

    graph = _Graph()
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedLayer(f"expected one input and one output, got {len(model.inputs)} and {len(model.outputs)}")
    names = {id(model.inputs[0]): graph.node("Transpose", [_INPUT], perm=[0, 3, 1, 2])}
    flat = set()  # tensors that Keras holds as (b, c) and we as (b, c, 1, 1)
    operations = getattr(model, "operations", model.layers)  # Keras operations such as x[:, 1:] too
    foldable, padded = _paddings_to_fold(operations), {}
    for layer in operations:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        convert = _CONVERTERS.get(kind)
        if convert is None:
            raise UnsupportedLayer(f"layer {layer.name} of type {kind} is not known to the ONNX converter")
        nodes = getattr(layer, "_inbound_nodes", [])
        if len(nodes) != 1:
            raise UnsupportedLayer(f"layer {layer.name} is called {len(nodes)} times; expected once")
        inputs = [names[id(t)] for t in nodes[0].input_tensors]
        outputs = nodes[0].output_tensors
        if len(outputs) != 1:
            raise UnsupportedLayer(f"layer {layer.name} has {len(outputs)} outputs; expected one")
        was_flat = any(id(t) in flat for t in nodes[0].input_tensors)
        config = layer.get_config()
        if layer.name in foldable:  # a zero padding that the next convolution does by itself
            names[id(outputs[0])] = inputs[0]
            padded[id(outputs[0])] = foldable[layer.name]
            continue
        if id(nodes[0].input_tensors[0]) in padded:
            config["_pads"] = padded[id(nodes[0].input_tensors[0])]
        out, is_flat = convert(graph, layer, config, inputs, was_flat)
        names[id(outputs[0])] = out
        if is_flat:
            flat.add(id(outputs[0]))
    if id(model.outputs[0]) in flat:
        raise UnsupportedLayer("the network ends in a pooled vector, not a feature map")
    graph.node("Transpose", [names[id(model.outputs[0])]], perm=[0, 2, 3, 1], output=_OUTPUT)

    dims = ["batch", "height", "width", 3]
    onnx_graph = helper.make_graph(
        graph.nodes, name,
        [helper.make_tensor_value_info(_INPUT, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(_OUTPUT, TensorProto.FLOAT, ["batch", "rows", "columns", None])],
        initializer=graph.initializers)
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             producer_name="landmark-search")


def _paddings_to_fold(operations) -> dict[str, list[int]]:
    """Returns {ZeroPadding2D layer name: ONNX conv pads} for the paddings whose one consumer is a
    convolution with "valid" padding: the convolution pads by itself, without a padded copy of
    its input (B7 pads before each of its strided convolutions)."""
    consumers: dict[int, list] = {}
    for layer in operations:
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in node.input_tensors:
                consumers.setdefault(id(tensor), []).append(layer)
    out = {}
    for layer in operations:
        if type(layer).__name__ != "ZeroPadding2D" or len(getattr(layer, "_inbound_nodes", [])) != 1:
            continue
        config = layer.get_config()
        users = consumers.get(id(layer._inbound_nodes[0].output_tensors[0]), [])
        if (config.get("data_format") == "channels_last" and len(users) == 1
                and type(users[0]).__name__ in ("Conv2D", "DepthwiseConv2D")
                and users[0].get_config().get("padding") == "valid"):
            (top, bottom), (left, right) = config["padding"]
            out[layer.name] = [int(top), int(left), int(bottom), int(right)]
    return out


class _Graph:
    """The nodes and constants of the graph being written, with fresh tensor names."""

    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str = "const", dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], *, output: str | None = None, **attrs) -> str:
        from onnx import helper

        output = output or self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output


def _check(layer, config: dict, key: str, allowed) -> None:
    value = config.get(key)
    value = tuple(value) if isinstance(value, list) else value
    if value not in allowed:
        raise UnsupportedLayer(f"layer {layer.name}: {key}={value!r} is not supported (supported: {allowed})")


def _activation(graph: _Graph, layer, name, x: str, max_value=None) -> str:
    if name in ("linear", None):
        return x
    if name == "relu":
        if max_value is None:
            return graph.node("Relu", [x])
        return graph.node("Clip", [x, graph.const(np.float32(0.0)), graph.const(np.float32(max_value))])
    if name == "sigmoid":
        return graph.node("Sigmoid", [x])
    if name in ("silu", "swish"):
        return graph.node("Mul", [x, graph.node("Sigmoid", [x])])
    raise UnsupportedLayer(f"layer {layer.name}: activation {name!r} is not supported")


def _conv_attrs(layer, config: dict) -> dict:
    _check(layer, config, "data_format", ("channels_last",))
    _check(layer, config, "padding", ("same", "valid"))
    attrs = {"strides": list(config["strides"]), "dilations": list(config["dilation_rate"])}
    if "_pads" in config:  # "valid" after a folded zero padding: (top, left, bottom, right)
        return {**attrs, "pads": config["_pads"]}
    return {**attrs, "auto_pad": "SAME_UPPER" if config["padding"] == "same" else "VALID"}


def _conv(graph, layer, config, inputs, flat):
    _check(layer, config, "groups", (1,))
    kernel, *bias = layer.get_weights()
    weights = [graph.const(np.transpose(kernel, (3, 2, 0, 1)), "kernel")]  # (kh, kw, in, out) -> (out, in, kh, kw)
    if config.get("use_bias"):
        weights.append(graph.const(bias[0], "bias"))
    x = graph.node("Conv", [inputs[0], *weights], **_conv_attrs(layer, config))
    return _activation(graph, layer, config.get("activation"), x), False


def _depthwise(graph, layer, config, inputs, flat):
    kernel, *bias = layer.get_weights()
    kh, kw, channels, multiplier = kernel.shape
    # Keras' output channel c * multiplier + j is input c's j-th filter, as in a grouped ONNX conv.
    weights = [graph.const(np.transpose(kernel, (2, 3, 0, 1)).reshape(channels * multiplier, 1, kh, kw), "kernel")]
    if config.get("use_bias"):
        weights.append(graph.const(bias[0], "bias"))
    x = graph.node("Conv", [inputs[0], *weights], group=int(channels), **_conv_attrs(layer, config))
    return _activation(graph, layer, config.get("activation"), x), False


def _batch_norm(graph, layer, config, inputs, flat):
    _check(layer, config, "axis", (-1, 3, (3,), (-1,)))
    values = dict(zip((w.path.rsplit("/", 1)[-1] for w in layer.weights), layer.get_weights()))
    mean, variance = values["moving_mean"], values["moving_variance"]
    gamma = values.get("gamma", np.ones_like(mean))
    beta = values.get("beta", np.zeros_like(mean))
    x = graph.node("BatchNormalization", [inputs[0], graph.const(gamma, "gamma"), graph.const(beta, "beta"),
                                          graph.const(mean, "mean"), graph.const(variance, "variance")],
                   epsilon=float(config["epsilon"]))
    return x, False


def _per_channel(graph, x: str, scale, offset) -> str:
    """x * scale + offset, each a scalar or one value per channel."""
    scale = np.asarray(scale, np.float32).reshape(1, -1, 1, 1)
    offset = np.asarray(offset, np.float32).reshape(1, -1, 1, 1)
    return graph.node("Add", [graph.node("Mul", [x, graph.const(scale, "scale")]), graph.const(offset, "offset")])


def _rescaling(graph, layer, config, inputs, flat):
    return _per_channel(graph, inputs[0], config["scale"], config["offset"]), flat


def _normalization(graph, layer, config, inputs, flat):
    _check(layer, config, "invert", (False, None))
    _check(layer, config, "axis", (-1, 3, (3,), (-1,)))
    mean = np.asarray(layer.mean, np.float32).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float32).reshape(-1)), 1e-7)  # as Keras does
    return _per_channel(graph, inputs[0], 1.0 / std, -mean / std), False


def _zero_padding(graph, layer, config, inputs, flat):
    _check(layer, config, "data_format", ("channels_last",))
    (top, bottom), (left, right) = config["padding"]
    pads = graph.const([0, 0, top, left, 0, 0, bottom, right], "pads", dtype=np.int64)
    return graph.node("Pad", [inputs[0], pads], mode="constant"), False


def _activation_layer(graph, layer, config, inputs, flat):
    return _activation(graph, layer, config["activation"], inputs[0]), flat


def _relu(graph, layer, config, inputs, flat):
    if config.get("negative_slope") or config.get("threshold"):
        raise UnsupportedLayer(f"layer {layer.name}: a leaky or thresholded ReLU is not supported")
    return _activation(graph, layer, "relu", inputs[0], config.get("max_value")), flat


def _global_average(graph, layer, config, inputs, flat):
    _check(layer, config, "data_format", ("channels_last",))
    return graph.node("GlobalAveragePool", [inputs[0]]), not config.get("keepdims")


def _reshape(graph, layer, config, inputs, flat):
    target = tuple(config["target_shape"])
    if not (flat and len(target) == 3 and target[:2] == (1, 1)):
        raise UnsupportedLayer(f"layer {layer.name}: only a pooled vector reshaped to (1, 1, c) is supported")
    return inputs[0], False  # already (b, c, 1, 1)


def _elementwise(op):
    def convert(graph, layer, config, inputs, flat):
        if flat:
            raise UnsupportedLayer(f"layer {layer.name}: {op} of a pooled vector is not supported")
        x = inputs[0]
        for other in inputs[1:]:
            x = graph.node(op, [x, other])
        return x, False
    return convert


def _identity(graph, layer, config, inputs, flat):
    return inputs[0], flat


_CONVERTERS = {
    "Conv2D": _conv, "DepthwiseConv2D": _depthwise, "BatchNormalization": _batch_norm,
    "Rescaling": _rescaling, "Normalization": _normalization, "ZeroPadding2D": _zero_padding,
    "Activation": _activation_layer, "ReLU": _relu, "GlobalAveragePooling2D": _global_average,
    "Reshape": _reshape, "Multiply": _elementwise("Mul"), "Add": _elementwise("Add"), "Dropout": _identity,
}
