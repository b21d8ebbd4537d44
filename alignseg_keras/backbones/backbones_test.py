import keras
import numpy as np
import pytest

from alignseg_keras.backbones.keras_applications import applications_resnet
from alignseg_keras.backbones.resnet import CeilModeMaxPooling2D
from alignseg_keras.backbones.resnet import basic_resnet
from alignseg_keras.backbones.resnet import deep_stem_resnet


@pytest.mark.parametrize(
    "name,channels", [("resnet18", [64, 128, 256, 512]), ("resnet34", [64, 128, 256, 512])]
)
def test_basic_resnets_give_four_strides(name, channels):
    model = basic_resnet(name)
    features = model(np.zeros((1, 64, 96, 3), "float32"))
    assert [tuple(f.shape) for f in features] == [
        (1, 16, 24, channels[0]),
        (1, 8, 12, channels[1]),
        (1, 4, 6, channels[2]),
        (1, 2, 3, channels[3]),
    ]


def test_resnet18_parameter_count():
    # torchvision's resnet18 without the classifier has 11,176,512 parameters.
    model = basic_resnet("resnet18")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 11_176_512


def test_deep_stem_sizes_follow_ceil_mode():
    model = deep_stem_resnet("resnet50_deepstem")
    features = model(np.zeros((1, 96, 64, 3), "float32"))
    # 96 -> 48 (stem) -> 25 (ceil-mode pool) -> 13 -> 7 -> 4, as PyTorch.
    assert [tuple(f.shape)[1:] for f in features] == [
        (25, 17, 256),
        (13, 9, 512),
        (7, 5, 1024),
        (4, 3, 2048),
    ]


def test_ceil_mode_max_pool_matches_pytorch_rule():
    x = np.random.rand(1, 7, 8, 1).astype("float32")
    out = np.asarray(CeilModeMaxPooling2D()(x))
    assert out.shape == (1, 4, 5, 1)
    padded = np.zeros((1, 10, 11, 1), "float32")
    padded[:, 1:8, 1:9] = x
    for i in range(4):
        for j in range(5):
            assert out[0, i, j, 0] == padded[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, 0].max()


@pytest.mark.parametrize("height, width", [(7, 8), (8, 7), (9, 9), (6, 6), (2, 3)])
def test_ceil_mode_max_pool_equals_pytorch(height, width):
    torch = pytest.importorskip("torch")
    # Non-negative, as after the stem's ReLU.
    x = np.random.default_rng(height * 10 + width).random((2, height, width, 3)).astype("float32")
    expected = torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(CeilModeMaxPooling2D()(x)), expected.permute(0, 2, 3, 1).numpy())


def test_keras_applications_resnets_train_their_batchnorm_with_the_authors_momentum():
    # keras.applications builds momentum 0.99 (a ~100-step average); the authors'
    # InPlaceABNSync uses PyTorch's 0.1, Keras' 0.9. Epsilon stays the weights' 1.001e-5.
    model = applications_resnet("resnet50")
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 53
    assert {(layer.momentum, layer.epsilon) for layer in norms} == {(0.9, 1.001e-5)}
    norm = norms[0]
    x = np.random.default_rng(0).normal(2.0, 1.0, (2, 8, 8, norm.moving_mean.shape[0])).astype("float32")
    norm(x, training=True)
    np.testing.assert_allclose(np.asarray(norm.moving_mean), 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
